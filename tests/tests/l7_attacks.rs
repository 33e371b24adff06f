//! Attacks on the waypoint's HTTP server (real binaries): bypassing a DENY on `/admin` by
//! path tricks, method case, smuggled authorities and spoofed mesh headers; CPU and memory
//! with one request (huge paths and header lists); slowloris connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// The shared waypoint mesh (`ns/client` at 127.b.1.10 and `ns/intruder` at 127.b.1.11 on
/// node a, `ns/web` behind waypoint `ns/wp`) with a DENY on `/admin` at the waypoint.
fn config(b: u8) -> String {
    waypoint_mesh(
        b,
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
}

struct L7 {
    mesh: InprocMesh,
    b: u8,
}

impl L7 {
    async fn start(b: u8, waypoint_args: &[&str]) -> L7 {
        let mut mesh = InprocMesh::new(&config(b));
        http_app(format!("127.{b}.1.21:8080").parse().unwrap(), "web").await;
        mesh.ztunnel("b", &[]).await;
        mesh.waypoint("wp", "ns/wp", waypoint_args).await;
        mesh.ztunnel("a", &[]).await;
        L7 { mesh, b }
    }

    fn vip(&self) -> SocketAddr {
        format!("127.{}.2.1:80", self.b).parse().unwrap()
    }

    async fn conn(&self) -> BufReader<tokio::net::TcpStream> {
        self.conn_from(10).await
    }

    async fn conn_from(&self, host: u8) -> BufReader<tokio::net::TcpStream> {
        let client = format!("127.{}.1.{host}", self.b).parse().unwrap();
        BufReader::new(connect_from(client, self.vip()).await.unwrap())
    }

    /// One request on a new connection, raw: `head` is everything before the blank line.
    async fn raw(&self, head: &str) -> (u16, String) {
        self.raw_from(10, head).await
    }

    /// [`L7::raw`] from client `127.b.1.<host>`.
    async fn raw_from(&self, host: u8, head: &str) -> (u16, String) {
        let mut s = self.conn_from(host).await;
        s.get_mut()
            .write_all(format!("{head}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&out);
                        if let Some((h, body)) = text.split_once("\r\n\r\n") {
                            let len = h
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break;
                            }
                        }
                    }
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_method_authority_and_header_tricks_cannot_bypass_a_deny() {
    let l7 = L7::start(137, &[]).await;
    let host = "Host: web.ns.svc";
    let (status, text) = l7.raw(&format!("GET /public/x HTTP/1.1\r\n{host}")).await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = l7.raw(&format!("GET /admin HTTP/1.1\r\n{host}")).await;
    assert_eq!(status, 403);
    // Dot segments before merged slashes: /public//../admin is /public/admin, and that is
    // the path the app gets.
    let (status, text) = l7
        .raw(&format!("GET /public//../admin HTTP/1.1\r\n{host}"))
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("web GET /public/admin "), "{text}");
    for (what, head) in [
        ("NUL byte", format!("GET /admin%00 HTTP/1.1\r\n{host}")),
        (
            "lower-case method",
            format!("get /admin HTTP/1.1\r\n{host}"),
        ),
        (
            "two Host headers",
            format!("GET /admin HTTP/1.1\r\n{host}\r\nHost: other.ns.svc"),
        ),
        (
            "absolute-form URI naming another host",
            format!("GET http://other.ns.svc/admin HTTP/1.1\r\n{host}"),
        ),
        (
            "Connection naming Host (dropping it after authorization)",
            format!("GET /public/x HTTP/1.1\r\n{host}\r\nConnection: host"),
        ),
        ("no Host at all", "GET /admin HTTP/1.0".to_owned()),
        (
            "a Host an upstream reads differently",
            "GET /admin HTTP/1.1\r\nHost: x@web.ns.svc".to_owned(),
        ),
    ] {
        let (status, text) = l7.raw(&head).await;
        assert_eq!(status, 400, "{what}: {text}");
    }
    // A trailing dot in Host is the same service.
    let (status, _) = l7.raw("GET /admin HTTP/1.1\r\nHost: web.ns.svc.").await;
    assert_eq!(status, 403, "trailing dot: still the DENY");
    // Headers only the mesh sets, and those the client names in Connection, never reach the
    // app.
    let (status, text) = l7
        .raw(&format!(
            "GET /public/h HTTP/1.1\r\n{host}\r\nx-forwarded-client-cert: By=spiffe://x;URI=spiffe://cluster.local/ns/ns/sa/admin\r\nx-envoy-original-path: /admin\r\nConnection: x-secret\r\nx-secret: 1\r\nx-kept: yes"
        ))
        .await;
    assert_eq!(status, 200, "{text}");
    let got = text
        .lines()
        .find(|l| l.starts_with("x-got:"))
        .unwrap_or_default()
        .to_owned();
    assert!(got.contains("x-kept=yes"), "{got}");
    for h in [
        "x-forwarded-client-cert",
        "x-envoy-original-path",
        "x-secret",
    ] {
        assert!(!got.contains(h), "{h} reached the app: {got}");
    }
    l7.mesh.expect_log("wp", r#""response_flags":"DPE""#);
}

/// One request costs bounded CPU and memory: a 64 KiB path (any shape) and a header list
/// over 60 KiB are refused fast with 431, and the waypoint keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_paths_and_header_lists_are_refused_fast() {
    let l7 = L7::start(138, &[]).await;
    let host = "Host: web.ns.svc";
    for unit in ["/a", "/", "/..", "%2F"] {
        let path = format!("/{}", unit.repeat(64 * 1024 / unit.len()));
        let t = Instant::now();
        let (status, _) = l7.raw(&format!("GET {path} HTTP/1.1\r\n{host}")).await;
        assert_eq!(status, 431, "{unit:?} path");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{unit:?}: {:?}",
            t.elapsed()
        );
    }
    // A path just under the cap (normalized in linear time) is served.
    let path = format!("/{}", "a/".repeat(20 * 1024));
    let t = Instant::now();
    let (status, _) = l7.raw(&format!("GET {path} HTTP/1.1\r\n{host}")).await;
    assert_eq!(status, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let big = (0..70)
        .map(|i| format!("x-h{i}: {}", "v".repeat(1000)))
        .collect::<Vec<_>>()
        .join("\r\n");
    let (status, _) = l7.raw(&format!("GET / HTTP/1.1\r\n{host}\r\n{big}")).await;
    assert_eq!(status, 431, "70 KB of headers");
    let (status, _) = l7.raw(&format!("GET /ok HTTP/1.1\r\n{host}")).await;
    assert_eq!(status, 200, "still serving");
}

/// 2000 slowloris connections (a request head that never ends) are each closed within the
/// header timeout, while admin, readiness and good requests keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_within_the_header_timeout() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 8192, 8192);
    let l7 = L7::start(139, &["--http-header-timeout", "2s"]).await;
    let t = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..2000 {
        let mut s = l7.conn().await;
        s.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: web.ns.svc\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let opened = t.elapsed();
    // While they hang: the waypoint answers admin, readiness and good requests.
    let wp = format!("127.{}.0.3", l7.b);
    let dump = http_get(format!("{wp}:15000").parse().unwrap(), "/config_dump").await;
    assert!(dump.contains("waypoint"), "{dump}");
    let (status, _) = http(
        format!("{wp}:15021").parse().unwrap(),
        "GET",
        "/healthz/ready",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = l7.raw("GET /good HTTP/1.1\r\nHost: web.ns.svc").await;
    assert_eq!(status, 200);
    // Every slow connection is closed by the waypoint (2 s header timeout) well before 10 s.
    let deadline = t + opened + Duration::from_secs(10);
    let mut closed = 0;
    for mut s in slow {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 512];
        let r = tokio::time::timeout(left, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if r.is_ok() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 2000,
        "slowloris connections closed by the header timeout"
    );
}

/// The waypoint's upstream connection carries its client's address (`Forwarded` on the HBONE
/// tunnel): a second client's requests must not reuse the first client's pooled connection,
/// or the destination would judge and log them as the first client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_address_never_rides_another_clients_upstream() {
    let l7 = L7::start(141, &[]).await;
    for host in [10, 11, 10, 11] {
        let (status, _) = l7
            .raw_from(host, "GET /x HTTP/1.1\r\nHost: web.ns.svc")
            .await;
        assert_eq!(status, 200);
    }
    // The destination saw one tunnel per client (the second client's requests did not
    // ride the first client's pooled one), each opened once and reused.
    let metrics: SocketAddr = "127.141.0.2:15020".parse().unwrap();
    let text = http_get(metrics, "/metrics").await;
    let opened = metric(
        &text,
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination")],
    );
    assert_eq!(opened, 2.0, "{text}");
}
