//! A workload must not reach its own proxy's admin, metrics, readiness or data listeners
//! through the data path (reproduced on the demo: `curl --socks5 127.0.1.1:15080 -X POST
//! http://127.0.1.1:15000/quitquitquit` stopped node-a's ztunnel).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// SOCKS5 reply code "connection not allowed by ruleset".
const NOT_ALLOWED: u8 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_cannot_quit_its_ztunnel_through_socks5() {
    let net = Net { b: 130 };
    let mut mesh = TestMesh::new(&net.config());
    let a = net.node_a();
    mesh.ztunnel("a", &[]);

    // Admin, metrics, readiness and SOCKS5 itself, by address and in disguise (IPv4-mapped,
    // unspecified), are refused as "not allowed" before any byte reaches them.
    for target in [
        format!("{a}:15000"),
        format!("{a}:15020"),
        format!("{a}:15021"),
        format!("{a}:15080"),
        "0.0.0.0:15000".to_owned(),
        format!("::ffff:{a}:15000"),
    ] {
        let (host, port) = target.rsplit_once(':').unwrap();
        let r = socks5_connect(net.client(), net.socks(), host, port.parse().unwrap()).await;
        assert_eq!(r.err(), Some(NOT_ALLOWED), "SOCKS5 to {target}");
    }
    mesh.expect_log("a", "destination is this proxy's own listener");

    // The ztunnel still serves: admin answers the test (a local tool, not the data path).
    let admin: SocketAddr = format!("{a}:15000").parse().unwrap();
    let dump = http_get(admin, "/config_dump").await;
    assert!(dump.contains("\"workloads\""), "{dump}");

    // And the endpoint the attack aimed at does work for a local tool: the test can fail.
    let (status, _) = http(admin, "POST", "/quitquitquit").await.unwrap();
    assert_eq!(status, 200);
    let p = mesh.procs.last_mut().unwrap();
    assert!(
        p.wait_exit(Duration::from_secs(10)).is_some(),
        "ztunnel exits on a local /quitquitquit"
    );
}

/// Mutating admin endpoints refuse requests without a loopback `Host` or with an `Origin`, and
/// a raw SOCKS5 request for the admin port by host name `localhost` is not resolved to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_by_name_cannot_reach_admin() {
    let net = Net { b: 131 };
    let mut mesh = TestMesh::new(&net.config());
    mesh.ztunnel("a", &[]);
    let r = socks5_connect(net.client(), net.socks(), "localhost", 15000).await;
    assert!(r.is_err(), "localhost is not a mesh host: refused");
    let admin: SocketAddr = format!("{}:15000", net.node_a()).parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"POST /quitquitquit HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let p = mesh.procs.last_mut().unwrap();
    assert!(
        p.wait_exit(Duration::from_millis(500)).is_none(),
        "still running"
    );
}
