//! Test harness for end-to-end tests that drive the real binaries (`ztunnel`, `meshctl`), and
//! ([`inproc`]) for path tests that start the same proxy cores inside the test process.
//!
//! Each test uses its own loopback block `127.<block>.0.0/16` so tests run in parallel without
//! port conflicts: nodes at `127.<b>.0.N`, workloads at `127.<b>.1.N`, VIPs at `127.<b>.2.N`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

pub mod backends;
pub mod bind;
pub mod fake_cni;
pub mod fake_kube;
pub mod inproc;
pub mod istiod;
pub mod netns;
pub mod vip_get;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_identity::LocalCa;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub use netns::{NetNs, link_pods, switch};

/// Path of a workspace binary, built by `cargo test --workspace` / `cargo nextest run`.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("MESH_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // target/<profile>/deps/<test-binary> → target/<profile>
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace first (cargo build --workspace) or set MESH_BIN_DIR",
        path.display()
    );
    path
}

/// A running process whose stderr is collected.
pub struct Proc {
    pub name: String,
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `cmd`, collecting stderr (logs) and stdout (access log) into one buffer; waits
    /// until a stderr line contains `ready` (if given).
    pub fn start(name: &str, mut cmd: Command, ready: Option<&str>) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let l1 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut l = l1.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = logs.clone();
        let want = ready.map(str::to_owned);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(w) = &want
                    && line.contains(w.as_str())
                {
                    let _ = tx.send(());
                }
                let mut l = l2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let p = Proc {
            name: name.to_owned(),
            child,
            logs,
        };
        if ready.is_some() && rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("{name} did not become ready; logs:\n{}", p.logs());
        }
        p
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits up to `timeout` (in 20 ms steps) for the process to exit by itself; its status,
    /// if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        for _ in 0..=timeout.as_millis() / 20 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL (a crash: no drain, sockets closed by the kernel), then waits for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// SIGTERM, then wait up to 10 s (500 × 20 ms); returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..500 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!("---- logs of {} ----\n{}", self.name, self.logs());
        }
    }
}

/// A mesh of ztunnel processes sharing a local CA and a config file in a temp dir.
pub struct TestMesh {
    pub dir: tempfile::TempDir,
    pub ca: LocalCa,
    pub config: PathBuf,
    pub procs: Vec<Proc>,
    /// Network namespace the ztunnels run in (`ip netns exec`), if any.
    pub netns: Option<String>,
}

impl TestMesh {
    pub fn new(config_yaml: &str) -> TestMesh {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
        let config = dir.path().join("mesh.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        TestMesh {
            dir,
            ca,
            config,
            procs: Vec::new(),
            netns: None,
        }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Starts the ztunnel for `node` and waits until it is ready.
    pub fn ztunnel(&mut self, node: &str, extra: &[&str]) -> &Proc {
        self.proxy("ztunnel", node, &["--node", node], extra)
    }

    /// Starts the waypoint for Gateway `gateway` (`namespace/name`), registered as node
    /// `name` for [`TestMesh::expect_log`], and waits until it is ready.
    pub fn waypoint(&mut self, name: &str, gateway: &str, extra: &[&str]) -> &Proc {
        self.proxy("waypoint", name, &["--gateway", gateway], extra)
    }

    /// Starts the sidecar of `workload` (`namespace/name`) in network namespace `netns` (the
    /// workload's "pod"; `None`: the test's), registered as node `name`.
    pub fn sidecar(
        &mut self,
        name: &str,
        workload: &str,
        netns: Option<&str>,
        extra: &[&str],
    ) -> &Proc {
        let saved = self.netns.clone();
        if let Some(ns) = netns {
            self.netns = Some(ns.to_owned());
        }
        self.proxy("sidecar", name, &["--workload", workload], extra);
        self.netns = saved;
        self.procs.last().unwrap()
    }

    /// Starts binary `role` (in the test's network namespace, if any) with the mesh's config
    /// and CA, `role_args` and `extra`; waits for its "<role> ready" line.
    fn proxy(&mut self, role: &str, name: &str, role_args: &[&str], extra: &[&str]) -> &Proc {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin(role));
                c
            }
            None => Command::new(bin(role)),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .args(role_args)
            .arg("--ca-dir")
            .arg(self.ca_dir())
            .arg("--log")
            .arg("debug,h2=info,rustls=info")
            .args(extra);
        self.procs.push(Proc::start(
            &format!("ztunnel {name}"),
            cmd,
            Some(&format!("{role} ready")),
        ));
        self.procs.last().unwrap()
    }

    /// Waits (up to 10 s) until the logs of `node` contain `needle`; returns the logs, or
    /// panics showing them. Log lines arrive through a pipe, after the event that caused them.
    pub fn expect_log(&self, node: &str, needle: &str) -> String {
        wait_for_log(node, needle, || self.logs(node))
    }

    pub fn logs(&self, node: &str) -> String {
        let name = format!("ztunnel {node}");
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(Proc::logs)
            .unwrap_or_default()
    }
}

/// Addresses of the standard two-node test mesh in block `b`.
#[derive(Debug, Clone, Copy)]
pub struct Net {
    pub b: u8,
}

impl Net {
    pub fn node_a(&self) -> IpAddr {
        format!("127.{}.0.1", self.b).parse().unwrap()
    }
    pub fn node_b(&self) -> IpAddr {
        format!("127.{}.0.2", self.b).parse().unwrap()
    }
    pub fn client(&self) -> IpAddr {
        format!("127.{}.1.10", self.b).parse().unwrap()
    }
    pub fn server(&self) -> IpAddr {
        format!("127.{}.1.20", self.b).parse().unwrap()
    }
    pub fn app(&self) -> SocketAddr {
        SocketAddr::new(self.server(), 9000)
    }
    pub fn hbone(&self) -> SocketAddr {
        SocketAddr::new(self.server(), 15008)
    }
    pub fn vip(&self) -> SocketAddr {
        format!("127.{}.2.1:9000", self.b).parse().unwrap()
    }
    pub fn socks(&self) -> SocketAddr {
        SocketAddr::new(self.node_a(), 15080)
    }

    /// Two nodes: `a` runs `ns/client` and binds service VIPs, `b` runs `ns/server` whose app
    /// listens on port 9000 behind service `server.ns.svc` (VIP 127.b.2.1:9000).
    pub fn config(&self) -> String {
        format!(
            r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: {a}, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: {nb}, workloads: [ns/server]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: {c}, serviceAccount: client, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: ns}}
spec: {{address: {s}, serviceAccount: server, labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: ns}}
spec:
  hosts: [server.ns.svc]
  addresses: [{vip}]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  workloadSelector: {{labels: {{app: server}}}}
"#,
            a = self.node_a(),
            nb = self.node_b(),
            c = self.client(),
            s = self.server(),
            vip = self.vip().ip(),
        )
    }
}

/// Node `a` runs `ns/client` (127.b.1.10) and `ns/intruder` (127.b.1.11), node `b` runs
/// `ns/web` (127.b.1.21, app on 8080); services `web` (VIP 127.b.2.1:80) and `other` (VIP
/// 127.b.2.2:80, same endpoint) use waypoint `ns/wp` (127.b.0.3). `policies` is appended.
pub fn waypoint_mesh(b: u8, policies: &str) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.{b}.0.1, serviceListeners: true, workloads: [ns/client, ns/intruder]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.{b}.0.2, workloads: [ns/web]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.{b}.1.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder, namespace: ns}}
spec: {{address: 127.{b}.1.11, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: ns}}
spec: {{address: 127.{b}.1.21, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [web.ns.svc]
  addresses: [127.{b}.2.1]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: other, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [other.ns.svc]
  addresses: [127.{b}.2.2]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: 127.{b}.0.3}}]
{policies}"#
    )
}

/// Connects to `dst` from source address `src`.
pub async fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.bind(SocketAddr::new(src, 0))?;
    s.connect(dst).await
}

/// SOCKS5 CONNECT to a host name through `proxy`, from `src`. Returns the stream after a
/// success reply, or the reply code.
pub async fn socks5_connect(
    src: IpAddr,
    proxy: SocketAddr,
    host: &str,
    port: u16,
) -> Result<TcpStream, u8> {
    let mut s = connect_from(src, proxy).await.map_err(|_| 0xff)?;
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut g = [0u8; 2];
    s.read_exact(&mut g).await.unwrap();
    assert_eq!(g, [5, 0]);
    let mut req = vec![5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).await.map_err(|_| 0xfe)?;
    if rep[1] == 0 { Ok(s) } else { Err(rep[1]) }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
    v
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// What a [`SinkServer`] connection received, and the hash of what it sent.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub received_sha: [u8; 32],
    pub received_len: usize,
    pub sent_sha: [u8; 32],
}

/// A server that, on each connection, reads until EOF while sending `payload` and then
/// shutting down its write half; reports each exchange.
pub async fn sink_server(
    addr: SocketAddr,
    payload: Arc<Vec<u8>>,
) -> tokio::sync::mpsc::UnboundedReceiver<Exchange> {
    let l = TcpListener::bind(addr).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (tx, payload) = (tx.clone(), payload.clone());
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let read = async {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).await.map(|_| got)
                };
                let write = async {
                    w.write_all(&payload).await?;
                    w.shutdown().await
                };
                let (got, wrote) = tokio::join!(read, write);
                if let (Ok(got), Ok(())) = (got, wrote) {
                    let _ = tx.send(Exchange {
                        received_sha: sha256(&got),
                        received_len: got.len(),
                        sent_sha: sha256(&payload),
                    });
                }
            });
        }
    });
    rx
}

/// A TCP echo server; returns a counter of accepted connections.
pub async fn echo_server(addr: SocketAddr) -> Arc<std::sync::atomic::AtomicUsize> {
    let l = TcpListener::bind(addr).await.unwrap();
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    n
}

/// Sends `data`, half-closes, reads until EOF.
pub async fn exchange(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    tokio::join!(write, read).1
}

/// Established TCP connections whose local address is `addr` (the server side of `addr`),
/// from /proc/net/tcp.
pub fn established_to(addr: SocketAddr) -> usize {
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("IPv4 only")
    };
    let o = ip.octets();
    let want = format!(
        "{:02X}{:02X}{:02X}{:02X}:{:04X}",
        o[3],
        o[2],
        o[1],
        o[0],
        addr.port()
    );
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "01"
        })
        .count()
}

/// Runs `meshctl` with `args`; returns (success, stdout, stderr).
pub fn meshctl(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(bin("meshctl"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env_remove("ISTIO_ZTUNNEL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.0 request to `addr`; returns (status, body). Test helper only.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// GET `path` from `addr`, expecting 200; returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let (status, body) = http(addr, "GET", path).await.unwrap();
    assert_eq!(status, 200, "GET {addr}{path}: {body}");
    body
}

/// Polls `addr/metrics` until `f` holds (5 s), returning that scrape; panics showing the last
/// one otherwise.
pub async fn scrape_until(addr: SocketAddr, what: &str, f: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..250 {
        text = http_get(addr, "/metrics").await;
        if f(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("metrics at {addr} never showed {what}:\n{text}");
}

/// Sum of the samples of metric `name` (e.g. `istio_tcp_connections_opened_total`) whose
/// labels include every `(label, value)` in `want`.
pub fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = want
                .iter()
                .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")));
            if ok { value.parse::<f64>().ok() } else { None }
        })
        .sum()
}

/// A minimal HTTP/1.1 app for tests: answers every request on a keep-alive connection with
/// 200 and the body `<name> <method> <path> host=<Host header>`. Requests must have no body.
pub async fn http_app(addr: SocketAddr, name: &'static str) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(s);
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        match tokio::io::AsyncBufReadExt::read_line(&mut s, &mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line);
                    }
                    let first: Vec<&str> = head[0].split_whitespace().collect();
                    let host = head
                        .iter()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("host").then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    let body = format!("{name} {} {} host={host}", first[0], first[1]);
                    // The request's header names (and values of x- headers), for tests of
                    // what the proxies add and remove.
                    let got: Vec<String> = head[1..]
                        .iter()
                        .filter_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            let k = k.trim().to_ascii_lowercase();
                            Some(if k.starts_with("x-") {
                                format!("{k}={}", v.trim())
                            } else {
                                k
                            })
                        })
                        .collect();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-app: {name}\r\nx-peer: {}\r\nx-got: {}\r\n\r\n{body}",
                        body.len(),
                        peer.ip(),
                        got.join("|")
                    );
                    if s.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// One HTTP/1.1 request on a keep-alive connection; returns (status, headers, body).
pub async fn http_request(
    s: &mut tokio::io::BufReader<TcpStream>,
    method: &str,
    path: &str,
    host: &str,
    extra: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut status_line = String::new();
    tokio::io::AsyncBufReadExt::read_line(s, &mut status_line)
        .await
        .unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(s, &mut line)
            .await
            .unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A gRPC-style app over HTTP/2 (prior knowledge): every request gets 200 with
/// `content-type: application/grpc` and `x-app: <name>`; each request body chunk is echoed
/// back as it arrives; the response ends with the trailer `grpc-status: 0`.
pub async fn grpc_app(addr: SocketAddr, name: &'static str) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let resp = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .header("x-app", name)
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(resp, false) else {
                            return;
                        };
                        let mut body = req.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            if send.send_data(chunk, false).is_err() {
                                return;
                            }
                        }
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
}

/// A gRPC message frame: uncompressed flag, big-endian length, payload.
pub fn grpc_frame(msg: &[u8]) -> bytes::Bytes {
    let mut v = vec![0u8];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    bytes::Bytes::from(v)
}

/// Polls `logs` (up to 10 s) until it contains `needle`; returns the logs, or panics showing
/// them (the one wait behind both harnesses' `expect_log`).
pub(crate) fn wait_for_log(node: &str, needle: &str, logs: impl Fn() -> String) -> String {
    for _ in 0..500 {
        let text = logs();
        if text.contains(needle) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("ztunnel {node} never logged {needle:?}; logs:\n{}", logs());
}
