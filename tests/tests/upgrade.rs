//! WebSocket pass-through at the waypoint (in-process harness, loopback block 127.211.x.x):
//! an echo over HTTP/1.1 Upgrade and over HTTP/2 extended CONNECT, and the attacks an
//! upgrade invites (a denied route, `h2c` smuggling, a 101 the client never asked for).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "l7_support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_waypoint() {
    let net = Net(40);
    let seen = backend(net.addr(21, 8080), Mode::Http).await;
    let shadow = backend(net.addr(22, 8080), Mode::Http).await;
    let mesh = net
        .start(
            r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: ns}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
"#,
        )
        .await;
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let mut c = net.conn().await;
    let (status, headers, _) =
        exchange_http(&mut c, &format!("GET /chat HTTP/1.1\r\n{HOST}\r\n{ws}")).await;
    assert_eq!(status, 101, "{headers:?}");
    // RFC 6455: after the 101 the connection carries the peers' bytes, both ways.
    for msg in [
        &b"hello"[..],
        &[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'],
        &[7u8; 100_000],
    ] {
        c.get_mut().write_all(msg).await.unwrap();
        let mut back = vec![0; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    // Attacker: HTTP inside the tunnel (for another service, or a denied path) is only bytes
    // to the upgraded app's connection: no other service is reached, nothing is routed.
    let smuggled = b"GET /admin HTTP/1.1\r\nHost: shadow.ns.svc\r\n\r\n";
    c.get_mut().write_all(smuggled).await.unwrap();
    let mut back = vec![0; smuggled.len()];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, smuggled, "echoed by the upgraded app itself");
    assert!(shadow.lock().unwrap().is_empty());
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["web.ns.svc /chat upgrade=websocket"]
    );
    drop(c);
    let total = 100_012.0 + smuggled.len() as f64;
    let m = metrics_until(&mesh, |t| {
        metric(t, "mesh_upgraded_sent_bytes_total", &[]) >= total
    })
    .await;
    assert_eq!(metric(&m, "mesh_upgraded_connections_total", &[]), 1.0);
    assert_eq!(metric(&m, "mesh_upgraded_received_bytes_total", &[]), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_cannot_bypass_policy_or_smuggle_h2c() {
    let net = Net(50);
    let seen = backend(net.addr(21, 8080), Mode::Http).await;
    let _mesh = net
        .start(
            r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: ns}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
"#,
        )
        .await;
    let ws = "Connection: Upgrade\r\nUpgrade: websocket";
    // A WebSocket to a denied path stays denied, and the connection stays HTTP: the next
    // request on it is judged again.
    let mut c = net.conn().await;
    let (status, _, _) =
        exchange_http(&mut c, &format!("GET /admin HTTP/1.1\r\n{HOST}\r\n{ws}")).await;
    assert_eq!(status, 403);
    let (status, _, _) = exchange_http(&mut c, &format!("GET /admin/x HTTP/1.1\r\n{HOST}")).await;
    assert_eq!(status, 403);
    // h2c smuggling (an HTTP/2 connection to the app behind the proxy's back): the upgrade
    // is stripped, the app sees a plain request and answers it.
    let mut c = net.conn().await;
    let (status, _, body) = exchange_http(
        &mut c,
        &format!(
            "GET /x HTTP/1.1\r\n{HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"
        ),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok /x upgrade=-"));
    // The plain connection still goes through the stack request by request.
    let (status, _, _) = exchange_http(&mut c, &format!("GET /admin HTTP/1.1\r\n{HOST}")).await;
    assert_eq!(status, 403);
    assert!(
        seen.lock().unwrap().iter().all(|l| !l.contains("/admin")),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_the_client_did_not_ask_for_is_refused() {
    // An app (or attacker-controlled upstream) switching protocols on a plain request would
    // turn the client's connection into an unmediated tunnel: 502 instead.
    let net = Net(60);
    let _seen = backend(net.addr(21, 8080), Mode::Always101).await;
    let mesh = net.start("").await;
    let mut c = net.conn().await;
    let (status, _, _) = exchange_http(&mut c, &format!("GET /x HTTP/1.1\r\n{HOST}")).await;
    assert_eq!(status, 502);
    let m = metrics_until(&mesh, |t| {
        metric(t, "mesh_upgrade_refused_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(metric(&m, "mesh_upgraded_connections_total", &[]), 0.0);
}

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

/// An HTTP/2 app accepting RFC 8441 WebSocket: 200 then an echo of the stream's bytes.
async fn h2_ws_echo(addr: SocketAddr) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = service_fn(|mut req: http::Request<hyper::body::Incoming>| async move {
                let ws = req
                    .extensions()
                    .get::<hyper::ext::Protocol>()
                    .is_some_and(|p| p.as_str() == "websocket");
                if ws {
                    let up = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = up.await {
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(Nothing))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .enable_connect_protocol()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    // RFC 8441: WebSocket over an HTTP/2 stream (an HTTP2 service port), through the waypoint.
    let net = Net(80);
    h2_ws_echo(net.addr(21, 8080)).await;
    let yaml = net.config("").replace(
        "name: http, protocol: HTTP,",
        "name: http2, protocol: HTTP2,",
    );
    let mut mesh = InprocMesh::new(&yaml);
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    let tcp = connect_from(net.ip(10).parse().unwrap(), net.vip())
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
    let connect = |protocol: &'static str, path: &str| {
        let mut r = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://web.ns.svc{path}"))
            .header("sec-websocket-version", "13")
            .body(Nothing)
            .unwrap();
        r.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(protocol));
        r
    };
    let resp = sender
        .send_request(connect("websocket", "/chat"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut up = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    up.write_all(b"over h2").await.unwrap();
    let mut back = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(10), up.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"over h2");
    // Other extended CONNECT protocols (a UDP or IP tunnel) are refused.
    let resp = sender
        .send_request(connect("connect-udp", "/.well-known/masque/udp/x/53/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 501);
}
