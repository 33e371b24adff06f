//! Bytes through client → ztunnel A → HBONE/mTLS → ztunnel B → server, with in-process proxy
//! cores ([`mesh_tests::inproc`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

async fn check_one_mib(
    mut s: tokio::net::TcpStream,
    server_payload: &[u8],
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Exchange>,
) {
    let up = random_bytes(MIB);
    let got = exchange(&mut s, &up).await;
    assert_eq!(got.len(), MIB, "client received all bytes");
    assert_eq!(
        sha256(&got),
        sha256(server_payload),
        "server → client intact"
    );
    let ex = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ex.received_len, MIB);
    assert_eq!(ex.received_sha, sha256(&up), "client → server intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_each_way_with_half_close() {
    let net = Net { b: 21 };
    let mut mesh = InprocMesh::new(&net.config());
    let payload = Arc::new(random_bytes(MIB));
    let mut rx = sink_server(net.app(), payload.clone()).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;

    // Through the service VIP listener of node a.
    let s = connect_from(net.client(), net.vip()).await.unwrap();
    check_one_mib(s, &payload, &mut rx).await;

    // Through SOCKS5, by service host name.
    let s = socks5_connect(net.client(), net.socks(), "server.ns.svc", 9000)
        .await
        .unwrap();
    check_one_mib(s, &payload, &mut rx).await;

    // Through SOCKS5, by workload address.
    let s = socks5_connect(net.client(), net.socks(), &net.server().to_string(), 9000)
        .await
        .unwrap();
    check_one_mib(s, &payload, &mut rx).await;

    // Both ends logged the identities of the connection.
    // Both ends wrote a JSON access-log line with the identities and byte counts.
    mesh.expect_log(
        "a",
        r#""src.identity":"spiffe://cluster.local/ns/ns/sa/client""#,
    );
    mesh.expect_log(
        "a",
        r#""dst.identity":"spiffe://cluster.local/ns/ns/sa/server""#,
    );
    mesh.expect_log("a", &format!(r#""bytes_sent":{MIB},"bytes_recv":{MIB}"#));
    mesh.expect_log("b", r#""direction":"inbound""#);
    mesh.expect_log("b", &format!(r#""bytes_sent":{MIB},"bytes_recv":{MIB}"#));
    for p in &mut mesh.procs {
        assert!(p.stop().await, "{} exits cleanly", p.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_connections_share_one_pooled_hbone_connection() {
    let net = Net { b: 22 };
    let mut mesh = InprocMesh::new(&net.config());
    let accepted = echo_server(net.app()).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;

    let mut conns = Vec::new();
    for i in 0..100 {
        conns.push(tokio::spawn(async move {
            let mut s = connect_from(net.client(), net.vip()).await.unwrap();
            // One round trip proves the tunnel is up before all 100 are counted.
            let hello = format!("hello {i}\n");
            s.write_all(hello.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; hello.len()];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, hello.as_bytes());
            s
        }));
    }
    let mut streams = Vec::new();
    for c in conns {
        streams.push(c.await.unwrap());
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 100);
    let hbone_conns = established_to(net.hbone());
    assert!(
        (1..=2).contains(&hbone_conns),
        "100 concurrent tunnels ride {hbone_conns} HBONE connections"
    );
    let futs: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                let data = random_bytes(64 * 1024 + i);
                let back = exchange(&mut s, &data).await;
                assert_eq!(sha256(&back), sha256(&data), "conn {i} intact");
            })
        })
        .collect();
    for f in futs {
        f.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_local_workloads_may_use_a_node() {
    let net = Net { b: 23 };
    let mut mesh = InprocMesh::new(&net.config());
    let accepted = echo_server(net.app()).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;
    // 127.23.1.99 is no workload: node a refuses to act for it.
    let stranger = "127.23.1.99".parse().unwrap();
    let err = socks5_connect(stranger, net.socks(), "server.ns.svc", 9000)
        .await
        .unwrap_err();
    assert_eq!(err, 0x02, "SOCKS5 'not allowed'");
    let mut s = connect_from(stranger, net.vip()).await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        s.read(&mut buf).await.unwrap_or(0),
        0,
        "VIP connection closed"
    );
    // An unknown host name is unreachable.
    let err = socks5_connect(net.client(), net.socks(), "nope.ns.svc", 9000)
        .await
        .unwrap_err();
    assert_eq!(err, 0x04);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    mesh.expect_log("a", "not a workload of this node");
}
