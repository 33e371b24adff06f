//! Outlier detection and connection pools (DestinationRule `outlierDetection`,
//! `connectionPool`) on the ztunnel's L4 path and the waypoint's L7 path, in process, with
//! misbehaving backends: an endpoint whose node is down (connect refused), one that accepts
//! and never answers (connect timeout), an app answering 503. Block 127.213.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Node a runs `ns/client` (127.213.t.10) and binds service VIPs; node b runs `ns/live`
/// (127.213.t.20, echo on 9000); node c (never started) runs `ns/dead` (127.213.t.21), listed
/// first so round robin picks it first. Service `server.ns.svc` (VIP 127.213.t.100:9000) has
/// both; `dr` is its DestinationRule's `trafficPolicy`.
fn l4_mesh(t: u8, dr: &str) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.213.{t}.1, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.213.{t}.2, workloads: [ns/live]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: c}}
spec: {{address: 127.213.{t}.3, workloads: [ns/dead]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.213.{t}.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: dead, namespace: ns}}
spec: {{address: 127.213.{t}.21, serviceAccount: server, labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: live, namespace: ns}}
spec: {{address: 127.213.{t}.20, serviceAccount: server, labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: ns}}
spec:
  hosts: [server.ns.svc]
  addresses: [127.213.{t}.100]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: server, namespace: ns}}
spec:
  host: server.ns.svc
  trafficPolicy: {dr}
"#
    )
}

fn client(t: u8) -> std::net::IpAddr {
    format!("127.213.{t}.10").parse().unwrap()
}

fn vip(t: u8) -> std::net::SocketAddr {
    format!("127.213.{t}.100:9000").parse().unwrap()
}

fn live(t: u8) -> std::net::SocketAddr {
    format!("127.213.{t}.20:9000").parse().unwrap()
}

async fn echo_once(t: u8) -> Vec<u8> {
    let mut s = connect_from(client(t), vip(t)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), exchange(&mut s, b"ping"))
        .await
        .unwrap()
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// A connect failure ejects the endpoint (Istio: at L4, `consecutive5xxErrors` counts connect
/// failures; Envoy outlier.rst: tcp_proxy reports connection failures) and the connection is
/// retried on the healthy endpoint before any byte reached the client; while ejected, the
/// dead endpoint is never dialed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_connect_failure_ejects_and_retries_on_a_healthy_endpoint() {
    const T: u8 = 1;
    let mut mesh = InprocMesh::new(&l4_mesh(
        T,
        "{outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100, baseEjectionTime: 60s}}",
    ));
    echo_server(live(T)).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &["--socks5-port", "0"]).await;
    for _ in 0..6 {
        assert_eq!(echo_once(T).await, b"ping");
    }
    let logs = mesh.logs("a");
    assert_eq!(
        count(&logs, "outlier detection: endpoint ejected"),
        1,
        "{logs}"
    );
    assert_eq!(
        count(&logs, "connect failed: retrying on another endpoint"),
        1
    );
    assert_eq!(
        count(&logs, "outbound HBONE failed"),
        1,
        "dialed once: {logs}"
    );
    // The connection that was retried succeeded: nothing refused.
    let m = mesh.proxy("a").metrics_text();
    let refused = metric(
        &m,
        "istio_tcp_connections_closed_total",
        &[("response_flags", "UF")],
    ) + metric(
        &m,
        "istio_tcp_connections_closed_total",
        &[("response_flags", "URX")],
    );
    assert_eq!(refused, 0.0, "{m}");
}

/// Every endpoint down: two attempts (each under connectTimeout) then the client's
/// connection is refused, counted once with `URX` (Envoy: "Upstream retry limit (HTTP) or
/// max connect attempts (TCP) exceeded").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_all_endpoints_down_ends_with_urx() {
    const T: u8 = 2;
    let mut mesh = InprocMesh::new(&l4_mesh(
        T,
        "{outlierDetection: {consecutive5xxErrors: 5}, connectionPool: {tcp: {connectTimeout: 1s}}}",
    ));
    // ns/live's node b is not started either.
    mesh.ztunnel("a", &["--socks5-port", "0"]).await;
    let mut s = connect_from(client(T), vip(T)).await.unwrap();
    let _ = s.write_all(b"x").await;
    let mut buf = [0u8; 4];
    assert!(matches!(s.read(&mut buf).await, Ok(0) | Err(_)));
    mesh.expect_log("a", "outbound HBONE failed");
    let m = mesh.proxy("a").metrics_text();
    let urx = metric(
        &m,
        "istio_tcp_connections_closed_total",
        &[("response_flags", "URX")],
    );
    assert_eq!(urx, 1.0, "{m}");
}

/// connectTimeout bounds each attempt: an endpoint that accepts TCP and never answers the
/// TLS handshake costs 300 ms, not the proxy's default (Istio connectTimeout default 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_connect_timeout_moves_on_quickly() {
    const T: u8 = 3;
    let mut mesh = InprocMesh::new(&l4_mesh(
        T,
        "{connectionPool: {tcp: {connectTimeout: 300ms}}}",
    ));
    echo_server(live(T)).await;
    // ns/dead's HBONE port: accepts and stays silent.
    let silent = tokio::net::TcpListener::bind(format!("127.213.{T}.21:15008"))
        .await
        .unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &["--socks5-port", "0"]).await;
    let start = tokio::time::Instant::now();
    assert_eq!(echo_once(T).await, b"ping");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    mesh.expect_log("a", "connectionPool.tcp.connectTimeout");
    hold.abort();
}

/// maxConnections: the proxy's connections to the host are capped; the overflowing one is
/// refused and counted with `UO` (Envoy circuit breaker "upstream overflow"). An attacker
/// opening many connections cannot exceed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_max_connections_overflow_is_refused_with_uo() {
    const T: u8 = 4;
    let mut mesh = InprocMesh::new(&l4_mesh(
        T,
        "{connectionPool: {tcp: {maxConnections: 2}}, outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100}}",
    ));
    echo_server(live(T)).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &["--socks5-port", "0"]).await;
    // Two held open (echo answers each chunk; the first may retry past the dead endpoint).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(client(T), vip(T)).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        held.push(s);
    }
    // Twenty more from the same client: all refused.
    for _ in 0..20 {
        let mut s = connect_from(client(T), vip(T)).await.unwrap();
        let _ = s.write_all(b"hi").await;
        let mut b = [0u8; 2];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    }
    let m = mesh.proxy("a").metrics_text();
    let uo = metric(
        &m,
        "istio_tcp_connections_closed_total",
        &[("response_flags", "UO")],
    );
    assert_eq!(uo, 20.0, "{m}");
    // Released when they close: a new one gets through.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(echo_once(T).await, b"ping");
}

/// TCP idleTimeout closes a tunnel that carried nothing for that long; maxConnectionDuration
/// closes even a busy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_idle_timeout_closes_idle_tunnels() {
    const T: u8 = 5;
    let mut mesh = InprocMesh::new(&l4_mesh(
        T,
        "{connectionPool: {tcp: {idleTimeout: 400ms}}, outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100}}",
    ));
    echo_server(live(T)).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &["--socks5-port", "0"]).await;
    let mut s = connect_from(client(T), vip(T)).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    let start = tokio::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "closed: {r:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "{took:?}"
    );
    mesh.expect_log(
        "a",
        "tunnel closed by connectionPool.tcp duration or idle limit",
    );
}

/// An invalid or unsupported field is rejected by name and the last good config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_fields_are_rejected_by_name() {
    const T: u8 = 6;
    let mut mesh = InprocMesh::new(&l4_mesh(T, "{}"));
    mesh.ztunnel("a", &["--socks5-port", "0"]).await;
    for (dr, field) in [
        (
            "{outlierDetection: {consecutiveErrors: 3}}",
            "outlierDetection.consecutiveErrors",
        ),
        (
            "{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}",
            "connectionPool.http.h2UpgradePolicy",
        ),
        (
            "{outlierDetection: {maxEjectionPercent: 150}}",
            "outlierDetection.maxEjectionPercent",
        ),
    ] {
        let e = mesh.proxy("a").apply_yaml(&l4_mesh(T, dr)).await;
        let msg = format!("{e:?}");
        assert!(msg.contains(field), "{dr}: {msg}");
    }
}
