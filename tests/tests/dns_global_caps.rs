//! The DNS proxy's proxy-wide bounds (127.226.128.x–127.226.255.x): one listener per pod, so
//! the per-listener caps alone grow with the pods (1024 pods × 256 TCP clients); the
//! `max_forwarded_total` and `max_tcp_connections_total` caps bound all listeners together.
//! An attacker with pods on the node floods through a second listener once the first holds
//! its share: the second gets only what is left of the proxy-wide cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dns_support/mod.rs"]
mod dns_support;

use dns_support::*;

/// Two pods' listeners of one proxy, bound on `ips`.
struct TwoListeners {
    addrs: Vec<SocketAddr>,
    listeners: Vec<Arc<DnsListener>>,
    _stop: tokio_util::sync::DropGuard,
}

async fn two_listeners(ips: [&str; 2], up: SocketAddr, limits: DnsLimits) -> TwoListeners {
    let proxy = proxy(up, limits);
    proxy.publish(mesh_index(), HashMap::new());
    let stop = CancellationToken::new();
    let (mut addrs, mut listeners) = (Vec::new(), Vec::new());
    for ip in ips {
        let (addr, l) = serve(&proxy, Some("ns1"), ip, &stop).await;
        addrs.push(addr);
        listeners.push(l);
    }
    TwoListeners {
        addrs,
        listeners,
        _stop: stop.drop_guard(),
    }
}

/// Sends `n` queries the upstream never answers to `to` from `from`.
async fn flood(from: &UdpSocket, to: SocketAddr, n: usize) {
    for _ in 0..n {
        let q = query("silent.example.", RecordType::A);
        from.send_to(&q.to_vec().unwrap(), to).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn attack_a_second_listener_cannot_exceed_the_proxy_wide_forward_cap() {
    let up = upstream("127.226.128.53").await;
    let limits = DnsLimits {
        max_forwarded: 8,
        max_forwarded_total: 10,
        ..DnsLimits::default()
    };
    let d = two_listeners(["127.226.128.1", "127.226.128.2"], up.addr, limits).await;
    let client = UdpSocket::bind("127.226.129.9:0").await.unwrap();
    // The first pod's listener takes its own cap (8 of the proxy's 10).
    flood(&client, d.addrs[0], 8).await;
    assert_eq!(up.received.load(Ordering::SeqCst), 8);
    // The second pod's listener has 8 of its own but only 2 of the proxy's left.
    flood(&client, d.addrs[1], 8).await;
    assert_eq!(
        up.received.load(Ordering::SeqCst),
        10,
        "at most the proxy-wide cap upstream"
    );
    let over = |i: usize| {
        d.listeners[i]
            .stats()
            .over_forward_cap
            .load(Ordering::Relaxed)
    };
    assert_eq!((over(0), over(1)), (0, 6));
    // Mesh names are answered locally, with no slot: still served during the flood.
    let m = udp_ask_from("127.226.129.10", d.addrs[1], &query("web.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.1")]);
    // After the forward timeout the slots are free again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    flood(&client, d.addrs[1], 1).await;
    assert_eq!(up.received.load(Ordering::SeqCst), 11);
}

#[tokio::test]
async fn attack_a_second_listener_cannot_exceed_the_proxy_wide_tcp_cap() {
    let up = upstream("127.226.130.53").await;
    let limits = DnsLimits {
        max_tcp_connections: 4,
        max_tcp_connections_total: 6,
        ..DnsLimits::default()
    };
    let d = two_listeners(["127.226.130.1", "127.226.130.2"], up.addr, limits).await;
    // Slowloris on both pods' listeners: 4 on the first (its own cap), then 4 on the second.
    let mut idle = Vec::new();
    for addr in [d.addrs[0], d.addrs[1]] {
        for _ in 0..4 {
            // A refused one may be reset before its connect returns: an error then.
            idle.push(TcpStream::connect(addr).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = |i: usize| d.listeners[i].stats().tcp_refused.load(Ordering::Relaxed);
    assert_eq!((refused(0), refused(1)), (0, 2), "6 open in all, at most");
    // The two over the proxy-wide cap are closed at once, the others stay open.
    let mut b = [0u8; 1];
    let mut closed = Vec::new();
    for (i, c) in idle.iter_mut().enumerate() {
        let Ok(c) = c else {
            closed.push(i);
            continue;
        };
        let r = tokio::time::timeout(Duration::from_millis(50), c.read(&mut b)).await;
        if matches!(r, Ok(Ok(0)) | Ok(Err(_))) {
            closed.push(i);
        }
    }
    assert_eq!(closed, vec![6, 7]);
    // The clients leave: the proxy-wide slots are free again for any listener.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = tcp_ask(d.addrs[1], &query("web.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.1")]);
}
