//! A cut plain connection looks cut: when the destination of a passthrough (an address outside
//! the mesh) resets mid-transfer, the client is reset too, never given a clean, short EOF.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_by_a_passthrough_destination_reaches_the_client_as_a_reset() {
    let net = Net { b: 142 };
    let mut mesh = InprocMesh::new(&net.config());
    // Outside the mesh: sends 256 KiB, then resets its connection.
    let outside: SocketAddr = "127.142.3.50:9100".parse().unwrap();
    let l = tokio::net::TcpListener::bind(outside).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(&vec![7u8; 256 * 1024]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = s.set_zero_linger();
            });
        }
    });
    mesh.ztunnel("a", &[]).await;
    let mut s = socks5_connect(net.client(), net.socks(), "127.142.3.50", 9100)
        .await
        .unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(
        r.is_err(),
        "a reset destination must reach the client as a reset, got a clean end after {} bytes",
        got.len()
    );
}
