use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::time::Instant;

use super::cache::*;

use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn own() -> Own {
    Own {
        addrs: vec![ip("127.228.0.1"), ip("10.228.0.7")],
        test_loopback: None,
    }
}

fn limits() -> Limits {
    Limits {
        entries: 4,
        max_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
    }
}

// Attacker: a hostname workload's DNS answer must never redirect mesh traffic into the proxy
// or its node: loopback, unspecified, link-local (169.254.169.254 is the cloud metadata
// server), the node's own address, and the same through IPv4-mapped IPv6 are refused.
#[test]
fn unsafe_answers_are_refused() {
    for (a, why) in [
        ("127.0.0.1", "loopback"),
        ("127.228.9.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.228.0.7", "the proxy's own address"),
        ("::ffff:10.228.0.7", "the proxy's own address"),
        ("224.0.0.1", "multicast or broadcast"),
        ("255.255.255.255", "multicast or broadcast"),
        ("ff02::1", "multicast"),
    ] {
        assert_eq!(unsafe_reason(ip(a), &own()), Some(why), "{a}");
        let r = check_answer("db.example.com", &[ip("10.9.0.1"), ip(a)], &own());
        assert!(
            matches!(r, Err(Refused::Unsafe { addr, .. }) if addr == ip(a)),
            "{a}: {r:?}"
        );
    }
    for a in ["10.9.0.1", "192.0.2.10", "2001:db8::1", "::ffff:10.9.0.1"] {
        assert_eq!(unsafe_reason(ip(a), &own()), None, "{a}");
    }
}

// Istio's ztunnel fails the connection when the lookup yields no address
// (src/state.rs: `EmptyResolvedAddresses`).
#[test]
fn an_empty_answer_is_refused() {
    assert_eq!(
        check_answer("db.example.com", &[], &own()),
        Err(Refused::Empty {
            host: "db.example.com".into()
        })
    );
}

// Istio's ztunnel (src/state.rs, resolve_on_demand_dns): "prefer to match the IP family of the
// downstream request", else any address.
#[test]
fn pick_prefers_the_downstream_family() {
    let both = [ip("10.9.0.1"), ip("2001:db8::1"), ip("10.9.0.2")];
    for r in 0..10 {
        assert!(pick(&both, false, r).is_some_and(|a| a.is_ipv4()));
        assert_eq!(pick(&both, true, r), Some(ip("2001:db8::1")));
    }
    let v4 = [ip("10.9.0.1")];
    assert_eq!(pick(&v4, true, 7), Some(ip("10.9.0.1")));
    assert_eq!(pick(&[], true, 7), None);
    let seen: std::collections::HashSet<_> =
        (0..10).filter_map(|r| pick(&both, false, r)).collect();
    assert_eq!(seen.len(), 2, "both IPv4 addresses are used: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn answers_live_their_ttl_capped() {
    let mut c = Cache::new(limits());
    let t0 = Instant::now();
    let ok = c.record(
        "a.example",
        Ok((vec![ip("10.9.0.1")], Duration::from_secs(30))),
        &own(),
        t0,
    );
    assert!(ok.is_ok());
    assert!(c.get("a.example", t0 + Duration::from_secs(29)).is_some());
    assert!(c.get("a.example", t0 + Duration::from_secs(30)).is_none());
    // A TTL of a day is kept max_ttl only.
    let _ = c.record(
        "b.example",
        Ok((vec![ip("10.9.0.2")], Duration::from_secs(86_400))),
        &own(),
        t0,
    );
    assert!(c.get("b.example", t0 + Duration::from_secs(59)).is_some());
    assert!(c.get("b.example", t0 + Duration::from_secs(60)).is_none());
    // TTL 0: used once, never cached.
    let z = c.record(
        "z.example",
        Ok((vec![ip("10.9.0.3")], Duration::ZERO)),
        &own(),
        t0,
    );
    assert!(z.is_ok());
    assert!(c.get("z.example", t0).is_none());
}

// Attacker: failures (NXDOMAIN, refused answers) are remembered briefly so one client cannot
// make each of its connections a DNS query; an unsafe answer is cached as refused, whatever
// its TTL.
#[tokio::test(start_paused = true)]
async fn failures_are_remembered_briefly() {
    let mut c = Cache::new(limits());
    let t0 = Instant::now();
    let nx = Refused::Empty {
        host: "nx.example".into(),
    };
    let _ = c.record("nx.example", Err(nx.clone()), &own(), t0);
    assert_eq!(
        c.get("nx.example", t0 + Duration::from_secs(4)),
        Some(Err(nx))
    );
    assert!(c.get("nx.example", t0 + Duration::from_secs(5)).is_none());
    let bad = c.record(
        "evil.example",
        Ok((vec![ip("127.0.0.1")], Duration::from_secs(3600))),
        &own(),
        t0,
    );
    assert!(matches!(bad, Err(Refused::Unsafe { .. })));
    assert!(c.get("evil.example", t0 + Duration::from_secs(4)).is_some());
    assert!(c.get("evil.example", t0 + Duration::from_secs(5)).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_full_cache_drops_expired_then_soonest() {
    let mut c = Cache::new(limits());
    let t0 = Instant::now();
    for (i, ttl) in [10u64, 50, 40, 30].into_iter().enumerate() {
        let host = format!("h{i}.example");
        let _ = c.record(
            &host,
            Ok((vec![ip("10.9.0.1")], Duration::from_secs(ttl))),
            &own(),
            t0,
        );
    }
    let _ = c.record(
        "new.example",
        Ok((vec![ip("10.9.0.1")], Duration::from_secs(60))),
        &own(),
        t0,
    );
    assert_eq!(c.len(), 4);
    assert!(
        c.get("h0.example", t0).is_none(),
        "the soonest to expire went"
    );
    assert!(c.get("new.example", t0).is_some());
    // After 35 s, h3 (30 s) has expired: it goes, the others stay.
    let t1 = t0 + Duration::from_secs(35);
    let _ = c.record(
        "newer.example",
        Ok((vec![ip("10.9.0.1")], Duration::from_secs(60))),
        &own(),
        t1,
    );
    assert!(c.get("h1.example", t1).is_some() && c.get("h2.example", t1).is_some());
    assert!(c.get("h3.example", t1).is_none());
}

proptest! {
    // Attacker: any stream of lookups (many distinct names, long TTLs, failures) keeps the
    // cache within its entry cap, and a hit never outlives max_ttl.
    #[test]
    fn the_cache_stays_bounded(ops in proptest::collection::vec((0u16..500, 0u64..100_000, any::<bool>(), 0u64..200), 1..400)) {
        let mut c = Cache::new(limits());
        let t0 = Instant::now();
        let mut now = t0;
        for (name, ttl, fail, step) in ops {
            now += Duration::from_secs(step);
            let host = format!("h{name}.example");
            let answer = if fail {
                Err(Refused::Empty { host: host.clone() })
            } else {
                Ok((vec![ip("10.9.0.1")], Duration::from_secs(ttl)))
            };
            let _ = c.record(&host, answer, &own(), now);
            prop_assert!(c.len() <= 4);
            prop_assert!(c.get(&host, now + Duration::from_secs(60)).is_none());
        }
    }
}
