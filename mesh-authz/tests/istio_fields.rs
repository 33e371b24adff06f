//! Newer Istio AuthorizationPolicy fields: `source.serviceAccounts` / `notServiceAccounts`
//! (Istio 1.22: `<namespace>/<serviceaccount>`, or `<serviceaccount>` in the policy's own
//! namespace; no wildcards; not with `principals` or `namespaces`) and the waypoint
//! default-deny attachment, `targetRefs` to the `istio-waypoint` GatewayClass (Istio 1.25: root
//! namespace only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use mesh_authz::istio::AuthorizationPolicySpec;
use mesh_authz::*;

const ROOT: &str = "istio-system";

fn spec(json: serde_json::Value) -> AuthorizationPolicySpec {
    serde_json::from_value(json).unwrap()
}

fn from(principal: Option<&'static str>) -> Connection<'static> {
    Connection {
        source_ip: "10.1.0.5".parse().unwrap(),
        remote_ip: None,
        source_principal: principal,
        source_namespace: principal.and_then(|p| p.split('/').nth(2)),
        destination_ip: "10.2.0.9".parse().unwrap(),
        destination_port: 5432,
    }
}

fn allowed(p: &Policy, c: Connection<'_>) -> bool {
    let labels = BTreeMap::new();
    let db = WorkloadRef {
        key: "shop/db",
        namespace: "shop",
        labels: &labels,
    };
    PolicyIndex::build(std::slice::from_ref(p), [db], ROOT)
        .evaluate("shop/db", &c)
        .is_allowed()
}

#[test]
fn service_accounts_are_accepted_and_enforced() {
    let p = spec(serde_json::json!({
        "rules": [{"from": [{"source": {"serviceAccounts": ["blog/writer", "web"]}}]}]
    }))
    .to_policy("shop", "sa", ROOT)
    .unwrap();
    assert!(allowed(&p, from(Some("cluster.local/ns/blog/sa/writer"))));
    assert!(
        allowed(&p, from(Some("other.domain/ns/blog/sa/writer"))),
        "any trust domain"
    );
    assert!(
        allowed(&p, from(Some("cluster.local/ns/shop/sa/web"))),
        "a bare name is in the policy's namespace"
    );
    assert!(!allowed(&p, from(Some("cluster.local/ns/blog/sa/web"))));
    assert!(!allowed(&p, from(Some("cluster.local/ns/blog/sa/writer2"))));
    assert!(!allowed(&p, from(None)), "plaintext has no service account");

    let deny = spec(serde_json::json!({
        "action": "DENY",
        "rules": [{"from": [{"source": {"notServiceAccounts": ["shop/web"]}}]}]
    }))
    .to_policy("shop", "only-web", ROOT)
    .unwrap();
    assert!(allowed(&deny, from(Some("cluster.local/ns/shop/sa/web"))));
    assert!(!allowed(
        &deny,
        from(Some("cluster.local/ns/shop/sa/other"))
    ));
    assert!(!allowed(&deny, from(None)));
}

#[test]
fn service_accounts_errors_name_the_field() {
    let errs = spec(serde_json::json!({
        "rules": [{"from": [
            {"source": {"serviceAccounts": ["blog/*"]}},
            {"source": {"notServiceAccounts": ["a/b/c", ""]}},
            {"source": {"serviceAccounts": ["x"], "principals": ["cluster.local/ns/a/sa/b"]}}
        ]}]
    }))
    .to_policy("shop", "bad", ROOT)
    .unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let has = |needle: &str| text.iter().any(|e| e.contains(needle));
    assert!(
        has("spec.rules[0].from[0].source.serviceAccounts[0]: \"blog/*\""),
        "{text:?}"
    );
    assert!(
        has("spec.rules[0].from[1].source.notServiceAccounts[0]: \"a/b/c\""),
        "{text:?}"
    );
    assert!(
        has("spec.rules[0].from[1].source.notServiceAccounts[1]"),
        "{text:?}"
    );
    assert!(
        has("spec.rules[0].from[2].source.serviceAccounts: cannot be set with principals"),
        "{text:?}"
    );
}

#[test]
fn waypoint_gateway_class_target_is_accepted_in_the_root_namespace_only() {
    let class = serde_json::json!({
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}]
    });
    let p = spec(class.clone())
        .to_policy(ROOT, "default-deny", ROOT)
        .unwrap();
    assert_eq!(
        p.scope,
        Scope::TargetRefs(vec![TargetRef {
            kind: "GatewayClass".into(),
            name: "istio-waypoint".into()
        }])
    );
    assert!(p.rules.is_empty(), "no rules: an ALLOW matching nothing");

    let errs = spec(class).to_policy("shop", "x", ROOT).unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .starts_with("spec.targetRefs[0].kind: GatewayClass"),
        "{errs:?}"
    );
    let errs = spec(serde_json::json!({
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio"}]
    }))
    .to_policy(ROOT, "x", ROOT)
    .unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .starts_with("spec.targetRefs[0].name: \"istio\""),
        "{errs:?}"
    );
}
