//! Attacks on outlier detection and endpoint choice at the waypoint (L7), in process: a
//! client burst that overflows the connection pool must not get healthy endpoints ejected
//! (the proxy's own `UO` answers are not the endpoint's failures).
//! Block 127.218.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Node a: `ns/client` (127.218.t.10); node b: `ns/web1` (127.218.t.21) and `ns/web2`
/// (127.218.t.22), apps on 8080, behind service `web.ns.svc` (VIP 127.218.t.100:80) and
/// waypoint `ns/wp` (127.218.t.3); `dr` is the DestinationRule's `trafficPolicy`.
fn l7_mesh(t: u8, dr: &str) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.218.{t}.1, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.218.{t}.2, workloads: [ns/web1, ns/web2]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.218.{t}.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web1, namespace: ns}}
spec: {{address: 127.218.{t}.21, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web2, namespace: ns}}
spec: {{address: 127.218.{t}.22, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [web.ns.svc]
  addresses: [127.218.{t}.100]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: 127.218.{t}.3}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: ns}}
spec:
  host: web.ns.svc
  trafficPolicy: {dr}
"#
    )
}

/// What a test backend saw.
#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    conns: AtomicUsize,
    closed: AtomicUsize,
}

/// An HTTP/1.1 backend answering every request with `status` after `delay`, counting
/// requests, connections and the most requests in flight at once.
async fn backend(addr: SocketAddr, status: u16, delay: Duration) -> Arc<Seen> {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = s2.clone();
            seen.conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match s.read_line(&mut line).await {
                            Ok(0) | Err(_) => {
                                seen.closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            _ if line == "\r\n" => break,
                            _ => {}
                        }
                    }
                    seen.hits.fetch_add(1, Ordering::SeqCst);
                    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                    if s.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    seen
}

async fn start(t: u8, dr: &str) -> InprocMesh {
    let mut mesh = InprocMesh::new(&l7_mesh(t, dr));
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    mesh
}

/// One GET on a new connection from the client; the status.
async fn get(t: u8) -> u16 {
    let client = format!("127.218.{t}.10").parse().unwrap();
    let vip: SocketAddr = format!("127.218.{t}.100:80").parse().unwrap();
    let mut s = BufReader::new(connect_from(client, vip).await.unwrap());
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        http_request(&mut s, "GET", "/", "web.ns.svc", &[("connection", "close")]),
    )
    .await
    .unwrap();
    r.0
}

/// A burst past the pool, then ten sequential requests: all must succeed. Envoy's outlier
/// detection counts responses and local-origin errors of requests sent to a host; a circuit
/// breaker overflow never reaches the host (Envoy `outlier.rst`: "consecutive 5xx ... returned
/// by an upstream host"; `circuit_breaking.rst`: overflow is answered locally with `UO`).
async fn burst_then_all_served(t: u8, dr: &str) {
    let slow = Duration::from_millis(1000);
    let a = backend(format!("127.218.{t}.21:8080").parse().unwrap(), 200, slow).await;
    let b = backend(format!("127.218.{t}.22:8080").parse().unwrap(), 200, slow).await;
    let mesh = start(t, dr).await;
    let first = tokio::spawn(get(t));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rest: Vec<_> = (0..9).map(|_| tokio::spawn(get(t))).collect();
    let mut overflowed = 0;
    for r in rest {
        overflowed += usize::from(r.await.unwrap() == 503);
    }
    assert_eq!(first.await.unwrap(), 200);
    assert!(overflowed > 0, "the burst overflowed the pool");
    // Without outlier blame no endpoint is ejected (the proxy logs each ejection), and
    // requests go on being served (one may still overflow: UO).
    let mut ok = 0;
    for _ in 0..6 {
        ok += usize::from(get(t).await == 200);
    }
    let logs = mesh.proxy("wp").logs();
    assert!(!logs.contains("endpoint ejected"), "{logs}");
    assert!(ok > 0);
    drop((a, b));
}

const OD: &str = "outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 300s, \
                  maxEjectionPercent: 100}";

/// Attack: overflowing `http2MaxRequests` (Envoy max_requests) ejects nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_overflow_burst_ejects_nobody() {
    let dr = format!("{{connectionPool: {{http: {{http2MaxRequests: 1}}}}, {OD}}}");
    burst_then_all_served(11, &dr).await;
}

/// Attack: overflowing `maxConnections` (a new connection refused, answered `UO` after the
/// endpoint was chosen) ejects nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_overflow_burst_ejects_nobody() {
    let dr = format!("{{connectionPool: {{tcp: {{maxConnections: 1}}}}, {OD}}}");
    burst_then_all_served(12, &dr).await;
}

/// Istio `connectionPool.tcp.connectTimeout` ("TCP connection timeout") bounds the L7
/// upstream dial too, not only L4: an endpoint's ztunnel that accepts TCP and never answers
/// the TLS handshake (an attacker's tarpit) costs the request that timeout, not the proxy's
/// own connect timeout (5 s, twice for the CONNECT) per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_dial_honours_the_destination_connect_timeout() {
    const T: u8 = 14;
    // The endpoints' HBONE ports: tarpits instead of node b's ztunnel.
    for w in [21, 22] {
        let tarpit = tokio::net::TcpListener::bind(format!("127.218.{T}.{w}:15008"))
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = tarpit.accept().await {
                held.push(s);
            }
        });
    }
    let mut mesh = InprocMesh::new(&l7_mesh(
        T,
        "{connectionPool: {tcp: {connectTimeout: 300ms}}}",
    ));
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    let started = tokio::time::Instant::now();
    assert_eq!(get(T).await, 503);
    let took = started.elapsed();
    let logs = mesh.proxy("wp").logs();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(took >= Duration::from_millis(300), "took {took:?}: {logs}");
}

/// Istio `connectionPool.tcp.maxConnectionDuration` at L7: applied, not parsed and ignored.
/// An upstream HTTP connection carries one request, so none outlives the duration by more
/// than that request (Envoy's upstream `max_connection_duration` drains: active streams
/// finish, no new one starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_max_connection_duration_bounds_upstream_connections() {
    const T: u8 = 15;
    let quick = Duration::from_millis(1);
    let a = backend(format!("127.218.{T}.21:8080").parse().unwrap(), 200, quick).await;
    let b = backend(format!("127.218.{T}.22:8080").parse().unwrap(), 200, quick).await;
    let _mesh = start(T, "{connectionPool: {tcp: {maxConnectionDuration: 1h}}}").await;
    for _ in 0..4 {
        assert_eq!(get(T).await, 200);
    }
    let conns = a.conns.load(Ordering::SeqCst) + b.conns.load(Ordering::SeqCst);
    assert_eq!(
        conns, 4,
        "no upstream connection reused past its one request"
    );
}
