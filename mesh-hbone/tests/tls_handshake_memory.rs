//! Connections that never finish their TLS handshake cost little memory each, and the
//! handshake timeout closes them. Alone in its test binary: it measures the process's RSS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_hbone::accept_tls;
use mesh_identity::{CertStore, LocalCa, SpiffeId, TrustDomain, server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 2000;
/// What one unfinished handshake may cost (rustls' state and its first record, the task, the
/// socket); before the fix each also had a 64 KiB read buffer.
const MAX_BYTES_PER_CONNECTION: usize = 16 * 1024;

fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The start of a ClientHello: a handshake record announcing 512 bytes, of which 300 come.
fn partial_client_hello() -> Vec<u8> {
    let mut b = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    b.extend([0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
    b.extend(std::iter::repeat_n(0x2a, 300 - b.len()));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_tls_handshakes_cost_little_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
    let bundle = ca.trust_bundle().unwrap();
    let td: TrustDomain = "cluster.local".parse().unwrap();
    let certs = CertStore::fixed(
        ca.issue(&SpiffeId::new(&td, "ns", "server").unwrap())
            .unwrap(),
    );
    let tls = server_config(certs, &bundle, vec![td]).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let timeout = Duration::from_secs(4);
    let in_handshake = Arc::new(AtomicUsize::new(0));
    let timed_out = Arc::new(AtomicUsize::new(0));
    let (h, t) = (in_handshake.clone(), timed_out.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (tls, h, t) = (tls.clone(), h.clone(), t.clone());
            tokio::spawn(async move {
                h.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = accept_tls(tcp, tls, timeout).await
                    && e.to_string().contains("timed out")
                {
                    t.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    // Warm up allocator arenas and the runtime with a few connections first.
    let hello = partial_client_hello();
    let mut warm = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&hello).await.unwrap();
        warm.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss();
    let started = tokio::time::Instant::now();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&hello).await.unwrap();
        clients.push(s);
    }
    while in_handshake.load(Ordering::SeqCst) < CONNECTIONS + 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss();
    let per = after.saturating_sub(before) / CONNECTIONS;
    eprintln!(
        "{CONNECTIONS} unfinished handshakes: RSS {} KiB -> {} KiB, {per} bytes each",
        before / 1024,
        after / 1024
    );
    assert!(
        per < MAX_BYTES_PER_CONNECTION,
        "{per} bytes per unfinished handshake"
    );

    // The handshake timeout closes every one of them: each client reads EOF.
    let mut closed = 0;
    for mut s in clients.into_iter().chain(warm) {
        let mut buf = [0u8; 64];
        let left = (started + timeout + Duration::from_secs(5))
            .saturating_duration_since(tokio::time::Instant::now());
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(left, s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, CONNECTIONS + 50, "closed by the handshake timeout");
    assert_eq!(timed_out.load(Ordering::SeqCst), CONNECTIONS + 50);
}
