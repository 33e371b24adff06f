//! `meshctl demo`: a whole mesh on loopback, from the embedded default config.
//!
//! Creates (or reuses) a local CA in the state directory, writes the default mesh config there
//! unless one is given, starts one ztunnel process per `Node` (`meshctl ztunnel …`), starts an
//! HTTP echo server on every service endpoint and a client that calls the first service VIP
//! every interval from a workload address of the node that binds service listeners. Runs until
//! Ctrl-C (or `--duration`), then stops the ztunnels with SIGTERM and waits for them.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_dataplane::config::{MeshState, load_file};
use mesh_dataplane::process::parse_duration;
use mesh_identity::LocalCa;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpSocket};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::out::say;

/// The embedded default mesh (also `examples/mesh.yaml`).
const DEFAULT_MESH: &str = include_str!("../../../examples/mesh.yaml");

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DemoArgs {
    /// State directory: the CA (`ca/`), the mesh config (`mesh.yaml`).
    #[arg(long, default_value = ".meshctl/demo", value_name = "DIR")]
    state_dir: PathBuf,
    /// Use this mesh config instead of the embedded default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stop after this long instead of waiting for Ctrl-C (e.g. `10s`).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,
    /// Interval between the demo client's requests.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    interval: Duration,
    /// Log filter passed to the ztunnels.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
}

pub(crate) fn main(args: DemoArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::out::fail(e),
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::out::fail(format!("{e:#}")),
    }
}

struct Node {
    name: String,
    /// `ztunnel` or `waypoint`.
    role: &'static str,
    child: Child,
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (ca_dir, config) = prepare(&args)?;
    let state = load_file(&config)?;

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    // Application workloads first, so the mesh has somewhere to deliver.
    start_workloads(&state, &tasks, &stop).await?;

    let exe = std::env::current_exe().context("locate meshctl")?;
    let names = proxy_names(&state);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<String>(names.len().max(1));
    let mut nodes = Vec::new();
    for (name, role, flag) in &names {
        let launch = Launch {
            exe: &exe,
            config: &config,
            ca_dir: &ca_dir,
            log: &args.log,
        };
        nodes.push(start_proxy(&launch, name, role, flag, &tasks, &ready_tx)?);
    }
    drop(ready_tx);
    if wait_ready(&mut ready_rx, nodes.len()).await < nodes.len() {
        stop_nodes(&mut nodes).await;
        bail!("proxies did not become ready (see their logs above)");
    }
    print_banner(&state, &ca_dir, &config, &nodes);

    let ok = Arc::new(AtomicU64::new(0));
    if let Some((src, vip, host)) = client_plan(&state) {
        tasks.spawn(client_loop(
            src,
            vip,
            host,
            args.interval,
            ok.clone(),
            stop.clone(),
        ));
    }

    wait_for_stop(args.duration).await?;
    stop.cancel();
    stop_nodes(&mut nodes).await;
    tasks.close();
    tasks.wait().await;
    let n = ok.load(Ordering::Relaxed);
    say!("demo stopped cleanly; {n} requests succeeded through the mesh");
    if args.duration.is_some() && client_plan(&state).is_some() && n == 0 {
        bail!("no request succeeded through the mesh");
    }
    Ok(())
}

/// The state directory with its CA, and the mesh config to use (the given one, or the
/// embedded default written there): the CA directory and the config path.
fn prepare(args: &DemoArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    let state_dir = args.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let ca_dir = state_dir.join("ca");
    let (_, created) = LocalCa::load_or_create(&ca_dir)?;
    say!(
        "local CA: {} {}",
        if created { "created" } else { "reused" },
        ca_dir.display()
    );
    let config = match &args.config {
        Some(c) => c.clone(),
        None => {
            let path = state_dir.join("mesh.yaml");
            if !path.exists() {
                std::fs::write(&path, DEFAULT_MESH)
                    .with_context(|| format!("write {}", path.display()))?;
                say!(
                    "mesh config: wrote the embedded default to {}",
                    path.display()
                );
            } else {
                say!(
                    "mesh config: using {} (delete it to get the default back)",
                    path.display()
                );
            }
            path
        }
    };
    Ok((ca_dir, config))
}

/// An echo server on every service endpoint address (once per address).
async fn start_workloads(
    state: &MeshState,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut endpoints: Vec<(SocketAddr, String)> = Vec::new();
    for sp in &state.service_ports {
        for ep in &sp.endpoints {
            let addr = SocketAddr::new(ep.workload.address, ep.port);
            if !endpoints.iter().any(|(a, _)| *a == addr) {
                endpoints.push((addr, ep.workload.key()));
            }
        }
    }
    for (addr, name) in &endpoints {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("echo workload {name}: listen on {addr}"))?;
        tasks.spawn(echo_server(l, name.clone(), stop.clone()));
    }
    Ok(())
}

/// The proxies to start, as (name, role, name flag): every node's ztunnel (or sidecar, for a
/// workload with its own), then every waypoint.
fn proxy_names(state: &MeshState) -> Vec<(String, &'static str, &'static str)> {
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
struct Launch<'a> {
    /// This executable (`meshctl`).
    exe: &'a Path,
    /// The mesh config.
    config: &'a Path,
    /// The local CA.
    ca_dir: &'a Path,
    /// Log filter.
    log: &'a str,
}

/// Starts one proxy (`meshctl <role> ... <flag> <name>`) and relays its logs; readiness is
/// reported on `ready_tx`.
fn start_proxy(
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
async fn wait_ready(ready_rx: &mut tokio::sync::mpsc::Receiver<String>, n: usize) -> usize {
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

/// Waits for Ctrl-C, SIGTERM or the end of `duration`, and says which.
async fn wait_for_stop(duration: Option<Duration>) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let until = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => say!("\nstopping (Ctrl-C)"),
        _ = term.recv() => say!("stopping (SIGTERM)"),
        () = until => say!("stopping (--duration elapsed)"),
    }
    Ok(())
}

/// Sends SIGTERM to every ztunnel and waits (10 s, then SIGKILL).
async fn stop_nodes(nodes: &mut [Node]) {
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

/// The demo client: the first workload of the node that binds service listeners, calling the
/// first service VIP:port.
fn client_plan(state: &MeshState) -> Option<(std::net::IpAddr, SocketAddr, String)> {
    let mut nodes: Vec<_> = state
        .nodes
        .values()
        .filter(|n| n.service_listeners)
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let src = nodes.first()?.workloads.first()?.address;
    let mut vips: Vec<_> = state.vips().collect();
    vips.sort_by_key(|(a, _)| **a);
    let (vip, sp) = vips.into_iter().find(|(_, sp)| !sp.endpoints.is_empty())?;
    let host = sp.service.hosts.first().cloned().unwrap_or_default();
    Some((src, *vip, host))
}

fn print_banner(state: &MeshState, ca_dir: &Path, config: &Path, nodes: &[Node]) {
    say!("");
    say!(
        "== local mesh is up: trust domain {}, CA {}, config {}",
        state.trust_domain,
        ca_dir.display(),
        config.display()
    );
    for n in nodes {
        let Some(node) = state.node(&n.name) else {
            continue;
        };
        say!(
            "   node {} ({}): ztunnel pid {}, SOCKS5 {}:15080{}",
            node.name,
            node.address,
            n.child.id().unwrap_or(0),
            node.address,
            if node.service_listeners {
                ", binds the service VIPs"
            } else {
                ""
            }
        );
        for w in &node.workloads {
            say!(
                "     workload {} at {} as {} (HBONE {}:{})",
                w.key(),
                w.address,
                w.identity,
                w.address,
                node.hbone_port
            );
        }
    }
    for n in nodes.iter().filter(|n| n.role == "waypoint") {
        if let Some(wp) = state.waypoints.get(&n.name) {
            say!(
                "   waypoint {} at {} as {} (pid {}): L7 routing for the services that use it",
                wp.key(),
                wp.hbone_addr(),
                wp.identity,
                n.child.id().unwrap_or(0)
            );
        }
    }
    for sp in &state.service_ports {
        let eps: Vec<String> = sp
            .endpoints
            .iter()
            .map(|e| format!("{} {}:{}", e.workload.key(), e.workload.address, e.port))
            .collect();
        for vip in &sp.service.vips {
            say!(
                "   service {}/{} {} VIP {}:{} -> {}",
                sp.service.namespace,
                sp.service.name,
                sp.service.hosts.join(","),
                vip,
                sp.port,
                eps.join(", ")
            );
        }
    }
    if let Some((src, vip, host)) = client_plan(state) {
        let port = vip.port();
        let socks = state
            .workload_by_ip(src)
            .and_then(|w| w.node.as_deref())
            .and_then(|n| state.node(n))
            .map(|n| n.address.to_string())
            .unwrap_or_default();
        say!("");
        say!("== send your own traffic through the mesh (your shell is workload {src}):");
        say!("   curl http://{vip}/hello");
        say!("   curl --socks5-hostname {socks}:15080 http://{host}:{port}/hello");
        say!(
            "   the ztunnel access logs below (JSON) show each connection with both SPIFFE identities."
        );
        say!("== look inside a running ztunnel:");
        say!("   curl http://{socks}:15020/metrics            # Istio metrics");
        say!(
            "   curl http://{socks}:15000/config_dump        # workloads, services, policies, certificates"
        );
        say!("   meshctl proxy-config {socks}:15000           # the same as tables");
    }
    say!("== Ctrl-C stops everything.");
    say!("");
}

async fn echo_server(l: TcpListener, name: String, stop: CancellationToken) {
    let name = Arc::new(name);
    let conns = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let name = name.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
                async move {
                    let mut body = format!(
                        "echo from workload {name}: {} {} (connection from {peer})\n",
                        req.method(),
                        req.uri()
                    );
                    for (k, v) in req.headers() {
                        body.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

async fn client_loop(
    src: std::net::IpAddr,
    vip: SocketAddr,
    host: String,
    interval: Duration,
    ok: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut n = 0u64;
    loop {
        n += 1;
        let start = tokio::time::Instant::now();
        match get(src, vip, &host, n).await {
            Ok((status, first)) => {
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                say!(
                    "[client {src}] GET http://{vip}/request/{n} -> {status} in {:.1} ms: {first}",
                    start.elapsed().as_secs_f64() * 1000.0
                );
            }
            Err(e) => say!("[client {src}] GET http://{vip}/request/{n} failed: {e:#}"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

async fn get(
    src: std::net::IpAddr,
    vip: SocketAddr,
    host: &str,
    n: u64,
) -> anyhow::Result<(u16, String)> {
    let socket = if vip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(src, 0))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), socket.connect(vip)).await??;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("/request/{n}"))
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    drop(send);
    let _ = driver.await;
    let first = String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    Ok((status, first))
}
