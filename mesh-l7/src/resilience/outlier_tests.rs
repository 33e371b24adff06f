use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

fn addrs(n: u8) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| SocketAddr::from(([127, 213, 0, i], 80)))
        .collect()
}

fn policy(json: &str) -> OutlierPolicy {
    let spec: OutlierDetectionSpec = serde_json::from_str(json).unwrap();
    let mut errs = Vec::new();
    let p = spec.compile("od", &mut errs);
    assert!(errs.is_empty(), "{errs:?}");
    p
}

#[test]
fn defaults_are_istios() {
    // Istio OutlierDetection docs: consecutive5xxErrors default 5, interval 10s,
    // baseEjectionTime 30s, maxEjectionPercent 10, minHealthPercent 0; gateway errors off
    // unless set (Envoy enforcing_consecutive_gateway_failure defaults to 0).
    let p = policy("{}");
    assert_eq!(p, OutlierPolicy::default());
    assert_eq!(p.consecutive_5xx, 5);
    assert_eq!(p.consecutive_gateway, 0);
    assert_eq!(p.base_ejection, Duration::from_secs(30));
}

/// `consecutiveErrors`: deprecated in istio/api#1189 for consecutive5xxErrors /
/// consecutiveGatewayErrors, then no longer applied by pilot (istio/istio#24087): rejected
/// by name rather than silently ignored. Durations must be at least 1ms (Istio docs).
#[test]
fn rejects_by_name() {
    let spec: OutlierDetectionSpec = serde_json::from_str(
        r#"{"consecutiveErrors": 3, "interval": "soon", "baseEjectionTime": "0s",
            "maxEjectionPercent": 101, "minHealthPercent": -1}"#,
    )
    .unwrap();
    let mut errs = Vec::new();
    spec.compile("spec.trafficPolicy.outlierDetection", &mut errs);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
            "spec.trafficPolicy.outlierDetection.interval",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
        ]
    );
    assert!(serde_json::from_str::<OutlierDetectionSpec>(r#"{"consecutive5xx": 1}"#).is_err());
}

#[test]
fn ejects_after_exactly_n_consecutive_5xx_and_returns() {
    // Envoy outlier.rst "Consecutive 5xx": N consecutive 5xx eject; a success resets the count.
    let p = policy(
        r#"{"consecutive5xxErrors": 3, "baseEjectionTime": "30s", "maxEjectionPercent": 100}"#,
    );
    let a = addrs(2);
    let mut c = OutlierCluster::new(p, a.clone());
    let t0 = Instant::now();
    assert_eq!(c.report(a[0], Outcome::Status(500), t0), Event::None);
    assert_eq!(c.report(a[0], Outcome::Status(503), t0), Event::None);
    assert_eq!(
        c.report(a[0], Outcome::Status(200), t0),
        Event::None,
        "reset"
    );
    assert_eq!(c.report(a[0], Outcome::Status(500), t0), Event::None);
    assert_eq!(c.report(a[0], Outcome::Status(500), t0), Event::None);
    assert!(!c.is_ejected(a[0], t0));
    assert_eq!(
        c.report(a[0], Outcome::Status(500), t0),
        Event::Ejected(Duration::from_secs(30))
    );
    assert!(c.is_ejected(a[0], t0));
    assert!(c.is_ejected(a[0], t0 + Duration::from_millis(29_999)));
    assert!(!c.is_ejected(a[0], t0 + Duration::from_secs(30)), "back");
    assert_eq!(c.ejected(t0), vec![a[0]]);
}

#[test]
fn ejection_time_grows_with_ejections_and_is_forgiven() {
    // Istio baseEjectionTime: "remain ejected for a period equal to the product of minimum
    // ejection duration and the number of times the host has been ejected"; Envoy decrements
    // the multiplier at each interval the host is healthy; max_ejection_time defaults to 300s.
    let p = policy(
        r#"{"consecutive5xxErrors": 1, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 100}"#,
    );
    let a = addrs(1);
    let mut c = OutlierCluster::new(p, a.clone());
    let mut t = Instant::now();
    let mut times = Vec::new();
    for _ in 0..12 {
        match c.report(a[0], Outcome::Status(500), t) {
            Event::Ejected(d) => {
                times.push(d.as_secs());
                t += d;
            }
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(
        times,
        [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
    );
    // 25 s back (two intervals) forgives two of the twelve ejections: the next one is 11th.
    let t = t + Duration::from_secs(25);
    // capped at 300s
    assert_eq!(
        c.report(a[0], Outcome::Status(500), t),
        Event::Ejected(Duration::from_secs(300))
    );
    let mut c = OutlierCluster::new(c.policy().clone(), a.clone());
    let t = Instant::now();
    assert_eq!(
        c.report(a[0], Outcome::Status(500), t),
        Event::Ejected(Duration::from_secs(30))
    );
    let t = t + Duration::from_secs(30) + Duration::from_secs(10);
    assert_eq!(
        c.report(a[0], Outcome::Status(500), t),
        Event::Ejected(Duration::from_secs(30)),
        "one interval back forgave the first ejection"
    );
}

#[test]
fn max_ejection_percent_is_respected() {
    // Envoy: a host is ejected only while the ejected share is below max_ejection_percent, so
    // with 10% of 3 hosts the first is ejected and no other.
    let p = policy(r#"{"consecutive5xxErrors": 1}"#);
    let a = addrs(3);
    let mut c = OutlierCluster::new(p, a.clone());
    let t = Instant::now();
    assert!(matches!(
        c.report(a[0], Outcome::Status(500), t),
        Event::Ejected(_)
    ));
    assert_eq!(c.report(a[1], Outcome::Status(500), t), Event::Capped);
    assert_eq!(c.report(a[2], Outcome::Status(502), t), Event::Capped);
    assert_eq!(c.ejected(t), vec![a[0]]);
    let p = policy(r#"{"consecutive5xxErrors": 1, "maxEjectionPercent": 0}"#);
    let mut c = OutlierCluster::new(p, a.clone());
    assert_eq!(c.report(a[0], Outcome::Status(500), t), Event::Capped);
}

#[test]
fn min_health_percent_disables_detection_below_it() {
    // Istio minHealthPercent: "When the percentage of healthy hosts in the load balancing pool
    // drops below this threshold, outlier detection will be disabled and the proxy will load
    // balance across all hosts in the pool (healthy and unhealthy)."
    let p =
        policy(r#"{"consecutive5xxErrors": 1, "maxEjectionPercent": 100, "minHealthPercent": 50}"#);
    let a = addrs(4);
    let mut c = OutlierCluster::new(p, a.clone());
    let t = Instant::now();
    c.report(a[0], Outcome::Status(500), t);
    c.report(a[1], Outcome::Status(500), t);
    assert!(c.is_ejected(a[0], t), "50% healthy: still enforcing");
    c.report(a[2], Outcome::Status(500), t);
    assert!(!c.is_ejected(a[0], t), "25% healthy: panic mode");
    assert!(c.ejected(t).is_empty());
}

#[test]
fn gateway_errors_and_local_origin_split() {
    // Istio consecutiveGatewayErrors: 502, 503, 504 (and connection errors mapped to them);
    // a 500 is not a gateway error and resets the gateway streak.
    let p = policy(
        r#"{"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 2, "maxEjectionPercent": 100}"#,
    );
    let a = addrs(1);
    let mut c = OutlierCluster::new(p, a.clone());
    let t = Instant::now();
    assert_eq!(c.report(a[0], Outcome::Status(502), t), Event::None);
    assert_eq!(c.report(a[0], Outcome::Status(500), t), Event::None);
    assert_eq!(c.report(a[0], Outcome::ConnectFailure, t), Event::None);
    assert!(matches!(
        c.report(a[0], Outcome::Timeout, t),
        Event::Ejected(_)
    ));
    // Envoy split_external_local_origin_errors: local-origin failures count apart, and 5xx
    // responses no longer see them.
    let p = policy(
        r#"{"consecutive5xxErrors": 2, "splitExternalLocalOriginErrors": true,
            "consecutiveLocalOriginFailures": 3, "maxEjectionPercent": 100}"#,
    );
    let mut c = OutlierCluster::new(p, a.clone());
    assert_eq!(c.report(a[0], Outcome::ConnectFailure, t), Event::None);
    assert_eq!(c.report(a[0], Outcome::Status(500), t), Event::None);
    assert_eq!(c.report(a[0], Outcome::Reset, t), Event::None);
    assert!(matches!(
        c.report(a[0], Outcome::Timeout, t),
        Event::Ejected(_)
    ));
}

#[test]
fn attacker_cannot_grow_the_state_with_unknown_addresses() {
    let a = addrs(2);
    let mut c = OutlierCluster::new(policy("{}"), a.clone());
    let t = Instant::now();
    for i in 0..10_000u32 {
        let fake = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80));
        assert_eq!(c.report(fake, Outcome::Status(500), t), Event::None);
    }
    assert_eq!(c.len(), 2);
    // Config swap: an endpoint that left is forgotten, the ejected one stays ejected.
    let p = policy(r#"{"consecutive5xxErrors": 1, "maxEjectionPercent": 100}"#);
    c.sync(p.clone(), a.clone());
    c.report(a[0], Outcome::Status(500), t);
    c.sync(p, [a[0]]);
    assert_eq!(c.len(), 1);
    assert!(c.is_ejected(a[0], t));
}

proptest! {
    /// Never more than max(1, the allowed share) ejected at once; every ejection ends within
    /// the cap.
    #[test]
    fn ejections_stay_within_bounds(
        n in 1u8..12,
        max in 0u32..=100,
        ops in proptest::collection::vec((0u8..12, 0u16..600, 0u64..40), 0..300),
    ) {
        let p = OutlierPolicy { consecutive_5xx: 2, consecutive_gateway: 1, max_ejection_percent: max, ..OutlierPolicy::default() };
        let a = addrs(n);
        let mut c = OutlierCluster::new(p, a.clone());
        let mut t = Instant::now();
        for (i, status, dt) in ops {
            t += Duration::from_secs(dt);
            let addr = a[usize::from(i) % a.len()];
            let before = c.ejected_count(t);
            if let Event::Ejected(d) = c.report(addr, Outcome::Status(status + 100), t) {
                prop_assert!(d <= Duration::from_secs(300));
                prop_assert!((before as u64) * 100 < u64::from(max) * u64::from(n));
            }
            prop_assert!(c.ejected_count(t) <= usize::from(n));
            if max == 0 { prop_assert_eq!(c.ejected_count(t), 0); }
        }
    }

    /// The kept ejected count equals a recount over every endpoint, through reports, time
    /// passing (with and without `advance`) and config swaps that drop or add endpoints.
    #[test]
    fn ejected_count_equals_a_recount(
        n in 1u8..12,
        ops in proptest::collection::vec((0u8..14, 0u16..600, 0u64..40, 0u8..4), 0..300),
    ) {
        let p = OutlierPolicy { consecutive_5xx: 1, max_ejection_percent: 100, ..OutlierPolicy::default() };
        let a = addrs(n);
        let mut c = OutlierCluster::new(p.clone(), a.clone());
        let mut t = Instant::now();
        for (i, status, dt, op) in ops {
            t += Duration::from_secs(dt);
            match op {
                0 => c.advance(t),
                1 if i % 5 == 0 => c.sync(p.clone(), a.iter().copied().skip(usize::from(i) % a.len())),
                1 => c.sync(p.clone(), a.clone()),
                _ => {
                    c.report(a[usize::from(i) % a.len()], Outcome::Status(status + 100), t);
                }
            }
            let recount = c.endpoints.values().filter(|e| e.ejected(t)).count();
            prop_assert_eq!(c.ejected_count(t), recount);
            prop_assert!(c.expiries.len() <= c.endpoints.len());
        }
    }
}
