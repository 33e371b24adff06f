//! The compile of the `loadBalancer` fields this module owns: effects and rejections by name.

use super::hash::TableKind;
use super::locality::Placement;
use super::*;

fn compile(tp: &str) -> Result<DestinationPolicy, Vec<String>> {
    let spec: crate::istio::DestinationRuleSpec =
        serde_json::from_str(&format!(r#"{{"host": "h", "trafficPolicy": {tp}}}"#)).unwrap();
    DestinationPolicy::compile(&spec).map_err(|e| e.into_iter().map(|e| e.field).collect())
}

// Istio DestinationRule reference (LoadBalancerSettings, LocalityLoadBalancerSetting).
#[test]
fn compiles_or_rejects_by_name() {
    let p = compile(r#"{"loadBalancer": {"consistentHash": {"httpCookie": {"name": "s", "ttl": "10s"}, "maglev": {}}}}"#).unwrap();
    let h = p.balancing.hash.unwrap();
    assert_eq!(h.table, TableKind::Maglev(65537));
    let p = compile(
        r#"{"loadBalancer": {"consistentHash": {"useSourceIp": true, "minimumRingSize": 64}}}"#,
    )
    .unwrap();
    assert_eq!(p.balancing.hash.unwrap().table, TableKind::Ring(64));
    let p = compile(r#"{"loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "30s"}}"#)
        .unwrap();
    assert_eq!(p.balancing.warmup.unwrap().duration.as_secs(), 30);
    let p = compile(r#"{"outlierDetection": {"consecutive5xxErrors": 1}}"#).unwrap();
    assert_eq!(
        p.balancing.locality,
        Some(Placement::Failover { failover: vec![] }),
        "Istio's default with outlier detection"
    );
    let p = compile(r#"{"loadBalancer": {"localityLbSetting": {"enabled": false}}, "outlierDetection": {"consecutive5xxErrors": 1}}"#).unwrap();
    assert_eq!(p.balancing.locality, None);
    let cases = [
        (
            r#"{"loadBalancer": {"consistentHash": {"httpCookie": {"name": "s", "attributes": []}}}}"#,
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes",
        ),
        (
            r#"{"loadBalancer": {"consistentHash": {"useSourceIp": true, "httpHeaderName": "x"}}}"#,
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
        (
            r#"{"loadBalancer": {"consistentHash": {"useSourceIp": true, "maglev": {"tableSize": 1000}}}}"#,
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        ),
        (
            r#"{"loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": true}}}"#,
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
        (
            r#"{"loadBalancer": {"localityLbSetting": {"failover": [{"from": "a", "to": "b"}]}}}"#,
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover",
        ),
        (
            r#"{"loadBalancer": {"localityLbSetting": {"distribute": [{"from": "a/*", "to": {"a/*": 60}}]}}}"#,
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        ),
        (
            r#"{"loadBalancer": {"simple": "RANDOM", "warmupDurationSecs": "10s"}}"#,
            "spec.trafficPolicy.loadBalancer.warmup",
        ),
        (
            r#"{"loadBalancer": {"warmup": {"duration": "10s", "aggression": 0.5}}}"#,
            "spec.trafficPolicy.loadBalancer.warmup.aggression",
        ),
    ];
    for (tp, field) in cases {
        assert_eq!(compile(tp).unwrap_err(), [field], "{tp}");
    }
}

/// Attack: a Maglev `tableSize` near 2^64 (u64::MAX; 2^64 − 59, the largest 64-bit prime)
/// must be rejected by its bound at once, not after ~2^32 trial divisions (Istio
/// `MagLev.table_size` is a uint64; Envoy's `maglev.table_size` is at most 5000011).
#[test]
fn huge_maglev_table_size_is_rejected_quickly() {
    for size in [u64::MAX, u64::MAX - 58] {
        let t = tokio::time::Instant::now();
        let tp = format!(
            r#"{{"loadBalancer": {{"consistentHash": {{"useSourceIp": true, "maglev": {{"tableSize": {size}}}}}}}}}"#
        );
        assert_eq!(
            compile(&tp).unwrap_err(),
            ["spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize"]
        );
        assert!(
            t.elapsed() < std::time::Duration::from_millis(500),
            "{size}"
        );
    }
}
