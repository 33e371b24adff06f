//! The demo's proxies: one `meshctl <role>` process per node, sidecar and waypoint, with
//! their logs relayed, their readiness awaited and their stop.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use mesh_dataplane::config::MeshState;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::task::TaskTracker;

use crate::out::say;

pub(super) struct Node {
    pub(super) name: String,
    /// `ztunnel` or `waypoint`.
    pub(super) role: &'static str,
    pub(super) child: Child,
}

/// The proxies to start, as (name, role, name flag): every node's ztunnel (or sidecar, for a
/// workload with its own), then every waypoint.
pub(super) fn proxy_names(state: &MeshState) -> Vec<(String, &'static str, &'static str)> {
    let mut names: Vec<(String, &'static str, &'static str)> = state
        .nodes
        .keys()
        .map(|n| match n.strip_prefix("sidecar/") {
            Some(w) => (w.to_owned(), "sidecar", "--workload"),
            None => (n.clone(), "ztunnel", "--node"),
        })
        .collect();
    names.sort();
    let mut waypoints: Vec<String> = state.waypoints.keys().cloned().collect();
    waypoints.sort();
    names.extend(waypoints.into_iter().map(|w| (w, "waypoint", "--gateway")));
    names
}

/// What every proxy of the demo is started with.
pub(super) struct Launch<'a> {
    /// This executable (`meshctl`).
    pub(super) exe: &'a Path,
    /// The mesh config.
    pub(super) config: &'a Path,
    /// The local CA.
    pub(super) ca_dir: &'a Path,
    /// Log filter.
    pub(super) log: &'a str,
}

/// Starts one proxy (`meshctl <role> ... <flag> <name>`) and relays its logs; readiness is
/// reported on `ready_tx`.
pub(super) fn start_proxy(
    Launch {
        exe,
        config,
        ca_dir,
        log,
    }: &Launch<'_>,
    name: &str,
    role: &'static str,
    flag: &str,
    tasks: &TaskTracker,
    ready_tx: &tokio::sync::mpsc::Sender<String>,
) -> anyhow::Result<Node> {
    let mut child = Command::new(exe)
        .arg(role)
        .arg("--config")
        .arg(config)
        .arg(flag)
        .arg(name)
        .arg("--ca-dir")
        .arg(ca_dir)
        .arg("--log")
        .arg(log)
        // No capture in the demo (it needs root): a sidecar serves its workload's inbound.
        .args(if role == "sidecar" {
            &["--outbound-port", "0"][..]
        } else {
            &[]
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {role} {name}"))?;
    let label = format!("{role} {name}");
    if let Some(stderr) = child.stderr.take() {
        tasks.spawn(relay_logs(stderr, label.clone(), ready_tx.clone()));
    }
    if let Some(stdout) = child.stdout.take() {
        tasks.spawn(relay_access_log(stdout, label));
    }
    Ok(Node {
        name: name.to_owned(),
        role,
        child,
    })
}

/// How many of `n` proxies reported ready within 30 s.
pub(super) async fn wait_ready(
    ready_rx: &mut tokio::sync::mpsc::Receiver<String>,
    n: usize,
) -> usize {
    let mut ready = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    while ready < n {
        tokio::select! {
            r = ready_rx.recv() => match r {
                Some(_) => ready += 1,
                None => break,
            },
            () = &mut deadline => break,
        }
    }
    ready
}

/// Sends SIGTERM to every ztunnel and waits (10 s, then SIGKILL).
pub(super) async fn stop_nodes(nodes: &mut [Node]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    for n in nodes.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), n.child.wait()).await {
            Ok(Ok(status)) => say!("{} {} exited ({status})", n.role, n.name),
            _ => {
                let _ = n.child.kill().await;
                say!("{} {} killed after 10 s", n.role, n.name);
            }
        }
    }
}

async fn relay_logs(
    stderr: tokio::process::ChildStderr,
    name: String,
    ready: tokio::sync::mpsc::Sender<String>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if ["ztunnel ready", "waypoint ready", "sidecar ready"]
            .iter()
            .any(|r| line.contains(r))
        {
            let _ = ready.send(name.clone()).await;
        }
        say!("[{name}] {line}");
    }
}

/// Relays a ztunnel's JSON access log (its stdout), one line per connection.
async fn relay_access_log(stdout: tokio::process::ChildStdout, name: String) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        say!("[{name} access] {line}");
    }
}
