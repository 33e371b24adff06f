//! WebSocket upgrades against policy and pools (in-process harness, loopback block
//! 127.216.x.x): a rule on `GET` holds for both WebSocket forms (HTTP/1.1 Upgrade and HTTP/2
//! extended CONNECT), and an upgraded pair keeps its `connectionPool` slots until it closes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "l7_support/mod.rs"]
mod support;

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tests::connect_from;
use mesh_tests::inproc::InprocMesh;
use support::Net;
use support::{HOST, Mode, Seen, backend, exchange_http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The support mesh moved to this file's loopback block.
fn config(net: Net, extra: &str) -> String {
    net.config(extra).replace("127.211.", "127.216.")
}

fn ip(net: Net, host: u8) -> String {
    format!("127.216.{}.{host}", net.0)
}

async fn start(yaml: &str) -> InprocMesh {
    let mut mesh = InprocMesh::new(yaml);
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    mesh
}

async fn conn(net: Net) -> tokio::io::BufReader<tokio::net::TcpStream> {
    let client = ip(net, 10).parse().unwrap();
    let vip = format!("{}:80", ip(net, 41)).parse().unwrap();
    tokio::io::BufReader::new(connect_from(client, vip).await.unwrap())
}

const WS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

/// An empty request body for the test's HTTP/2 client.
struct Nothing;

impl hyper::body::Body for Nothing {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }
}

fn extended_connect(path: &str) -> http::Request<Nothing> {
    let mut r = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://web.ns.svc{path}"))
        .header("sec-websocket-version", "13")
        .body(Nothing)
        .unwrap();
    r.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_rule_holds_for_websocket_over_http2_too() {
    // Attacker: a DENY on `GET` for the WebSocket paths, asked over HTTP/2 extended CONNECT
    // (`:method CONNECT`, RFC 8441 section 4) to slip past it. Envoy hands its filters an
    // extended CONNECT as an HTTP/1-style `GET` + `Upgrade: websocket` (envoy docs
    // "HTTP upgrades" / "Tunneling WebSockets over HTTP/2"; envoy
    // source/common/http/header_utility.cc `transformUpgradeRequestFromH2`), so Istio's
    // `methods: [GET]` matches both forms.
    let net = Net(1);
    let deny = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-ws-get, namespace: ns}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {methods: [GET], paths: ["/ws/*"]}}]}]
"#;
    let yaml = config(net, deny).replace(
        "name: http, protocol: HTTP,",
        "name: http2, protocol: HTTP2,",
    );
    let _mesh = start(&yaml).await;
    let up = format!("{}:8080", ip(net, 21)).parse().unwrap();
    let seen = h2_app(up).await;
    let tcp = connect_from(
        ip(net, 10).parse().unwrap(),
        format!("{}:80", ip(net, 41)).parse().unwrap(),
    )
    .await
    .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Nothing>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // A first request, so the proxy's SETTINGS (extended CONNECT enabled) have arrived.
    let get = http::Request::get("http://web.ns.svc/")
        .body(Nothing)
        .unwrap();
    assert_eq!(sender.send_request(get).await.unwrap().status(), 200);
    let resp = sender
        .send_request(extended_connect("/ws/chat"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "the GET rule holds over HTTP/2");
    // Not denied: upgraded, and the app got the extended CONNECT back.
    let resp = sender
        .send_request(extended_connect("/open/chat"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"h2 ws").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"h2 ws");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["GET /", "CONNECT websocket /open/chat"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_rule_holds_for_websocket_over_http1() {
    // The same rule, the HTTP/1.1 form (RFC 6455 4.1: a GET with `Upgrade: websocket`).
    let net = Net(2);
    let deny = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-ws-get, namespace: ns}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {methods: [GET], paths: ["/ws/*"]}}]}]
"#;
    let seen = backend(format!("{}:8080", ip(net, 21)).parse().unwrap(), Mode::Http).await;
    let _mesh = start(&config(net, deny)).await;
    let mut c = conn(net).await;
    let (status, _, _) =
        exchange_http(&mut c, &format!("GET /ws/chat HTTP/1.1\r\n{HOST}\r\n{WS}")).await;
    assert_eq!(status, 403);
    assert!(seen.lock().unwrap().is_empty());
}

/// An HTTP/2 app: 200 to everything, an echo after a WebSocket extended CONNECT; records
/// `<method> [websocket ]<path>` per request.
async fn h2_app(addr: std::net::SocketAddr) -> Seen {
    use hyper::service::service_fn;
    let seen: Seen = Default::default();
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = s2.clone();
            let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                let ws = req
                    .extensions()
                    .get::<hyper::ext::Protocol>()
                    .is_some_and(|p| p.as_str() == "websocket");
                let tag = if ws { " websocket" } else { "" };
                let line = format!("{}{tag} {}", req.method(), req.uri().path());
                seen.lock().unwrap().push(line);
                if ws {
                    let up = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = up.await {
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                }
                async { Ok::<_, std::convert::Infallible>(http::Response::new(Nothing)) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .enable_connect_protocol()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_keep_their_connection_pool_slots() {
    // Attacker: WebSockets opened and held, each an upstream connection, past the
    // DestinationRule's `connectionPool.tcp.maxConnections` (Istio: "Maximum number of HTTP1
    // /TCP connections to a destination host"; Envoy counts an upgraded stream's connection
    // as active until it closes, circuit breaker `max_connections`, overflow flag `UO`).
    let net = Net(3);
    let dr = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: ns}
spec:
  host: web.ns.svc
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 2}}}
"#;
    let seen = backend(format!("{}:8080", ip(net, 21)).parse().unwrap(), Mode::Http).await;
    let _mesh = start(&config(net, dr)).await;
    let open = || async {
        let mut c = conn(net).await;
        let (status, _, body) =
            exchange_http(&mut c, &format!("GET /chat HTTP/1.1\r\n{HOST}\r\n{WS}")).await;
        (status, body, c)
    };
    let (s1, _, mut c1) = open().await;
    let (s2, _, mut c2) = open().await;
    assert_eq!((s1, s2), (101, 101));
    // Both pairs carry bytes.
    for c in [&mut c1, &mut c2] {
        c.get_mut().write_all(b"hi").await.unwrap();
        let mut back = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
    }
    // The third, while two are open: no connection slot left.
    let (s3, body, _c3) = open().await;
    assert_eq!((s3, body.as_str()), (503, "upstream overflow\n"));
    // A pair closed gives its slot back.
    drop(c1);
    let mut ok = false;
    for _ in 0..100 {
        let (s, _, _c) = open().await;
        if s == 101 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot came back: {:?}", seen.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_http2_websockets_keep_their_request_slots() {
    // Attacker: WebSockets over HTTP/2 multiplexed on one upstream connection, held open past
    // `connectionPool.http.http2MaxRequests` (Istio: "Maximum number of active requests to a
    // destination"; Envoy's `max_requests` circuit breaker counts a stream until it ends, an
    // upgraded stream included; overflow flag `UO`).
    let net = Net(4);
    let dr = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: ns}
spec:
  host: web.ns.svc
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 2}}}
"#;
    let yaml = config(net, dr).replace(
        "name: http, protocol: HTTP,",
        "name: http2, protocol: HTTP2,",
    );
    let _mesh = start(&yaml).await;
    let _seen = h2_app(format!("{}:8080", ip(net, 21)).parse().unwrap()).await;
    let tcp = connect_from(
        ip(net, 10).parse().unwrap(),
        format!("{}:80", ip(net, 41)).parse().unwrap(),
    )
    .await
    .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Nothing>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = http::Request::get("http://web.ns.svc/")
        .body(Nothing)
        .unwrap();
    assert_eq!(sender.send_request(get).await.unwrap().status(), 200);
    let mut open = Vec::new();
    for _ in 0..2 {
        let resp = sender
            .send_request(extended_connect("/chat"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        open.push(TokioIo::new(hyper::upgrade::on(resp).await.unwrap()));
    }
    // The third, while two are open: no request slot left.
    let resp = sender
        .send_request(extended_connect("/chat"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    // A plain request too: the two open WebSockets are active requests.
    let get = http::Request::get("http://web.ns.svc/")
        .body(Nothing)
        .unwrap();
    assert_eq!(sender.send_request(get).await.unwrap().status(), 503);
    // Closed, their slots come back.
    drop(open);
    let mut status = 0;
    for _ in 0..100 {
        let get = http::Request::get("http://web.ns.svc/")
            .body(Nothing)
            .unwrap();
        status = sender.send_request(get).await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
}
