//! The `istio-ztunnel-pair` topology: Istio's own ztunnel as the peer to measure ours against,
//! in the same two pods as `ztunnel-pair-capture` (network namespaces joined by a veth pair,
//! the client's traffic to the service redirected to its ztunnel's outbound port).
//!
//! Istio's ztunnel runs standalone (no istiod, no Kubernetes), one instance per pod as its
//! "dedicated" mode: a fake CA both instances trust, a local config file with the same two
//! workloads, service and port policy as ours, and two worker threads (`../shared/PEER-ZTUNNEL.md`).
//! Its binary is built outside this project and given by path; it is never built here.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::pods::{POD_A, POD_B, POD_VIP, Pods};
use super::servers::{HTTP_PORT, TCP_PORT};

/// The mark Istio's ztunnel sets on its own sockets (`PACKET_MARK`), excluded from capture.
const MARK: u32 = 1337;
/// Its outbound capture port.
const OUTBOUND: u16 = 15001;
/// Its readiness port (all addresses of its namespace).
const READY: u16 = 15021;

/// Istio's local config (`LOCAL_XDS_PATH`): the workloads, service and policy of
/// `ztunnel-pair-capture`'s mesh in Istio's workload-API shape.
fn local_config() -> String {
    let workload = |name: &str, ip, node: &str, services: &str| {
        format!(
            r#"- uid: bench//v1/Pod/bench/{name}
  name: {name}
  namespace: bench
  serviceAccount: {name}
  trustDomain: cluster.local
  workloadIps: ["{ip}"]
  protocol: HBONE
  node: {node}
  network: ""
  services: {services}
"#
        )
    };
    let mut c = String::from("workloads:\n");
    c.push_str(&workload("client", POD_A, "a", "{}"));
    c.push_str(&workload(
        "server",
        POD_B,
        "b",
        &format!(
            "{{\"bench/server.bench.svc\": {{{HTTP_PORT}: {HTTP_PORT}, {TCP_PORT}: {TCP_PORT}}}}}"
        ),
    ));
    c.push_str(&format!(
        r#"services:
- name: server
  namespace: bench
  hostname: server.bench.svc
  vips: ["/{POD_VIP}"]
  ports: {{{HTTP_PORT}: {HTTP_PORT}, {TCP_PORT}: {TCP_PORT}}}
policies:
- name: server
  namespace: bench
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - [[{{destinationPorts: [{TCP_PORT}]}}]]
  - [[{{destinationPorts: [{HTTP_PORT}]}}]]
"#
    ));
    c
}

/// How to run Istio's ztunnel: worker threads, log filter (`RUST_LOG`) and the prefix command
/// ours get too (`ProxyOpts::wrapper`, e.g. callgrind; `{node}` → a name of the instance).
pub(super) struct IstioOpts<'a> {
    pub(super) workers: usize,
    pub(super) log: &'a str,
    pub(super) wrapper: &'a [String],
}

/// Starts Istio's ztunnel `bin` in both pods and redirects pod A's traffic to the service into
/// its ztunnel; returns the processes with their names. The servers already run in pod B.
pub(super) fn setup(
    bin: &Path,
    pods: &Pods,
    dir: &Path,
    opts: &IstioOpts,
) -> anyhow::Result<Vec<(Child, String)>> {
    if !bin.is_file() {
        bail!("Istio's ztunnel binary {} does not exist", bin.display());
    }
    let config = dir.join("istio-ztunnel.yaml");
    std::fs::write(&config, local_config())?;
    let mut procs = Vec::new();
    match start_both(bin, pods, &config, opts, &mut procs) {
        Ok(()) => Ok(procs),
        Err(e) => {
            // Nothing left running after a failed set-up.
            for (c, _) in &mut procs {
                let _ = c.kill();
                let _ = c.wait();
            }
            Err(e)
        }
    }
}

/// Both ztunnels, each ready before the next starts, then pod A's redirect rule.
fn start_both(
    bin: &Path,
    pods: &Pods,
    config: &Path,
    opts: &IstioOpts,
    procs: &mut Vec<(Child, String)>,
) -> anyhow::Result<()> {
    for (ns, workload) in [
        (&pods.b, "bench/server/server"),
        (&pods.a, "bench/client/client"),
    ] {
        let child = start(bin, ns, workload, config, opts)?;
        procs.push((child, format!("istio ztunnel {workload}")));
        wait_ready(ns).with_context(|| format!("Istio's ztunnel in {ns}"))?;
    }
    let rule = format!(
        "iptables -w -t nat -A OUTPUT -p tcp -d {POD_VIP} -m mark ! --mark {MARK:#x}/0xfff -j REDIRECT --to-ports {OUTBOUND}"
    );
    let mut argv = vec!["ip", "netns", "exec", &pods.a];
    argv.extend(rule.split(' '));
    let out = Command::new(argv[0]).args(&argv[1..]).output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Istio's ztunnel for `workload` (`namespace/name/service-account`) inside `ns`.
fn start(
    bin: &Path,
    ns: &str,
    workload: &str,
    config: &Path,
    opts: &IstioOpts,
) -> anyhow::Result<Child> {
    let log = std::env::var_os("MESH_BENCH_PROXY_LOGS")
        .and_then(|d| std::fs::File::create(Path::new(&d).join(format!("istio-{ns}.log"))).ok());
    let out = log.map_or_else(Stdio::null, Stdio::from);
    let name = format!("istio-{}", workload.split('/').nth(1).unwrap_or("ztunnel"));
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(opts.wrapper.iter().map(|a| a.replace("{node}", &name)))
        .arg(bin)
        .env("FAKE_CA", "true")
        .env("XDS_ADDRESS", "")
        .env("CA_ADDRESS", "")
        .env("LOCAL_XDS_PATH", config)
        .env("PROXY_MODE", "dedicated")
        .env("PROXY_WORKLOAD_INFO", workload)
        .env("ENABLE_ORIG_SRC", "false")
        .env("PACKET_MARK", MARK.to_string())
        .env("ZTUNNEL_WORKER_THREADS", opts.workers.to_string())
        .env("RUST_LOG", opts.log)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {} in {ns}", bin.display()))?;
    Ok(child)
}

/// Polls the readiness endpoint inside `ns` until it answers 200 (120 s at most: under
/// callgrind it starts slowly).
fn wait_ready(ns: &str) -> anyhow::Result<()> {
    super::pods::run_in(Some(ns), || -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], READY));
        let mut last = String::from("no answer");
        for _ in 0..1200 {
            match ready_status(addr) {
                Ok(200) => return Ok(()),
                Ok(s) => last = format!("status {s}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("not ready after 120 s ({last})")
    })?
}

fn ready_status(addr: SocketAddr) -> anyhow::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let code = std::str::from_utf8(&head[9..12])?.parse()?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_config_is_yaml_with_both_workloads_the_service_and_the_policy() {
        let v: serde_json::Value = serde_saphyr::from_str(&local_config()).expect("yaml");
        assert_eq!(v["workloads"][1]["workloadIps"][0], POD_B.to_string());
        assert_eq!(
            v["workloads"][1]["services"]["bench/server.bench.svc"][HTTP_PORT.to_string()],
            HTTP_PORT
        );
        assert_eq!(v["services"][0]["vips"][0], format!("/{POD_VIP}"));
        assert_eq!(
            v["policies"][0]["rules"][0][0][0]["destinationPorts"][0],
            TCP_PORT
        );
    }
}
