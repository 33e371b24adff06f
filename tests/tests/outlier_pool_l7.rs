//! Outlier detection and connection pools at the waypoint (L7), in process: an endpoint that
//! answers 503 is ejected after exactly `consecutive5xxErrors` and skipped while ejected;
//! `http2MaxRequests` and `maxConnections` overflow answer 503 with flag `UO`; one client
//! opening many requests cannot get more than the pool in flight at the backend.
//! Block 127.213.x.x (sub-blocks 11 and up).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Node a: `ns/client` (127.213.t.10); node b: `ns/web1` (127.213.t.21) and `ns/web2`
/// (127.213.t.22), apps on 8080, behind service `web.ns.svc` (VIP 127.213.t.100:80) and
/// waypoint `ns/wp` (127.213.t.3); `dr` is the DestinationRule's `trafficPolicy`.
fn l7_mesh(t: u8, dr: &str) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.213.{t}.1, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.213.{t}.2, workloads: [ns/web1, ns/web2]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.213.{t}.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web1, namespace: ns}}
spec: {{address: 127.213.{t}.21, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web2, namespace: ns}}
spec: {{address: 127.213.{t}.22, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [web.ns.svc]
  addresses: [127.213.{t}.100]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: 127.213.{t}.3}}]
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
    let client = format!("127.213.{t}.10").parse().unwrap();
    let vip: SocketAddr = format!("127.213.{t}.100:80").parse().unwrap();
    let mut s = BufReader::new(connect_from(client, vip).await.unwrap());
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        http_request(&mut s, "GET", "/", "web.ns.svc", &[("connection", "close")]),
    )
    .await
    .unwrap();
    r.0
}

/// Requests the waypoint answered with flag UO, from its access log (polled: a request is
/// logged when its response body ends).
async fn uo_count(mesh: &InprocMesh, want: usize) -> usize {
    let mut got = 0;
    for _ in 0..50 {
        got = mesh
            .proxy("wp")
            .logs()
            .matches(r#""response_flags":"UO""#)
            .count();
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

/// Istio consecutive5xxErrors: the 503 endpoint gets exactly that many requests, then it is
/// ejected (baseEjectionTime 60 s) and every later request goes to the healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_5xx_endpoint_is_ejected_after_exactly_n_and_skipped() {
    const T: u8 = 11;
    let bad = backend(
        format!("127.213.{T}.21:8080").parse().unwrap(),
        503,
        Duration::ZERO,
    )
    .await;
    let good = backend(
        format!("127.213.{T}.22:8080").parse().unwrap(),
        200,
        Duration::ZERO,
    )
    .await;
    let mesh = start(
        T,
        "{outlierDetection: {consecutive5xxErrors: 3, maxEjectionPercent: 100, baseEjectionTime: 60s}}",
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get(T).await);
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 3, "{statuses:?}");
    // Each request reached the good endpoint once: a 503 may have been retried there by the
    // retry layer's default policy (Istio retries 503 by default); none after the ejection.
    assert_eq!(good.hits.load(Ordering::SeqCst), 30, "{statuses:?}");
    assert!(
        statuses.iter().rev().take(20).all(|s| *s == 200),
        "{statuses:?}"
    );
    mesh.expect_log("wp", "outlier detection: endpoint ejected");
}

/// maxEjectionPercent (Istio default 10%): with both endpoints failing, only one is ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_max_ejection_percent_keeps_one_in() {
    const T: u8 = 12;
    let a = backend(
        format!("127.213.{T}.21:8080").parse().unwrap(),
        502,
        Duration::ZERO,
    )
    .await;
    let b = backend(
        format!("127.213.{T}.22:8080").parse().unwrap(),
        502,
        Duration::ZERO,
    )
    .await;
    let mesh = start(
        T,
        "{outlierDetection: {consecutiveGatewayErrors: 1, consecutive5xxErrors: 0}}",
    )
    .await;
    for _ in 0..20 {
        assert_eq!(get(T).await, 502);
    }
    let (ha, hb) = (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst));
    assert_eq!(ha + hb, 20);
    assert!(
        ha.min(hb) == 1,
        "one ejected after its first 502, the other kept: {ha} {hb}"
    );
    let logs = mesh.proxy("wp").logs();
    assert_eq!(
        logs.matches("outlier detection: endpoint ejected").count(),
        1
    );
}

/// http2MaxRequests: one client sending ten requests at once to a slow backend gets one in
/// flight; the nine others are answered 503 with flag UO (Envoy circuit breaker
/// max_requests), and the backend never sees two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_max_requests_overflow_is_503_uo() {
    const T: u8 = 13;
    let slow = Duration::from_millis(1500);
    let a = backend(format!("127.213.{T}.21:8080").parse().unwrap(), 200, slow).await;
    let b = backend(format!("127.213.{T}.22:8080").parse().unwrap(), 200, slow).await;
    let mesh = start(T, "{connectionPool: {http: {http2MaxRequests: 1}}}").await;
    let first = tokio::spawn(get(T));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rest: Vec<_> = (0..9).map(|_| tokio::spawn(get(T))).collect();
    let mut codes = Vec::new();
    for r in rest {
        codes.push(r.await.unwrap());
    }
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(codes, [503; 9]);
    let max = a.max_in_flight.load(Ordering::SeqCst) + b.max_in_flight.load(Ordering::SeqCst);
    assert_eq!(max, 1);
    assert_eq!(uo_count(&mesh, 9).await, 9);
}

/// maxConnections at L7: the waypoint's upstream connections to the host are capped; a
/// request needing a new connection past the cap is answered 503 UO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_max_connections_overflow_is_503_uo() {
    const T: u8 = 14;
    let slow = Duration::from_millis(1500);
    let a = backend(format!("127.213.{T}.21:8080").parse().unwrap(), 200, slow).await;
    let b = backend(format!("127.213.{T}.22:8080").parse().unwrap(), 200, slow).await;
    let mesh = start(T, "{connectionPool: {tcp: {maxConnections: 1}}}").await;
    let first = tokio::spawn(get(T));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = get(T).await;
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second, 503, "{}", mesh.proxy("wp").logs());
    assert_eq!(
        a.conns.load(Ordering::SeqCst) + b.conns.load(Ordering::SeqCst),
        1
    );
    assert_eq!(uo_count(&mesh, 1).await, 1);
}

/// The waypoint's TCP path (a TCP port of a service that uses it) applies the service's
/// connectionPool too: past maxConnections the stream is refused (503 to the source
/// ztunnel, which closes the client's connection) and counted UO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_tcp_max_connections_overflow() {
    const T: u8 = 15;
    let extra = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [tcp.ns.svc]
  addresses: [127.213.{T}.101]
  ports: [{{number: 90, name: tcp, protocol: TCP, targetPort: 9000}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp, namespace: ns}}
spec:
  host: tcp.ns.svc
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 1}}}}}}
"#
    );
    echo_server(format!("127.213.{T}.21:9000").parse().unwrap()).await;
    echo_server(format!("127.213.{T}.22:9000").parse().unwrap()).await;
    let mut mesh = InprocMesh::new(&(l7_mesh(T, "{}") + &extra));
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    let client = format!("127.213.{T}.10").parse().unwrap();
    let vip: SocketAddr = format!("127.213.{T}.101:90").parse().unwrap();
    let mut held = connect_from(client, vip).await.unwrap();
    held.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_exact(&mut held, &mut b),
    )
    .await
    .unwrap()
    .unwrap();
    let mut second = connect_from(client, vip).await.unwrap();
    let _ = second.write_all(b"hi").await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut second, &mut b),
    )
    .await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    mesh.expect_log("wp", "connection pool overflow");
    drop(held);
}

/// The mesh of [`l7_mesh`] with `web2` out of the service: one endpoint, `web1`.
fn one_endpoint(t: u8, dr: &str) -> String {
    let from = format!("address: 127.213.{t}.22, serviceAccount: web, labels: {{app: web}}");
    let to = format!("address: 127.213.{t}.22, serviceAccount: web, labels: {{app: none}}");
    let yaml = l7_mesh(t, dr);
    assert!(yaml.contains(&from));
    yaml.replace(&from, &to)
}

async fn start_yaml(yaml: &str) -> InprocMesh {
    let mut mesh = InprocMesh::new(yaml);
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    mesh
}

/// maxRequestsPerConnection: 1 (Istio: "1 disables keep-alive"): every request to the
/// endpoint opens its own upstream connection; without it they share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_max_requests_per_connection() {
    const T: u8 = 16;
    let web = backend(
        format!("127.213.{T}.21:8080").parse().unwrap(),
        200,
        Duration::ZERO,
    )
    .await;
    let mesh = start_yaml(&one_endpoint(
        T,
        "{connectionPool: {http: {maxRequestsPerConnection: 1}}}",
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(get(T).await, 200);
    }
    assert_eq!(web.hits.load(Ordering::SeqCst), 5);
    assert_eq!(web.conns.load(Ordering::SeqCst), 5);
    drop(mesh);
    const U: u8 = 17;
    let web = backend(
        format!("127.213.{U}.21:8080").parse().unwrap(),
        200,
        Duration::ZERO,
    )
    .await;
    let _mesh = start_yaml(&one_endpoint(
        U,
        "{connectionPool: {http: {http2MaxRequests: 100}}}",
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(get(U).await, 200);
    }
    assert_eq!(web.conns.load(Ordering::SeqCst), 1);
}

/// connectionPool.http.idleTimeout: an upstream connection idle longer is closed, and the
/// next request opens a new one (the backend sees two connections, the first one closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_http_idle_timeout_closes_upstream_connections() {
    const T: u8 = 18;
    let web = backend(
        format!("127.213.{T}.21:8080").parse().unwrap(),
        200,
        Duration::ZERO,
    )
    .await;
    let _mesh = start_yaml(&one_endpoint(
        T,
        "{connectionPool: {http: {idleTimeout: 300ms}}}",
    ))
    .await;
    assert_eq!(get(T).await, 200);
    assert_eq!(get(T).await, 200);
    assert_eq!(web.conns.load(Ordering::SeqCst), 1, "reused while fresh");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(T).await, 200);
    assert_eq!(
        web.conns.load(Ordering::SeqCst),
        2,
        "the idle one was not reused"
    );
    for _ in 0..50 {
        if web.closed.load(Ordering::SeqCst) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        web.closed.load(Ordering::SeqCst),
        1,
        "the idle one was closed"
    );
}

// Attacks on outlier detection and the pools (a client burst that overflows the connection
// pool must not get healthy endpoints ejected), and the destination's connect timeout and
// connection duration at L7.

/// A burst past the pool, then ten sequential requests: all must succeed. Envoy's outlier
/// detection counts responses and local-origin errors of requests sent to a host; a circuit
/// breaker overflow never reaches the host (Envoy `outlier.rst`: "consecutive 5xx ... returned
/// by an upstream host"; `circuit_breaking.rst`: overflow is answered locally with `UO`).
async fn burst_then_all_served(t: u8, dr: &str) {
    let slow = Duration::from_millis(1000);
    let a = backend(format!("127.213.{t}.21:8080").parse().unwrap(), 200, slow).await;
    let b = backend(format!("127.213.{t}.22:8080").parse().unwrap(), 200, slow).await;
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
    burst_then_all_served(21, &dr).await;
}

/// Attack: overflowing `maxConnections` (a new connection refused, answered `UO` after the
/// endpoint was chosen) ejects nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_overflow_burst_ejects_nobody() {
    let dr = format!("{{connectionPool: {{tcp: {{maxConnections: 1}}}}, {OD}}}");
    burst_then_all_served(22, &dr).await;
}

/// Istio `connectionPool.tcp.connectTimeout` ("TCP connection timeout") bounds the L7
/// upstream dial too, not only L4: an endpoint's ztunnel that accepts TCP and never answers
/// the TLS handshake (an attacker's tarpit) costs the request that timeout, not the proxy's
/// own connect timeout (5 s, twice for the CONNECT) per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_dial_honours_the_destination_connect_timeout() {
    const T: u8 = 24;
    // The endpoints' HBONE ports: tarpits instead of node b's ztunnel.
    for w in [21, 22] {
        let tarpit = tokio::net::TcpListener::bind(format!("127.213.{T}.{w}:15008"))
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
    const T: u8 = 25;
    let quick = Duration::from_millis(1);
    let a = backend(format!("127.213.{T}.21:8080").parse().unwrap(), 200, quick).await;
    let b = backend(format!("127.213.{T}.22:8080").parse().unwrap(), 200, quick).await;
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
