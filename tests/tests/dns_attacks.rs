//! The DNS proxy as an attacker sees it (127.225.x.x, `dns_support`): a query flood from one
//! client against the forwarded-query cap, forged upstream answers, garbage and reflection
//! attempts, TCP clients that hold connections open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dns_support/mod.rs"]
mod dns_support;

use dns_support::*;

#[tokio::test]
async fn attack_query_flood_stays_within_the_forward_cap() {
    let up = upstream("127.225.0.53").await;
    let limits = DnsLimits {
        max_forwarded: 8,
        ..DnsLimits::default()
    };
    let d = dns("127.225.0.8", Some("ns1"), mesh_index(), up.addr, limits).await;
    // One client floods names the upstream never answers: each would hold a task, a socket
    // and a buffer for the whole forward timeout.
    let s = Arc::new(UdpSocket::bind("127.225.1.9:0").await.unwrap());
    let reader = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut servfail = 0;
            let mut buf = vec![0u8; 4096];
            // Every answer comes before the forward timeout (800 ms): none arrives later.
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(400), s.recv(&mut buf)).await
            {
                let m = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
                servfail += 1;
            }
            servfail
        })
    };
    // In bursts of 50, so the kernel's socket buffers drop nothing.
    for _ in 0..8 {
        for _ in 0..50 {
            let q = query("silent.example.", RecordType::A);
            s.send_to(&q.to_vec().unwrap(), d.addr).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // All but the cap are answered SERVFAIL at once.
    assert_eq!(reader.await.unwrap(), 392);
    assert_eq!(
        up.received.load(Ordering::SeqCst),
        8,
        "at most the cap upstream"
    );
    let over = d.listener.stats().over_forward_cap.load(Ordering::Relaxed);
    assert_eq!(over, 392);
    // The mesh's own names are still answered during the flood.
    let m = udp_ask(d.addr, &query("web.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.1")]);
}

#[tokio::test]
async fn attack_forged_upstream_answers_are_dropped() {
    let (_up, d) = ns1_dns("127.225.0.9").await;
    // RFC 5452: an answer from another address (dropped by the connected socket) or with
    // another ID (dropped by the check) never reaches the client; the real one does.
    let m = udp_ask(d.addr, &query("spoof.example.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.9")]);
    assert!(d.proxy.forwarder().dropped_answers() >= 1);
}

#[tokio::test]
async fn attack_garbage_and_responses_get_no_answer() {
    let (_up, d) = ns1_dns("127.225.0.10").await;
    let s = UdpSocket::bind("127.225.1.9:0").await.unwrap();
    let mut resp = query("web.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    for bytes in [
        vec![0xff; 3],
        vec![0u8; 5000],
        (0..200u8).collect(),
        resp.to_vec().unwrap(),
    ] {
        s.send_to(&bytes, d.addr).await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let r = tokio::time::timeout(Duration::from_millis(300), s.recv(&mut buf)).await;
    assert!(r.is_err(), "no reflection of garbage");
    assert!(d.listener.stats().dropped.load(Ordering::Relaxed) >= 3);
    // Still serving.
    let m = udp_ask(d.addr, &query("web.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.1")]);
}

#[tokio::test]
async fn attack_tcp_idle_and_connection_cap() {
    let up = upstream("127.225.0.53").await;
    let limits = DnsLimits {
        max_tcp_connections: 4,
        tcp_idle_timeout: Duration::from_millis(300),
        ..DnsLimits::default()
    };
    let d = dns("127.225.0.12", Some("ns1"), mesh_index(), up.addr, limits).await;
    // Slowloris: connections that never send a query hold a slot until the idle timeout.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(d.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fifth = TcpStream::connect(d.addr).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(1), fifth.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "over the cap: closed at once"
    );
    assert!(d.listener.stats().tcp_refused.load(Ordering::Relaxed) >= 1);
    // After the idle timeout the slots are free again.
    for mut c in idle {
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "idle client closed");
    }
    let m = tcp_ask(d.addr, &query("web.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.1")]);
}
