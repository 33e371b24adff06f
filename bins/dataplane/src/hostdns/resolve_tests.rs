//! The resolver against a tiny DNS responder on this part's loopback block (127.228.x.x):
//! no real DNS.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

use super::cache::{Limits, Own, Refused};
use super::resolve::Resolver;
use crate::dns::{Forwarder, HostSockets};

/// The responder: answers by name, counts the queries it received.
struct Responder {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
}

fn answer(q: &Message) -> Option<Message> {
    let query = q.queries.first()?;
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.queries = q.queries.clone();
    let ip = match query.name().to_ascii().as_str() {
        "db.example." => "127.228.1.10",
        "evil.example." => "127.0.0.1",
        "own.example." => "127.228.0.1",
        "silent.example." => return None,
        _ => {
            m.metadata.response_code = ResponseCode::NXDomain;
            return Some(m);
        }
    };
    if query.query_type() == RecordType::A {
        let a = RData::A(A(ip.parse().ok()?));
        m.add_answer(Record::from_rdata(query.name().clone(), 30, a));
    }
    Some(m)
}

async fn responder() -> Option<Responder> {
    let socket = tokio::net::UdpSocket::bind("127.228.0.53:0").await.ok()?;
    let addr = socket.local_addr().ok()?;
    let queries = Arc::new(AtomicUsize::new(0));
    let count = queries.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::Relaxed);
            let reply = Message::from_vec(&buf[..n]).ok().and_then(|q| answer(&q));
            if let Some(bytes) = reply.and_then(|m| m.to_vec().ok()) {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    Some(Responder { addr, queries })
}

fn resolver(up: SocketAddr) -> Resolver {
    Resolver::new(
        Forwarder::new(vec![up], Duration::from_millis(300)),
        Arc::new(HostSockets::default()),
        Own {
            addrs: vec!["127.228.0.1".parse().unwrap_or(Ipv4Addr::LOCALHOST.into())],
            test_loopback: Some((Ipv4Addr::new(127, 228, 0, 0), 16)),
        },
        Limits::default(),
    )
}

// Istio's ztunnel resolves a hostname workload's `hostname` at connect time
// (istio/ztunnel src/state.rs, resolve_on_demand_dns); here A and AAAA are asked, the answer
// cached for its TTL: the second lookup within the TTL sends no query.
#[tokio::test]
async fn resolves_and_caches_for_the_ttl() {
    let Some(up) = responder().await else {
        return;
    };
    let r = resolver(up.addr);
    let first = r.lookup("db.example").await;
    assert_eq!(
        first.as_deref().ok(),
        Some(&["127.228.1.10".parse().unwrap_or(Ipv4Addr::LOCALHOST.into())][..])
    );
    let asked = up.queries.load(Ordering::Relaxed);
    assert_eq!(asked, 2, "one A and one AAAA query");
    assert!(r.lookup("db.example").await.is_ok());
    assert_eq!(
        up.queries.load(Ordering::Relaxed),
        asked,
        "served from the cache"
    );
}

// Istio's ztunnel: a failed lookup is a failed connection (Error::NoResolvedAddresses).
// Attacker: the failure is remembered briefly, so repeated connections do not each query.
#[tokio::test]
async fn nxdomain_fails_and_is_remembered() {
    let Some(up) = responder().await else {
        return;
    };
    let r = resolver(up.addr);
    let e = r.lookup("nx.example").await;
    assert!(
        matches!(&e, Err(Refused::Lookup { reason, .. }) if reason.contains("NXDomain")),
        "{e:?}"
    );
    let asked = up.queries.load(Ordering::Relaxed);
    assert!(r.lookup("nx.example").await.is_err());
    assert_eq!(up.queries.load(Ordering::Relaxed), asked);
}

// Attacker: a responder (or a poisoned record) pointing the hostname at 127.0.0.1 or at the
// proxy's own address must not redirect mesh traffic into the proxy or its node.
#[tokio::test]
async fn answers_into_the_proxy_are_refused() {
    let Some(up) = responder().await else {
        return;
    };
    let r = resolver(up.addr);
    for host in ["evil.example", "own.example"] {
        let e = r.lookup(host).await;
        assert!(matches!(e, Err(Refused::Unsafe { .. })), "{host}: {e:?}");
    }
}

// A silent upstream is a bounded wait (the forwarder's timeout), then a failure.
#[tokio::test]
async fn a_silent_upstream_times_out() {
    let Some(up) = responder().await else {
        return;
    };
    let r = resolver(up.addr);
    let start = tokio::time::Instant::now();
    let e = r.lookup("silent.example").await;
    assert!(matches!(e, Err(Refused::Lookup { .. })), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

// Attacker: a burst of connections to a hostname workload with a cold cache must not become a
// burst of DNS queries: concurrent lookups of one host share one A and one AAAA query.
#[tokio::test]
async fn a_burst_of_lookups_shares_one_query() {
    let Some(up) = responder().await else {
        return;
    };
    let r = Arc::new(resolver(up.addr));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let r = r.clone();
        tasks.spawn(async move { r.lookup("db.example").await.is_ok() });
    }
    while let Some(ok) = tasks.join_next().await {
        assert_eq!(ok.ok(), Some(true));
    }
    assert_eq!(up.queries.load(Ordering::Relaxed), 2);
}

// An abandoned lookup (its connection went away) does not wedge the host: the next lookup asks
// again.
#[tokio::test]
async fn an_abandoned_lookup_leaves_nothing_behind() {
    let Some(up) = responder().await else {
        return;
    };
    let r = resolver(up.addr);
    let gave_up = tokio::time::timeout(Duration::from_millis(50), r.lookup("silent.example")).await;
    assert!(gave_up.is_err());
    let asked = up.queries.load(Ordering::Relaxed);
    let e = r.lookup("silent.example").await;
    assert!(
        matches!(&e, Err(Refused::Lookup { reason, .. }) if reason.contains("no upstream answered")),
        "{e:?}"
    );
    assert!(up.queries.load(Ordering::Relaxed) > asked, "asked again");
}

// A hostname that is no DNS name (empty label, a label over 63 octets) fails without a query.
#[tokio::test]
async fn a_bad_hostname_sends_no_query() {
    let Some(up) = responder().await else {
        return;
    };
    let r = resolver(up.addr);
    let long = format!("{}.example", "a".repeat(64));
    for host in ["a..example", long.as_str()] {
        let e = r.lookup(host).await;
        assert!(
            matches!(&e, Err(Refused::Lookup { reason, .. }) if reason.starts_with("bad name")),
            "{host}: {e:?}"
        );
    }
    assert_eq!(up.queries.load(Ordering::Relaxed), 0);
}
