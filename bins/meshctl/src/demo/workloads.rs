//! The demo's application workloads: an HTTP echo on every service endpoint, and the client
//! that calls a service through the mesh.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_dataplane::config::MeshState;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::out::say;

/// An echo server on every service endpoint address (once per address).
pub(super) async fn start_workloads(
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

/// The demo client: the first workload of the node that binds service listeners, calling the
/// first service VIP:port.
pub(super) fn client_plan(state: &MeshState) -> Option<(std::net::IpAddr, SocketAddr, String)> {
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

pub(super) async fn client_loop(
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
