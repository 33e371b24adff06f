//! A cut tunnel must look cut (real binaries): when a proxy on the path dies mid-transfer,
//! every client either gets all its bytes or an error (a reset), never a short read followed
//! by a clean EOF. Many concurrent transfers, the peer killed (SIGKILL) while they run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use mesh_tests::backends::*;
use mesh_tests::*;

const CONNS: usize = 100;
const SIZE: usize = 1536 * 1024;
/// 24 writes of 64 KiB, 40 ms apart: about a second per transfer.
const PAUSE: Duration = Duration::from_millis(40);

async fn downloads(
    client: IpAddr,
    dst: SocketAddr,
    progress: &Arc<AtomicU64>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Ending>> {
    (0..n)
        .map(|_| {
            let progress = progress.clone();
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(30),
                    download(client, dst, SIZE, progress),
                )
                .await
                .unwrap_or(Ending::Error(std::io::ErrorKind::TimedOut))
            })
        })
        .collect()
}

async fn join(tasks: Vec<tokio::task::JoinHandle<Ending>>) -> Vec<Ending> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_ztunnel_never_truncates_downloads_silently() {
    let net = Net { b: 113 };
    let mut mesh = TestMesh::new(&net.config());
    paced_download_server(net.app(), SIZE, PAUSE).await;
    mesh.ztunnel("b", &[]);
    mesh.ztunnel("a", &[]);
    let progress = Arc::new(AtomicU64::new(0));
    let tasks = downloads(net.client(), net.vip(), &progress, CONNS).await;
    // A third of all bytes in: every transfer is under way, none is finished.
    kill_when(&mut mesh, "b", &progress, (CONNS * SIZE / 3) as u64).await;
    check_cut("downloads, server-side ztunnel killed", &join(tasks).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_ztunnel_never_truncates_uploads_silently() {
    let net = Net { b: 114 };
    let mut mesh = TestMesh::new(&net.config());
    let progress = Arc::new(AtomicU64::new(0));
    let mut rx = upload_sink(net.app(), SIZE, progress.clone()).await;
    mesh.ztunnel("b", &[]);
    mesh.ztunnel("a", &[]);
    let (client, vip) = (net.client(), net.vip());
    let tasks: Vec<_> = (0..CONNS)
        .map(|_| {
            tokio::spawn(async move {
                if let Ok(mut s) = connect_from(client, vip).await {
                    let _ = upload(&mut s, SIZE, PAUSE).await;
                }
            })
        })
        .collect();
    kill_when(&mut mesh, "a", &progress, (CONNS * SIZE / 3) as u64).await;
    for t in tasks {
        t.await.unwrap();
    }
    // How each upload ended at the application behind ztunnel b.
    let mut endings = Vec::new();
    while endings.len() < CONNS {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(e)) => endings.push(e),
            _ => break,
        }
    }
    assert_eq!(endings.len(), CONNS, "every upload ended at the app");
    check_cut("uploads, client-side ztunnel killed", &endings);
}

/// The mesh of `Net` with the service behind a waypoint at 127.b.0.3; port 9000 is TCP, port
/// 80 HTTP (→ 8080).
fn waypoint_config(net: Net) -> String {
    let b = net.b;
    net.config()
        .replace(
            "metadata: {name: server, namespace: ns}\nspec:\n  hosts:",
            "metadata: {name: server, namespace: ns, labels: {istio.io/use-waypoint: wp}}\nspec:\n  hosts:",
        )
        .replace(
            "ports: [{number: 9000, name: tcp, protocol: TCP}]",
            "ports: [{number: 9000, name: tcp, protocol: TCP}, {number: 80, name: http, protocol: HTTP, targetPort: 8080}]",
        )
        + &format!(
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: 127.{b}.0.3}}]
"#
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_destination_behind_waypoint_never_truncates_silently() {
    let net = Net { b: 115 };
    let mut mesh = TestMesh::new(&waypoint_config(net));
    paced_download_server(net.app(), SIZE, PAUSE).await;
    http_download_server(SocketAddr::new(net.server(), 8080), SIZE, PAUSE).await;
    mesh.ztunnel("b", &[]);
    mesh.waypoint("wp", "ns/wp", &[]);
    mesh.ztunnel("a", &[]);
    let progress = Arc::new(AtomicU64::new(0));
    // Half TCP (carried as a stream by the waypoint), half HTTP (proxied per request).
    let tasks = downloads(net.client(), net.vip(), &progress, CONNS / 2).await;
    let http_vip = SocketAddr::new(net.vip().ip(), 80);
    let http_tasks: Vec<_> = (0..CONNS / 2)
        .map(|_| {
            let progress = progress.clone();
            let client = net.client();
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(30),
                    http_download(client, http_vip, SIZE, progress),
                )
                .await
                .unwrap_or(Ending::Error(std::io::ErrorKind::TimedOut))
            })
        })
        .collect();
    kill_when(&mut mesh, "b", &progress, (CONNS * SIZE / 3) as u64).await;
    let (tcp, http) = (join(tasks).await, join(http_tasks).await);
    eprintln!("HTTP via waypoint: {:?}", Tally::of(&http));
    check_cut("TCP via waypoint, destination ztunnel killed", &tcp);
    check_cut("HTTP via waypoint, destination ztunnel killed", &http);
}
