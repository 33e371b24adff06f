//! Network-namespace "pods" for the end-to-end tests and `meshctl bench` (Linux, root): a
//! named network namespace with loopback up ([`Pod`]), veth pairs that join two pods
//! ([`link`]) or attach pods to a bridge in a "switch" namespace ([`Switch`]), addresses on
//! them, and optional capture rules ([`Pod::capture`], the rules of [`crate::capture`]).
//!
//! Everything is created with the `ip` tool, as an operator would, and deleted when the
//! [`Pod`] is dropped (deleting a namespace deletes its veth ends, and their peers). Code runs
//! inside a pod on a thread that entered it ([`Pod::run`]) or on a runtime whose threads all
//! did ([`Pod::runtime`]): sockets belong to the namespace they were created in.
//!
//! Written once here; the tests crate and the bench build their topologies from it.

use std::path::PathBuf;
use std::process::Command;

use crate::capture::CaptureSpec;

/// Why a pod topology could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// Namespaces, veth pairs and iptables need root.
    #[error("needs root (network namespaces, veth pairs and iptables)")]
    NotRoot,
    /// A tool the topology needs is not installed.
    #[error("{tool} is not installed")]
    Missing {
        /// `ip`, `iptables`, …
        tool: &'static str,
    },
    /// A command failed.
    #[error("{cmd} failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command could not run, or a namespace could not be entered.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Installing capture rules failed.
    #[error("capture rules in {netns}: {reason}")]
    Capture {
        /// The namespace.
        netns: String,
        /// Why.
        reason: String,
    },
    /// A thread running inside a pod panicked.
    #[error("a thread inside {netns} panicked")]
    Panicked {
        /// The namespace.
        netns: String,
    },
}

/// Checks that pods can be built here: root, and the `ip` and `iptables` tools.
pub fn check_available() -> Result<(), NetnsError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(NetnsError::NotRoot);
    }
    for tool in ["ip", "iptables"] {
        let found = ["-V", "--version"].iter().any(|flag| {
            Command::new(tool)
                .arg(flag)
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !found {
            return Err(NetnsError::Missing { tool });
        }
    }
    Ok(())
}

/// Runs `argv` (program first); its stderr is the error.
pub fn run(argv: &[&str]) -> Result<(), NetnsError> {
    let Some((prog, args)) = argv.split_first() else {
        return Ok(());
    };
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Io {
            what: format!("run {argv:?}"),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetnsError::Command {
        cmd: argv.join(" "),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// A network namespace created for one test or bench run, with loopback up; deleted (with
/// its devices) when dropped.
#[derive(Debug)]
pub struct Pod {
    name: String,
}

impl Pod {
    /// Creates namespace `name` (deleting a stale one of that name first) and sets its
    /// loopback up. Needs root.
    pub fn create(name: &str) -> Result<Pod, NetnsError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(NetnsError::NotRoot);
        }
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name])?;
        let pod = Pod {
            name: name.to_owned(),
        };
        pod.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(pod)
    }

    /// The namespace's name (`ip netns exec <name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's path, `/var/run/netns/<name>` (a `Node`'s `netns:` entry in the mesh
    /// config, and what `setns` opens).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// Runs `argv` inside the namespace (`ip netns exec`).
    pub fn exec(&self, argv: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(argv);
        run(&all)
    }

    /// Adds `addrs` (`10.0.0.2/24`, `fd00::2/64`) to device `dev` of the pod and sets it up.
    /// IPv6 addresses skip duplicate address detection, so they are usable at once.
    pub fn address(&self, dev: &str, addrs: &[&str]) -> Result<(), NetnsError> {
        for a in addrs {
            let mut argv = vec!["ip", "addr", "add", a, "dev", dev];
            if a.contains(':') {
                argv.push("nodad");
            }
            self.exec(&argv)?;
        }
        self.exec(&["ip", "link", "set", dev, "up"])
    }

    /// Installs the capture rules of `spec` in the pod (IPv6 rules too when `ipv6`), as
    /// `meshctl capture install --netns <name>` does.
    pub fn capture(&self, spec: &CaptureSpec, ipv6: bool) -> Result<(), NetnsError> {
        crate::capture::install(spec, Some(&self.name), ipv6).map_err(|e| NetnsError::Capture {
            netns: self.name.clone(),
            reason: e.to_string(),
        })
    }

    /// Makes the calling thread enter the namespace: sockets it creates from now on are the
    /// pod's, and threads it starts inherit the namespace.
    pub fn enter(&self) -> Result<(), NetnsError> {
        enter(&self.path())
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        run_in(&self.name, f)
    }

    /// A multi-thread runtime whose `workers` worker threads (and blocking threads) live in
    /// the namespace. A future passed to its `block_on` runs on the calling thread, outside:
    /// run socket work with `rt.block_on(rt.spawn(fut))`.
    pub fn runtime(&self, workers: usize) -> Result<tokio::runtime::Runtime, NetnsError> {
        let path = self.path();
        // Fails early, with a clear error, if the namespace cannot be entered.
        std::fs::File::open(&path).map_err(|source| NetnsError::Io {
            what: format!("open {}", path.display()),
            source,
        })?;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .enable_all()
            .on_thread_start(move || {
                // Checked above; a namespace deleted since leaves the thread outside, and
                // the pod's sockets then fail to bind or connect.
                if let Err(e) = enter(&path) {
                    tracing::error!(error = %e, "runtime thread cannot enter its pod");
                }
            })
            .build()
            .map_err(|source| NetnsError::Io {
                what: format!("runtime in {}", self.name),
                source,
            })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Makes the calling thread enter the named namespace (`ip netns` name), e.g. in a runtime's
/// `on_thread_start`: sockets it creates from now on are the namespace's.
pub fn enter_current_thread(netns: &str) -> Result<(), NetnsError> {
    enter(&PathBuf::from(format!("/var/run/netns/{netns}")))
}

/// Runs `f` on a thread inside the named namespace (`ip netns` name) and returns its result;
/// threads `f` starts are inside too.
pub fn run_in<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let path = PathBuf::from(format!("/var/run/netns/{netns}"));
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T, NetnsError> {
            enter(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked {
            netns: netns.to_owned(),
        })?
    })
}

fn enter(path: &std::path::Path) -> Result<(), NetnsError> {
    let f = std::fs::File::open(path).map_err(|source| NetnsError::Io {
        what: format!("open {}", path.display()),
        source,
    })?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Io {
        what: format!("enter {}", path.display()),
        source: e.into(),
    })
}

/// Joins pods `a` and `b` with a veth pair (`dev_a` in `a`, `dev_b` in `b`), with the given
/// addresses, both ends up.
pub fn link(
    a: &Pod,
    dev_a: &str,
    addrs_a: &[&str],
    b: &Pod,
    dev_b: &str,
    addrs_b: &[&str],
) -> Result<(), NetnsError> {
    a.exec(&[
        "ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", &b.name,
    ])?;
    a.address(dev_a, addrs_a)?;
    b.address(dev_b, addrs_b)
}

/// A "switch": a namespace holding a bridge (`br0`) that pods are attached to, each by a veth
/// pair (`port<i>` on the bridge, `eth<i>` in the pod), as pods on one node network.
#[derive(Debug)]
pub struct Switch {
    pod: Pod,
    ports: usize,
}

impl Switch {
    /// Creates the switch's namespace and its bridge.
    pub fn create(name: &str) -> Result<Switch, NetnsError> {
        let pod = Pod::create(name)?;
        pod.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        pod.exec(&["ip", "link", "set", "br0", "up"])?;
        Ok(Switch { pod, ports: 0 })
    }

    /// The switch's own namespace.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Attaches `pod` with `addrs` on its new device; returns that device's name (`eth<i>`,
    /// `i` counting attachments from 0).
    pub fn attach(&mut self, pod: &Pod, addrs: &[&str]) -> Result<String, NetnsError> {
        let i = self.ports;
        let (inner, outer) = (format!("eth{i}"), format!("port{i}"));
        self.pod.exec(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &pod.name,
        ])?;
        self.pod
            .exec(&["ip", "link", "set", &outer, "master", "br0"])?;
        self.pod.exec(&["ip", "link", "set", &outer, "up"])?;
        pod.address(&inner, addrs)?;
        self.ports += 1;
        Ok(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_pods_talk_over_their_link_and_vanish_when_dropped() {
        if let Err(e) = check_available() {
            eprintln!("SKIPPED: {e}");
            return;
        }
        let id = std::process::id();
        let (na, nb) = (format!("h2t-ua-{id}"), format!("h2t-ub-{id}"));
        {
            let a = Pod::create(&na).unwrap();
            let b = Pod::create(&nb).unwrap();
            link(&a, "va", &["10.199.0.2/24"], &b, "vb", &["10.199.0.3/24"]).unwrap();
            let listener = b
                .run(|| std::net::TcpListener::bind("10.199.0.3:7000"))
                .unwrap()
                .unwrap();
            let sent = a
                .run(|| {
                    use std::io::Write;
                    let mut s = std::net::TcpStream::connect("10.199.0.3:7000")?;
                    s.write_all(b"hi")
                })
                .unwrap();
            assert!(sent.is_ok(), "{sent:?}");
            let (mut s, peer) = listener.accept().unwrap();
            assert_eq!(peer.ip().to_string(), "10.199.0.2");
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut got).unwrap();
            assert_eq!(got, b"hi");
        }
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(!list.contains(&na) && !list.contains(&nb), "{list}");
    }

    #[test]
    fn pods_on_a_switch_reach_each_other() {
        if let Err(e) = check_available() {
            eprintln!("SKIPPED: {e}");
            return;
        }
        let id = std::process::id();
        let mut sw = Switch::create(&format!("h2t-us-{id}")).unwrap();
        let a = Pod::create(&format!("h2t-usa-{id}")).unwrap();
        let b = Pod::create(&format!("h2t-usb-{id}")).unwrap();
        assert_eq!(sw.attach(&a, &["10.198.0.2/24"]).unwrap(), "eth0");
        assert_eq!(sw.attach(&b, &["10.198.0.3/24"]).unwrap(), "eth1");
        let rt = b.runtime(1).unwrap();
        let l = rt
            .block_on(rt.spawn(tokio::net::TcpListener::bind("10.198.0.3:7001")))
            .unwrap()
            .unwrap();
        let ok = a
            .run(|| std::net::TcpStream::connect("10.198.0.3:7001").is_ok())
            .unwrap();
        assert!(ok);
        let (_, peer) = rt
            .block_on(rt.spawn(async move { l.accept().await }))
            .unwrap()
            .unwrap();
        assert_eq!(peer.ip().to_string(), "10.198.0.2");
    }
}
