//! Two "pods" for the capture topologies (root only): network namespaces joined by a veth
//! pair, created for one run and deleted when dropped. The load generator runs on threads that
//! entered pod A, the servers on a runtime whose workers live in pod B.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use anyhow::{Context, bail};

/// Pod A's address (the client workload).
pub(crate) const POD_A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 61, 0, 2));
/// Pod B's address (the server workload).
pub(crate) const POD_B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 61, 0, 3));
/// The service VIP in the pods' mesh.
pub(crate) const POD_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 61, 0, 100));

/// The two namespaces.
pub(crate) struct Pods {
    pub(crate) a: String,
    pub(crate) b: String,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Pods {
    /// Creates the namespaces and their link; needs root.
    pub(crate) fn create() -> anyhow::Result<Pods> {
        if !nix::unistd::geteuid().is_root() {
            bail!("needs root (network namespaces and iptables capture)");
        }
        let id = std::process::id();
        let pods = Pods {
            a: format!("mbench-a-{id}"),
            b: format!("mbench-b-{id}"),
        };
        for ns in [&pods.a, &pods.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["ip", "netns", "add", ns])?;
            pods.exec(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        pods.exec(
            &pods.a,
            &[
                "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &pods.b,
            ],
        )?;
        for (ns, dev, ip) in [(&pods.a, "va", POD_A), (&pods.b, "vb", POD_B)] {
            pods.exec(ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", dev])?;
            pods.exec(ns, &["ip", "link", "set", dev, "up"])?;
        }
        Ok(pods)
    }

    /// Runs a command inside namespace `ns`.
    pub(crate) fn exec(&self, ns: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn enter(ns: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// Runs `f` on a thread inside `ns` (threads it starts are inside too), or here if `None`.
pub(crate) fn run_in<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let Some(ns) = ns else {
        return Ok(f());
    };
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<T> {
            enter(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("load thread in {ns} panicked"))?
    })
}

/// A runtime whose worker threads live in `ns`.
pub(crate) fn runtime_in(ns: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    let ns = ns.to_owned();
    std::thread::spawn(move || -> anyhow::Result<tokio::runtime::Runtime> {
        enter(&ns)?;
        Ok(tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("runtime thread panicked"))?
}
