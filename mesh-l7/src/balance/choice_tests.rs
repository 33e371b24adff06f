//! Endpoint choice: locality tiers, distribute, consistent hashing, warmup, previous hosts,
//! and the compile of the `loadBalancer` fields.

use super::hash::{HashSource, Key, Table, TableKind, hash_bytes};
use super::locality::{Distribute, Locality, Mode, Place, Placement, Rank, Scope};
use super::pick::{Draw, Endpoints, Layout, pick};
use super::*;

struct View {
    healthy: Vec<bool>,
    tried: Vec<bool>,
    cost: Vec<f64>,
    warmth: Vec<f64>,
}

impl View {
    fn new(n: usize) -> View {
        View {
            healthy: vec![true; n],
            tried: vec![false; n],
            cost: vec![0.0; n],
            warmth: vec![1.0; n],
        }
    }
}

impl Endpoints for View {
    fn healthy(&self, i: usize) -> bool {
        self.healthy[i]
    }
    fn tried(&self, i: usize) -> bool {
        self.tried[i]
    }
    fn cost(&self, i: usize) -> f64 {
        self.cost[i]
    }
    fn warmth(&self, i: usize) -> f64 {
        self.warmth[i]
    }
}

fn loc(s: &str) -> Locality {
    Locality::parse(s).unwrap()
}

fn place(l: &Locality) -> Place<'_> {
    Place {
        locality: Some(l),
        ..Place::default()
    }
}

fn draw(n: u64) -> Draw {
    Draw {
        turn: n as usize,
        seed: hash_bytes(&[&n.to_le_bytes()]),
        hash: None,
    }
}

/// Endpoints: 0 same subzone, 1 same zone, 2 same region, 3 failover region, 4 elsewhere.
fn five() -> (Locality, Vec<Locality>) {
    let here = loc("us-east/a/1");
    let there = [
        "us-east/a/1",
        "us-east/a/2",
        "us-east/b/1",
        "eu/x/1",
        "ap/y/1",
    ]
    .map(loc)
    .to_vec();
    (here, there)
}

fn ranks(p: &Placement, here: &Locality, there: &[Locality]) -> Vec<Rank> {
    there
        .iter()
        .map(|t| p.rank(&place(here), &place(t)))
        .collect()
}

#[test]
fn partly_ejected_tier_spills_as_envoy() {
    // Envoy priority levels (arch_overview/upstream/load_balancing/priority): with the
    // overprovisioning factor 1.4, a tier with 2 of 4 endpoints healthy takes 70% of the
    // traffic and the next tier the rest; with 3 of 4 (75% * 1.4 > 100%) it takes all.
    let ranks: Vec<Rank> = [0, 0, 0, 0, 1, 1]
        .iter()
        .map(|t| Rank {
            tier: *t,
            group: None,
        })
        .collect();
    let layout = Layout::build(&ranks, None, None, &[]);
    let mut v = View::new(6);
    v.healthy[0] = false;
    v.healthy[1] = false;
    let near = (0..10_000)
        .filter(|n| pick(&layout, LoadBalancer::Random, &v, draw(*n)).unwrap() < 4)
        .count();
    assert!((6_700..=7_300).contains(&near), "{near}");
    v.healthy[1] = true;
    assert!((0..1_000).all(|n| pick(&layout, LoadBalancer::Random, &v, draw(n)).unwrap() < 4));
}

// Istio locality failover (istio.io docs/tasks/traffic-management/locality-load-balancing/
// failover, and pilot's applyLocalityFailover): same subzone, zone, region, the `failover`
// region, then the rest; a tier is left only when its endpoints are ejected.
#[test]
fn failover_goes_tier_by_tier() {
    let (here, there) = five();
    let p = Placement::Failover {
        failover: vec![("us-east".into(), "eu".into())],
    };
    let layout = Layout::build(&ranks(&p, &here, &there), None, None, &[]);
    let mut v = View::new(5);
    for expect in 0..5 {
        for n in 0..50 {
            assert_eq!(
                pick(&layout, LoadBalancer::RoundRobin, &v, draw(n)),
                Some(expect)
            );
        }
        v.healthy[expect] = false;
    }
    // All ejected: Envoy's panic mode spreads over every endpoint.
    assert!(pick(&layout, LoadBalancer::Random, &v, draw(1)).is_some());
}

// ztunnel `load_balance` (workload API LoadBalancing): FAILOVER ranks by the longest matching
// prefix of the routing preference; STRICT drops every endpoint not matching all scopes.
#[test]
fn strict_never_leaves_the_tier() {
    let (here, there) = five();
    let p = Placement::Preference {
        scopes: vec![Scope::Region, Scope::Zone],
        mode: Mode::Strict,
    };
    let layout = Layout::build(&ranks(&p, &here, &there), None, None, &[]);
    assert_eq!(layout.len(), 2, "only same-zone endpoints 0 and 1");
    let mut v = View::new(5);
    v.healthy[0] = false;
    v.healthy[1] = false;
    for n in 0..20 {
        let i = pick(&layout, LoadBalancer::Random, &v, draw(n)).unwrap();
        assert!(i < 2, "strict: panic within the tier only, got {i}");
    }
    let failover = Placement::Preference {
        scopes: vec![Scope::Region, Scope::Zone],
        mode: Mode::Failover,
    };
    let r = ranks(&failover, &here, &there);
    assert_eq!(
        r.iter().map(|r| r.tier).collect::<Vec<_>>(),
        [0, 0, 1, 2, 2]
    );
}

// Istio localityLbSetting.distribute: the first rule whose `from` matches the proxy; `to`
// weights split traffic between localities, localities not named get none.
#[test]
fn distribute_weights_within_tolerance() {
    let (here, there) = five();
    let p = Placement::Distribute(vec![
        Distribute {
            from: "ap/*".into(),
            to: vec![("ap/*".into(), 100)],
        },
        Distribute {
            from: "us-east/a/*".into(),
            to: vec![("us-east/a/*".into(), 80), ("eu/*".into(), 20)],
        },
    ]);
    let w = p.weights(&place(&here)).unwrap();
    let layout = Layout::build(&ranks(&p, &here, &there), Some(&w), None, &[]);
    let v = View::new(5);
    let mut counts = [0usize; 5];
    for n in 0..10_000 {
        counts[pick(&layout, LoadBalancer::Random, &v, draw(n)).unwrap()] += 1;
    }
    let zone_a = counts[0] + counts[1];
    assert!((7_700..=8_300).contains(&zone_a), "{counts:?}");
    assert!((1_700..=2_300).contains(&counts[3]), "{counts:?}");
    assert_eq!(counts[2] + counts[4], 0, "{counts:?}");
}

fn ids(n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| hash_bytes(&[format!("10.0.0.{i}:80").as_bytes()]))
        .collect()
}

fn hashed(n: u64, key: u64) -> Draw {
    Draw {
        hash: Some(key),
        ..draw(n)
    }
}

// Envoy ring hash / Maglev (arch_overview/upstream/load_balancing/load_balancers): a key
// sticks to its endpoint; when one leaves, only its keys move (about 1/N).
#[test]
fn hash_affinity_and_minimal_movement() {
    for kind in [TableKind::Ring(1024), TableKind::Maglev(65537)] {
        let all = ids(10);
        let ranks = vec![
            Rank {
                tier: 0,
                group: None
            };
            10
        ];
        let layout = Layout::build(&ranks, None, Some(kind), &all);
        let v = View::new(10);
        let keys: Vec<u64> = (0..1000u64)
            .map(|k| hash_bytes(&[&k.to_be_bytes()]))
            .collect();
        let first: Vec<usize> = keys
            .iter()
            .map(|k| pick(&layout, LoadBalancer::RoundRobin, &v, hashed(0, *k)).unwrap())
            .collect();
        for (n, k) in keys.iter().enumerate() {
            let again = pick(
                &layout,
                LoadBalancer::RoundRobin,
                &v,
                hashed(n as u64 + 7, *k),
            );
            assert_eq!(again, Some(first[n]), "{kind:?}: affinity");
        }
        // Endpoint 3 leaves the config: a new layout over the other nine, same ids.
        let nine: Vec<u64> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, x)| *x)
            .collect();
        let layout9 = Layout::build(&ranks[..9], None, Some(kind), &nine);
        let v9 = View::new(9);
        let moved = keys
            .iter()
            .zip(&first)
            .filter(|(k, was)| {
                let now = pick(&layout9, LoadBalancer::RoundRobin, &v9, hashed(0, **k)).unwrap();
                let now = if now >= 3 { now + 1 } else { now };
                now != **was
            })
            .count();
        let on3 = first.iter().filter(|i| **i == 3).count();
        // Ring: exactly the keys of 3 move. Maglev: ~1/N plus a little churn (the paper's
        // "minimal disruption" is approximate).
        assert!(moved >= on3, "{kind:?}: {moved} < {on3}");
        assert!(
            moved <= on3 + 30,
            "{kind:?}: moved {moved} of 1000, endpoint 3 had {on3}"
        );
        assert!(
            (50..=160).contains(&on3),
            "{kind:?}: balanced, endpoint 3 had {on3}"
        );
        // Ejected instead of removed: the same bound.
        let mut ejected = View::new(10);
        ejected.healthy[3] = false;
        let moved = keys
            .iter()
            .zip(&first)
            .filter(|(k, was)| {
                pick(&layout, LoadBalancer::RoundRobin, &ejected, hashed(0, **k)) != Some(**was)
            })
            .count();
        assert_eq!(
            moved, on3,
            "{kind:?}: only the ejected endpoint's keys move"
        );
    }
}

// Attacker: many distinct keys spread over endpoints as hashing allows (no endpoint gets far
// more than its share), and hashing a key reads it in place (no per-key state is kept).
#[test]
fn attacker_cannot_pin_beyond_hashing() {
    let all = ids(4);
    let ranks = vec![
        Rank {
            tier: 0,
            group: None
        };
        4
    ];
    let layout = Layout::build(&ranks, None, Some(TableKind::Maglev(65537)), &all);
    let v = View::new(4);
    let src = HashSource::Header(http::HeaderName::from_static("x-user"));
    let mut counts = [0usize; 4];
    for k in 0..20_000u32 {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", k.to_string().parse().unwrap());
        let Key::Hash(key) = src.key(&h, None, std::net::Ipv4Addr::LOCALHOST.into(), 0) else {
            panic!("a header key")
        };
        counts[pick(&layout, LoadBalancer::RoundRobin, &v, hashed(0, key)).unwrap()] += 1;
    }
    assert!(
        counts.iter().all(|c| (4_000..=6_000).contains(c)),
        "{counts:?}"
    );
    // One key repeated pins only what one key may pin: its endpoint, and with it ejected the
    // next one, never an ejected endpoint.
    let mut ejected = View::new(4);
    let mut h = http::HeaderMap::new();
    h.insert("x-user", "pinned".parse().unwrap());
    let Key::Hash(key) = src.key(&h, None, std::net::Ipv4Addr::LOCALHOST.into(), 0) else {
        panic!()
    };
    let target = pick(&layout, LoadBalancer::RoundRobin, &ejected, hashed(0, key)).unwrap();
    ejected.healthy[target] = false;
    assert_ne!(
        pick(&layout, LoadBalancer::RoundRobin, &ejected, hashed(0, key)),
        Some(target)
    );
}

// Envoy previous_hosts retry predicate: a retry avoids the hosts already tried when another
// is available, and reuses one when none is.
#[test]
fn retries_avoid_tried_endpoints() {
    let layout = Layout::build(
        &[Rank {
            tier: 0,
            group: None,
        }; 3],
        None,
        None,
        &[],
    );
    let mut v = View::new(3);
    v.tried[0] = true;
    v.tried[1] = true;
    for n in 0..30 {
        assert_eq!(
            pick(&layout, LoadBalancer::LeastRequest, &v, draw(n)),
            Some(2)
        );
    }
    v.tried[2] = true;
    assert!(pick(&layout, LoadBalancer::LeastRequest, &v, draw(1)).is_some());
}

// Envoy slow start: a warming endpoint gets about its factor of a warm one's share.
#[test]
fn warming_endpoint_gets_its_share() {
    let layout = Layout::build(
        &[Rank {
            tier: 0,
            group: None,
        }; 2],
        None,
        None,
        &[],
    );
    for lb in [LoadBalancer::RoundRobin, LoadBalancer::LeastRequest] {
        let mut v = View::new(2);
        v.warmth[1] = 0.25;
        let mut counts = [0usize; 2];
        for n in 0..8_000 {
            counts[pick(&layout, lb, &v, draw(n)).unwrap()] += 1;
        }
        let share = counts[1] as f64 / counts[0] as f64;
        assert!((0.1..=0.45).contains(&share), "{lb:?}: {counts:?}");
    }
}

#[test]
fn cookie_is_generated_when_absent_with_ttl() {
    let src = HashSource::Cookie {
        name: "session".into(),
        path: Some("/".into()),
        ttl: Some(std::time::Duration::from_secs(60)),
    };
    let ip = std::net::Ipv4Addr::LOCALHOST.into();
    assert_eq!(
        src.key(&http::HeaderMap::new(), None, ip, 42),
        Key::NewCookie(42)
    );
    let (set, key) = src.new_cookie(42).unwrap();
    assert_eq!(
        set,
        "session=\"000000000000002a\"; Max-Age=60; Path=/; HttpOnly"
    );
    // The client sends it back: the same key.
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        "a=b; session=\"000000000000002a\"".parse().unwrap(),
    );
    assert_eq!(src.key(&h, None, ip, 7), Key::Hash(key));
    let no_ttl = HashSource::Cookie {
        name: "session".into(),
        path: None,
        ttl: None,
    };
    assert_eq!(no_ttl.key(&http::HeaderMap::new(), None, ip, 1), Key::None);
    let q = HashSource::Query("u".into());
    assert!(matches!(q.key(&h, Some("x=1&u=7"), ip, 0), Key::Hash(_)));
    assert_eq!(q.key(&h, Some("x=1"), ip, 0), Key::None);
}

proptest::proptest! {
    // Whatever the health, tries and seed: a pick is in the layout, never a STRICT-excluded
    // endpoint, a healthy untried one when one exists, never nearer than the nearest tier
    // with a healthy endpoint, and in that tier when it is healthy enough to take all the
    // load (Envoy: at least 1/1.4 of it healthy) and has an untried endpoint.
    #[test]
    fn pick_prefers_the_nearest_eligible_tier(
        tiers in proptest::collection::vec(0u8..4, 1..12),
        healthy in proptest::collection::vec(proptest::bool::ANY, 12),
        tried in proptest::collection::vec(proptest::bool::ANY, 12),
        seed in proptest::num::u64::ANY,
        lb in 0usize..4,
    ) {
        let n = tiers.len();
        let ranks: Vec<Rank> = tiers.iter().map(|t| Rank { tier: if *t == 3 { locality::EXCLUDED } else { *t }, group: None }).collect();
        let layout = Layout::build(&ranks, None, None, &[]);
        let v = View { healthy: healthy[..n].to_vec(), tried: tried[..n].to_vec(), cost: vec![0.0; n], warmth: vec![1.0; n] };
        let lb = [LoadBalancer::RoundRobin, LoadBalancer::Random, LoadBalancer::LeastRequest, LoadBalancer::PeakEwma][lb];
        let got = pick(&layout, lb, &v, Draw { turn: seed as usize, seed, hash: None });
        let eligible = |i: usize| ranks[i].tier != locality::EXCLUDED && v.healthy[i] && !v.tried[i];
        let in_layout = |i: usize| ranks[i].tier != locality::EXCLUDED;
        let any_eligible = (0..n).any(eligible);
        let b = (0..n).filter(|i| in_layout(*i) && v.healthy[*i]).map(|i| ranks[i].tier).min();
        let Some(i) = got else {
            proptest::prop_assert!(layout.is_empty());
            return Ok(());
        };
        proptest::prop_assert!(in_layout(i));
        if any_eligible {
            proptest::prop_assert!(eligible(i));
            let b = b.unwrap();
            proptest::prop_assert!(ranks[i].tier >= b);
            let of_b: Vec<usize> = (0..n).filter(|j| in_layout(*j) && ranks[*j].tier == b).collect();
            let healthy_b = of_b.iter().filter(|j| v.healthy[**j]).count();
            if 1.4 * healthy_b as f64 >= of_b.len() as f64 && of_b.iter().any(|j| eligible(*j)) {
                proptest::prop_assert_eq!(ranks[i].tier, b);
            }
        }
    }

    #[test]
    fn tables_map_every_key_into_range(n in 1usize..40, key in proptest::num::u64::ANY, maglev in proptest::bool::ANY) {
        let kind = if maglev { TableKind::Maglev(251) } else { TableKind::Ring(100) };
        let t = Table::build(kind, &ids(n)).unwrap();
        proptest::prop_assert!(t.at(t.slot(key)) < n);
    }
}

proptest::proptest! {
    // Attacker: any cookie or query bytes are read in place without panicking, and a key
    // depends only on the named cookie's value.
    #[test]
    fn hash_keys_from_arbitrary_input(cookie in "[ -~]{0,200}", query in "[ -~]{0,200}") {
        let src = HashSource::Cookie { name: "s".into(), path: None, ttl: None };
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&cookie) {
            h.insert(http::header::COOKIE, v);
        }
        let ip = std::net::Ipv4Addr::LOCALHOST.into();
        let _ = src.key(&h, Some(&query), ip, 1);
        let _ = HashSource::Query("u".into()).key(&h, Some(&query), ip, 1);
        let mut with = h.clone();
        with.append(http::header::COOKIE, "s=fixed".parse().unwrap());
        if !cookie.split(';').any(|p| p.trim_start().starts_with("s=")) {
            proptest::prop_assert_eq!(src.key(&with, None, ip, 1), Key::Hash(hash_bytes(&[b"fixed"])));
        }
    }

    // ztunnel STRICT: an endpoint is either in tier 0 or excluded; FAILOVER never excludes.
    #[test]
    fn strict_is_all_or_nothing(r in 0usize..3, z in 0usize..3, n in 0usize..3, strict in proptest::bool::ANY) {
        let here = loc("r0/z0/s0");
        let there = loc(&format!("r{r}/z{z}/s0"));
        let node_here = Some("n0");
        let node_there = format!("n{n}");
        let p = Placement::Preference {
            scopes: vec![Scope::Region, Scope::Zone, Scope::Node],
            mode: if strict { Mode::Strict } else { Mode::Failover },
        };
        let rank = p.rank(
            &Place { locality: Some(&here), node: node_here, ..Place::default() },
            &Place { locality: Some(&there), node: Some(&node_there), ..Place::default() },
        );
        let all = r == 0 && z == 0 && n == 0;
        if strict {
            proptest::prop_assert_eq!(rank.tier == 0, all);
            proptest::prop_assert!(rank.tier == 0 || rank.tier == locality::EXCLUDED);
        } else {
            proptest::prop_assert!(rank.tier <= 3);
            proptest::prop_assert_eq!(rank.tier == 0, all);
        }
    }
}
