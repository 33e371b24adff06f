//! The proxy processes of a benchmark topology: how each is started (the role's own binary
//! beside meshctl, else `meshctl <role>`, optionally under a wrapper such as callgrind), stopped,
//! and measured (CPU and memory from /proc).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// A proxy process of a topology.
pub(crate) struct ProxyProc {
    child: Child,
    /// Which proxy it is (`ztunnel a`, `waypoint bench/wp`, …), for per-proxy figures.
    pub(crate) name: String,
}

impl ProxyProc {
    /// A started proxy process, stopped (SIGTERM, then SIGKILL) when dropped.
    pub(crate) fn new(child: Child, name: String) -> ProxyProc {
        ProxyProc { child, name }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait (30 s, for valgrind to write its output), then SIGKILL.
    pub(crate) fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..600 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// How to start the proxies.
pub(crate) struct ProxyOpts {
    pub(crate) workers: usize,
    pub(crate) log: String,
    /// Prefix command, e.g. `valgrind --tool=callgrind --callgrind-out-file=… `; `{node}` in
    /// an argument is replaced by the node name.
    pub(crate) wrapper: Vec<String>,
    /// Istio's ztunnel binary, for `istio-ztunnel-pair`.
    pub(crate) istio_ztunnel: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role<'a> {
    Ztunnel,
    Waypoint,
    /// In this network namespace.
    Sidecar(&'a str),
}

/// The executable for `role`, and the subcommand it needs: the role's own binary beside this
/// one (`ztunnel`, `waypoint`, `sidecar`: what a deployment runs, without meshctl's code, so
/// RSS is the shipped binary's), else `meshctl <role>`.
fn proxy_binary(role: Role) -> anyhow::Result<(PathBuf, Option<&'static str>)> {
    let exe = std::env::current_exe()?;
    let name = match role {
        Role::Ztunnel => "ztunnel",
        Role::Waypoint => "waypoint",
        Role::Sidecar(_) => "sidecar",
    };
    let own = exe.with_file_name(name);
    Ok(if own.is_file() {
        (own, None)
    } else {
        (exe, Some(name))
    })
}

/// Starts the role's binary (or `meshctl <role>`) with `--node <node>`, `--gateway <node>` or
/// `--workload <node>`.
pub(super) fn start_proxy(
    role: Role,
    node: &str,
    config: &Path,
    ca: &PathBuf,
    opts: &ProxyOpts,
) -> anyhow::Result<ProxyProc> {
    let (exe, subcommand) = proxy_binary(role)?;
    let mut argv: Vec<String> = opts
        .wrapper
        .iter()
        .map(|a| a.replace("{node}", &node.replace('/', "_")))
        .collect();
    argv.push(exe.to_string_lossy().into_owned());
    if let Role::Sidecar(ns) = role {
        argv.splice(0..0, ["ip", "netns", "exec", ns].map(str::to_owned));
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.args(subcommand);
    match role {
        Role::Ztunnel => cmd.args(["--node", node, "--socks5-port", "0"]),
        Role::Waypoint => cmd.args(["--gateway", node]),
        Role::Sidecar(_) => cmd.args(["--workload", node]),
    };
    cmd.arg("--config")
        .arg(config)
        .arg("--ca-dir")
        .arg(ca)
        .arg("--worker-threads")
        .arg(opts.workers.to_string())
        .arg("--log")
        // Whatever the filter, keep the core's start-up lines: readiness is read from them.
        .arg(format!("{},mesh_dataplane::proxy=info", opts.log))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("start {argv:?}"))?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stderr for the life of the proxy so its logging never blocks; with
    // MESH_BENCH_PROXY_LOGS=DIR the lines are also kept in DIR/<node>.log.
    let keep = std::env::var_os("MESH_BENCH_PROXY_LOGS").and_then(|d| {
        std::fs::File::create(
            std::path::Path::new(&d).join(format!("{}.log", node.replace('/', "_"))),
        )
        .ok()
    });
    std::thread::spawn(move || {
        use std::io::Write as _;
        let mut keep = keep;
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = keep.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if ["ztunnel ready", "waypoint ready", "sidecar ready"]
                .iter()
                .any(|r| line.contains(r))
            {
                let _ = tx.send(Ok(()));
            } else if seen.len() < 50 {
                seen.push(line);
            }
        }
        let _ = tx.send(Err(seen.join("\n")));
    });
    let name = match role {
        Role::Ztunnel => format!("ztunnel {node}"),
        Role::Waypoint => format!("waypoint {node}"),
        Role::Sidecar(_) => format!("sidecar {node}"),
    };
    let proc = ProxyProc::new(child, name);
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(())) => Ok(proc),
        Ok(Err(logs)) => bail!("{role:?} {node} exited before ready:\n{logs}"),
        Err(_) => bail!("{role:?} {node} not ready after 120 s"),
    }
}

pub(super) fn start_relay(
    listen: SocketAddr,
    to: SocketAddr,
    opts: &ProxyOpts,
) -> anyhow::Result<ProxyProc> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "bench-relay",
            "--listen",
            &listen.to_string(),
            "--to",
            &to.to_string(),
        ])
        .arg("--workers")
        .arg(opts.workers.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.contains("ready") {
        bail!("relay {listen} → {to} did not start");
    }
    Ok(ProxyProc::new(child, format!("relay {listen}")))
}

/// CPU seconds (user + system) and RSS / peak RSS (bytes) of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcStat {
    pub(crate) cpu_s: f64,
    pub(crate) rss: u64,
    pub(crate) hwm: u64,
    /// Private (anonymous) resident memory: RSS minus the shared binary's file pages.
    pub(crate) anon: u64,
}

pub(crate) fn proc_stat(pid: u32) -> ProcStat {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut out = ProcStat::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name, which is in parentheses and may contain spaces.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
            let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            out.cpu_s = (utime + stime) / ticks;
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kb = |l: &str| -> u64 {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
                    * 1024
            };
            if line.starts_with("VmRSS:") {
                out.rss = kb(line);
            } else if line.starts_with("VmHWM:") {
                out.hwm = kb(line);
            } else if line.starts_with("RssAnon:") {
                out.anon = kb(line);
            }
        }
    }
    out
}

/// Sum of the stats of several processes.
pub(crate) fn total_stat(procs: &[ProxyProc]) -> ProcStat {
    procs.iter().fold(ProcStat::default(), |acc, p| {
        let s = proc_stat(p.pid());
        ProcStat {
            cpu_s: acc.cpu_s + s.cpu_s,
            rss: acc.rss + s.rss,
            hwm: acc.hwm + s.hwm,
            anon: acc.anon + s.anon,
        }
    })
}
