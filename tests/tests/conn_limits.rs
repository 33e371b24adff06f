//! A connection flood beyond the proxy's cap is refused at accept (an RST, counted), while
//! admin, readiness and good connections keep working and memory stays bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

use mesh_tests::*;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_beyond_the_cap_is_refused_fast_and_admin_answers() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 8192, 8192);
    let net = Net { b: 140 };
    let mut mesh = TestMesh::new(&net.config());
    echo_server(net.app()).await;
    mesh.ztunnel("b", &["--max-connections", "200"]);
    mesh.ztunnel("a", &[]);
    let rss_before = mesh.procs[0].rss();

    // 1200 connections to b's HBONE port that never start TLS (cap + 1000).
    let flooder = format!("127.{}.1.99", net.b).parse().unwrap();
    let mut flood = Vec::new();
    // Extras are reset at once (not held until a timeout): some already while connecting.
    let mut reset = 0;
    for _ in 0..1200 {
        match connect_from(flooder, net.hbone()).await {
            Ok(s) => flood.push(s),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                reset += 1;
            }
        }
    }
    let t = Instant::now();
    for s in &mut flood {
        let mut b = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
            reset += 1;
        }
    }
    assert!(reset >= 1000, "{reset} of 1200 refused");
    assert!(t.elapsed() < Duration::from_secs(30));

    // Admin and readiness answer during the flood; memory stays bounded.
    let b_admin: SocketAddr = format!("{}:15000", net.node_b()).parse().unwrap();
    assert!(
        http_get(b_admin, "/config_dump")
            .await
            .contains("workloads")
    );
    let ready: SocketAddr = format!("{}:15021", net.node_b()).parse().unwrap();
    assert_eq!(http(ready, "GET", "/healthz/ready").await.unwrap().0, 200);
    let rss = mesh.procs[0].rss();
    assert!(
        rss < rss_before + 32 * 1024 * 1024,
        "RSS {} MiB after the flood (before {} MiB)",
        rss >> 20,
        rss_before >> 20
    );
    let metrics: SocketAddr = format!("{}:15020", net.node_b()).parse().unwrap();
    let text = http_get(metrics, "/metrics").await;
    let refused = metric(
        &text,
        "mesh_connections_refused_total",
        &[("listener", "hbone"), ("limit", "proxy")],
    );
    assert!(refused >= 1000.0, "{text}");

    // Once the flood is gone, the permits come back: a good connection works again.
    drop(flood);
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(mut s) = connect_from(net.client(), net.vip()).await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"after the flood").await;
            let _ = s.shutdown().await;
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            if got == b"after the flood" {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "good connections work after the flood");
}
