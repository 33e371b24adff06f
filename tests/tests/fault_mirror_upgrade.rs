//! Fault injection, mirroring and WebSocket pass-through at the waypoint (in-process
//! harness, loopback block 127.211.x.x): aborts and delays with their flags, mirrored copies
//! counted at a mirror backend that may be slow or down, and a WebSocket echo through the
//! waypoint with the attacks an upgrade invites (a denied route, `h2c` smuggling, a 101 the
//! client never asked for).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Addresses of one test's mesh: `127.211.<c>.x`.
#[derive(Clone, Copy)]
struct Net(u8);

impl Net {
    fn ip(self, host: u8) -> String {
        format!("127.211.{}.{host}", self.0)
    }
    fn addr(self, host: u8, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip(host)).parse().unwrap()
    }
    /// The web service's VIP.
    fn vip(self) -> SocketAddr {
        self.addr(41, 80)
    }
    /// Node a (client), node b (web at .21, shadow at .22), waypoint `ns/wp` for both
    /// services, then `extra` documents.
    fn config(self, extra: &str) -> String {
        let ip = |h| self.ip(h);
        format!(
            r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: {a}, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: {b}, workloads: [ns/web, ns/shadow]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: {client}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: ns}}
spec: {{address: {web}, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: shadow, namespace: ns}}
spec: {{address: {shadow}, serviceAccount: shadow, labels: {{app: shadow}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [web.ns.svc]
  addresses: [{vip_web}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shadow, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [shadow.ns.svc]
  addresses: [{vip_shadow}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: shadow}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: {wp}}}]
{extra}"#,
            a = ip(1),
            b = ip(2),
            wp = ip(3),
            client = ip(10),
            web = ip(21),
            shadow = ip(22),
            vip_web = ip(41),
            vip_shadow = ip(42),
        )
    }

    /// Starts the mesh with the backends already listening.
    async fn start(self, extra: &str) -> InprocMesh {
        let mut mesh = InprocMesh::new(&self.config(extra));
        mesh.ztunnel("b", &[]).await;
        mesh.waypoint("wp", "ns/wp", &[]).await;
        mesh.ztunnel("a", &[]).await;
        mesh
    }

    async fn conn(self) -> BufReader<TcpStream> {
        let client = self.ip(10).parse().unwrap();
        BufReader::new(connect_from(client, self.vip()).await.unwrap())
    }
}

/// How a test backend answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// 200 `ok <path> upgrade=<Upgrade header or ->`; a WebSocket upgrade gets 101 and an
    /// echo of every byte after it.
    Http,
    /// Reads the request, never answers.
    Slow,
    /// 101 to every request, upgrade or not, then echoes.
    Always101,
}

/// What a backend received, one line per request: `<host> <path> upgrade=<...>`.
type Seen = Arc<Mutex<Vec<String>>>;

async fn backend(addr: SocketAddr, mode: Mode) -> Seen {
    let seen: Seen = Arc::default();
    let l = TcpListener::bind(addr).await.unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(BufReader::new(s), mode, s2.clone()));
        }
    });
    seen
}

async fn serve(mut s: BufReader<TcpStream>, mode: Mode, seen: Seen) {
    loop {
        let Some((first, headers)) = read_head(&mut s).await else {
            return;
        };
        let h = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let len: usize = h("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
        let upgrade = h("upgrade").unwrap_or_else(|| "-".into());
        seen.lock().unwrap().push(format!(
            "{} {path} upgrade={upgrade}",
            h("host").unwrap_or_default()
        ));
        if mode == Mode::Slow {
            std::future::pending::<()>().await;
        }
        if mode == Mode::Always101 || upgrade.eq_ignore_ascii_case("websocket") {
            let head = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
            if s.get_mut().write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let (mut r, mut w) = s.into_inner().into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        let body = format!("ok {path} upgrade={upgrade}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.get_mut().write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A request or response head: its first line and headers.
async fn read_head(s: &mut BufReader<TcpStream>) -> Option<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    if s.read_line(&mut first).await.ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some((first.trim_end().to_owned(), headers));
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
}

/// Sends `head` (and a blank line) and reads the response: status, headers, body.
async fn exchange_http(
    s: &mut BufReader<TcpStream>,
    head: &str,
) -> (u16, Vec<(String, String)>, String) {
    s.get_mut()
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (first, headers) = tokio::time::timeout(Duration::from_secs(10), read_head(s))
        .await
        .expect("response in time")
        .expect("a response");
    let status = first.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The waypoint's metrics once `f` holds of them (5 s), else the last ones.
async fn metrics_until(mesh: &InprocMesh, f: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..250 {
        text = mesh.proxy("wp").metrics_text();
        if f(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    text
}

const HOST: &str = "Host: web.ns.svc";

fn vs(http: &str) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: ns}}
spec:
  hosts: [web.ns.svc]
  http:
{http}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_with_their_flags() {
    // Istio fault injection task (VirtualService `fault`): aborts answer with the status
    // without reaching the app; delays hold the request first. Envoy flags: FI, DI.
    let net = Net(10);
    let seen = backend(net.addr(21, 8080), Mode::Http).await;
    let mesh = net
        .start(&vs(r#"  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web.ns.svc}}]
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: web.ns.svc}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 400ms, percent: 100}}
    route: [{destination: {host: web.ns.svc}}]
  - route: [{destination: {host: web.ns.svc}}]
"#))
        .await;
    let mut c = net.conn().await;
    let (status, _, body) = exchange_http(&mut c, &format!("GET /abort HTTP/1.1\r\n{HOST}")).await;
    assert_eq!((status, body.as_str()), (418, "fault filter abort"));
    mesh.expect_log("wp", r#""response_flags":"FI""#);
    let (status, headers, _) =
        exchange_http(&mut c, &format!("GET /grpc HTTP/1.1\r\n{HOST}")).await;
    assert_eq!(status, 200);
    assert!(
        headers.contains(&("grpc-status".into(), "14".into())),
        "{headers:?}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "aborts never reach the app"
    );
    let t0 = Instant::now();
    let (status, _, body) = exchange_http(&mut c, &format!("GET /delay HTTP/1.1\r\n{HOST}")).await;
    let took = t0.elapsed();
    assert_eq!((status, body.as_str()), (200, "ok /delay upgrade=-"));
    assert!(took >= Duration::from_millis(400), "{took:?}");
    mesh.expect_log("wp", r#""response_flags":"DI""#);
    let t0 = Instant::now();
    let (status, _, _) = exchange_http(&mut c, &format!("GET /other HTTP/1.1\r\n{HOST}")).await;
    assert_eq!(status, 200);
    assert!(t0.elapsed() < Duration::from_millis(400));
    // Attacker: Envoy's header-controlled faults are not honoured (nor forwarded).
    let (status, _, _) = exchange_http(
        &mut c,
        &format!("GET /other HTTP/1.1\r\n{HOST}\r\nx-envoy-fault-abort-request: 500"),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_copies_are_counted_and_never_hold_the_main_request() {
    let net = Net(20);
    let web = backend(net.addr(21, 8080), Mode::Http).await;
    let shadow = backend(net.addr(22, 8080), Mode::Http).await;
    let mesh = net
        .start(&vs(r#"  - match: [{uri: {prefix: /half}}]
    mirror: {host: shadow.ns.svc}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: web.ns.svc}}]
  - route: [{destination: {host: web.ns.svc}}]
    mirrors: [{destination: {host: shadow.ns.svc}}]
"#))
        .await;
    let mut c = net.conn().await;
    for i in 0..20 {
        let (status, _, body) =
            exchange_http(&mut c, &format!("GET /all/{i} HTTP/1.1\r\n{HOST}")).await;
        assert_eq!((status, body), (200, format!("ok /all/{i} upgrade=-")));
    }
    // Every copy arrives (fire and forget: wait for them), with Envoy's `-shadow` host.
    let copies = |seen: &Seen| seen.lock().unwrap().len();
    for _ in 0..100 {
        if copies(&shadow) == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(copies(&web), 20);
    assert_eq!(copies(&shadow), 20, "{:?}", shadow.lock().unwrap());
    assert!(
        shadow
            .lock()
            .unwrap()
            .iter()
            .all(|l| l.starts_with("web.ns.svc-shadow /all/")),
        "{:?}",
        shadow.lock().unwrap()
    );
    let m = metrics_until(&mesh, |t| metric(t, "mesh_mirror_sent_total", &[]) >= 20.0).await;
    assert_eq!(metric(&m, "mesh_mirror_sent_total", &[]), 20.0);
    assert_eq!(metric(&m, "mesh_mirror_dropped_overflow_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_backend_down_leaves_the_main_request_alone() {
    let net = Net(70);
    let web = backend(net.addr(21, 8080), Mode::Http).await;
    // Nothing listens for the shadow workload: its copies fail (503 UF), dropped.
    let mesh = net
        .start(&vs(r#"  - route: [{destination: {host: web.ns.svc}}]
    mirror: {host: shadow.ns.svc}
"#))
        .await;
    let mut c = net.conn().await;
    for i in 0..5 {
        let (status, _, body) =
            exchange_http(&mut c, &format!("GET /{i} HTTP/1.1\r\n{HOST}")).await;
        assert_eq!((status, body), (200, format!("ok /{i} upgrade=-")));
    }
    assert_eq!(web.lock().unwrap().len(), 5);
    let m = metrics_until(&mesh, |t| metric(t, "mesh_mirror_sent_total", &[]) >= 5.0).await;
    assert_eq!(metric(&m, "mesh_mirror_sent_total", &[]), 5.0);
    assert_eq!(metric(&m, "mesh_mirror_in_flight", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_absent_mirror_backend_does_not_touch_the_main_response() {
    let net = Net(30);
    let web = backend(net.addr(21, 8080), Mode::Http).await;
    // The shadow workload hangs every request.
    let shadow = backend(net.addr(22, 8080), Mode::Slow).await;
    let mesh = net
        .start(&vs(r#"  - route: [{destination: {host: web.ns.svc}}]
    mirror: {host: shadow.ns.svc}
"#))
        .await;
    let mut c = net.conn().await;
    let t0 = Instant::now();
    for i in 0..10 {
        let (status, _, _) = exchange_http(&mut c, &format!("GET /{i} HTTP/1.1\r\n{HOST}")).await;
        assert_eq!(status, 200);
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(web.lock().unwrap().len(), 10);
    for _ in 0..100 {
        if shadow.lock().unwrap().len() == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        shadow.lock().unwrap().len(),
        10,
        "copies sent, their answers never awaited"
    );
    let m = mesh.proxy("wp").metrics_text();
    assert_eq!(
        metric(&m, "mesh_mirror_in_flight", &[]),
        10.0,
        "bounded by the copy timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_waypoint() {
    let net = Net(40);
    let seen = backend(net.addr(21, 8080), Mode::Http).await;
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
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["web.ns.svc /chat upgrade=websocket"]
    );
    drop(c);
    let m = metrics_until(&mesh, |t| {
        metric(t, "mesh_upgraded_sent_bytes_total", &[]) >= 100_012.0
    })
    .await;
    assert_eq!(metric(&m, "mesh_upgraded_connections_total", &[]), 1.0);
    assert_eq!(
        metric(&m, "mesh_upgraded_received_bytes_total", &[]),
        100_012.0
    );
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
