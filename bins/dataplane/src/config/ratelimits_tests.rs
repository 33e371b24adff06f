//! Tests of the `EnvoyFilter` rate limits resolved per proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::Path;

use super::*;
use crate::config::parse::ENVOY_FILTER_API;

const WE: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web, namespace: ns}\nspec: {address: 10.0.0.1, labels: {app: web}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db, namespace: ns}\nspec: {address: 10.0.0.2, labels: {app: db}}\n---\n";

fn filter(api: &str, spec: &str) -> String {
    format!(
        "apiVersion: {api}\nkind: EnvoyFilter\nmetadata: {{name: f, namespace: ns}}\nspec:\n{spec}"
    )
}

/// Istio's network local rate limit shape, selecting `app: web`.
const CONN: &str = "  workloadSelector: {labels: {app: web}}\n  configPatches:\n  - applyTo: NETWORK_FILTER\n    match: {context: SIDECAR_INBOUND}\n    patch:\n      operation: INSERT_BEFORE\n      value:\n        name: envoy.filters.network.local_ratelimit\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit\n          stat_prefix: tcp\n          token_bucket: {max_tokens: 1, fill_interval: 60s}\n";

// Istio EnvoyFilter docs: workloadSelector selects the workloads of the filter's
// namespace; the connection limit applies at the selected workload's inbound only.
#[test]
fn selected_workloads_get_their_policy() {
    let s = crate::config::parse(
        Path::new("m.yaml"),
        &format!("{WE}{}", filter(ENVOY_FILTER_API, CONN)),
    )
    .unwrap();
    let web: IpAddr = "10.0.0.1".parse().unwrap();
    let t = tokio::time::Instant::now();
    assert!(s.rate_limits.admit_connection(web, t));
    assert!(!s.rate_limits.admit_connection(web, t), "one token");
    assert!(
        s.rate_limits
            .admit_connection("10.0.0.2".parse().unwrap(), t),
        "db is not selected"
    );
    assert!(s.rate_limits.outbound.is_empty(), "SIDECAR_INBOUND only");
}

#[test]
fn other_versions_selections_and_fields_are_rejected_by_name() {
    let e = crate::config::parse(Path::new("m.yaml"), &filter("networking.istio.io/v1", CONN))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "kind: EnvoyFilter is not supported yet with apiVersion \"networking.istio.io/v1\""
        ),
        "{e}"
    );
    let both = CONN.replace(
        "  configPatches:",
        "  targetRefs: [{kind: Service, name: web}]\n  configPatches:",
    );
    let e = crate::config::parse(Path::new("m.yaml"), &filter(ENVOY_FILTER_API, &both))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.targetRefs: workloadSelector and targetRefs are mutually exclusive"),
        "{e}"
    );
    assert!(
        e.contains("spec.targetRefs[0]: gateway.networking.k8s.io/Service: only a Gateway"),
        "{e}"
    );
    let bad = CONN.replace(
        "stat_prefix: tcp",
        "stat_prefix: tcp\n          share_key: x",
    );
    let e = crate::config::parse(Path::new("m.yaml"), &filter(ENVOY_FILTER_API, &bad))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.configPatches[0].patch.value.typed_config.share_key: not supported"),
        "{e}"
    );
}

// Attacker: a config push (any change, e.g. a pod scaled elsewhere) must not refill the
// buckets of unchanged rules; changed rules start afresh.
#[test]
fn unchanged_rules_keep_their_buckets_across_configs() {
    let text = format!("{WE}{}", filter(ENVOY_FILTER_API, CONN));
    let parse = |t: &str| crate::config::parse(Path::new("m.yaml"), t).unwrap();
    let (web, t) = ("10.0.0.1".parse().unwrap(), tokio::time::Instant::now());
    let old = parse(&text);
    assert!(old.rate_limits.admit_connection(web, t));
    let mut new = parse(&text.replace("10.0.0.2", "10.0.0.3"));
    inherit(&mut new, &old);
    assert!(!new.rate_limits.admit_connection(web, t), "still drained");
    let mut changed = parse(&text.replace("max_tokens: 1", "max_tokens: 2"));
    inherit(&mut changed, &new);
    assert!(
        changed.rate_limits.admit_connection(web, t),
        "new rules, new bucket"
    );
}

// Beside istiod: EnvoyFilter is an L7-file kind, checked alone; a selector on labels
// istiod does not send is refused (it would select nothing).
#[test]
fn beside_istiod() {
    let ok = CONN.replace("{app: web}", "{service.istio.io/canonical-name: web}");
    let res =
        crate::config::parse_l7(Path::new("l7.yaml"), &filter(ENVOY_FILTER_API, &ok)).unwrap();
    assert_eq!(res.envoy_filters.len(), 1);
    let e = crate::config::parse_l7(Path::new("l7.yaml"), &filter(ENVOY_FILTER_API, CONN))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "spec.workloadSelector.labels.app: istiod's workload API carries no workload labels"
        ),
        "{e}"
    );
    let bad = ok.replace("NETWORK_FILTER", "CLUSTER");
    let e = crate::config::parse_l7(Path::new("l7.yaml"), &filter(ENVOY_FILTER_API, &bad))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.configPatches[0].applyTo: \"CLUSTER\" is not supported"),
        "{e}"
    );
}
