//! `action: CUSTOM` (Istio's external authorization): validation and which requests a CUSTOM
//! policy sends to its provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;

use mesh_authz::http::{HttpFacts, custom_matches, evaluate_conn, evaluate_http};
use mesh_authz::istio::AuthorizationPolicySpec;
use mesh_authz::{Action, Connection, Policy};

fn policy(name: &str, json: serde_json::Value) -> Policy {
    let spec: AuthorizationPolicySpec = serde_json::from_value(json).unwrap();
    spec.to_policy("shop", name, "istio-system").unwrap()
}

fn conn() -> Connection<'static> {
    Connection {
        source_ip: "10.0.0.1".parse().unwrap(),
        remote_ip: Some("10.0.0.1".parse().unwrap()),
        source_principal: Some("cluster.local/ns/shop/sa/web"),
        source_namespace: Some("shop"),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 80,
    }
}

/// The providers asked about `path` (in order, as `custom_matches` yields them).
fn asked(policies: &[&Policy], path: &str) -> Vec<String> {
    let header = |_: &str| None::<Cow<'_, str>>;
    let facts = HttpFacts {
        conn: conn(),
        host: "api",
        method: "GET",
        path,
        header: &header,
        auth: None,
    };
    let mut out = Vec::new();
    custom_matches(policies, &facts, |p| {
        out.push(p.provider.clone().unwrap());
        true
    });
    out
}

#[test]
fn custom_policy_keeps_its_provider() {
    let p = policy(
        "ext",
        serde_json::json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
    );
    assert_eq!(p.action, Action::Custom);
    assert_eq!(p.provider.as_deref(), Some("opa"));
    // Istio: CUSTOM needs a proxy that sees requests.
    assert!(p.uses_http());
}

/// Istio's AuthorizationPolicy reference: "a CUSTOM policy's rules say when the provider is
/// asked": requests its rules do not match skip the check.
#[test]
fn rules_decide_when_the_provider_is_asked() {
    let admin = policy(
        "admin",
        serde_json::json!({"action": "CUSTOM", "provider": {"name": "opa"},
            "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]}),
    );
    let all = policy(
        "all",
        serde_json::json!({"action": "CUSTOM", "provider": {"name": "audit-authz"}, "rules": [{}]}),
    );
    assert_eq!(asked(&[&admin], "/admin/x"), ["opa"]);
    assert!(asked(&[&admin], "/public").is_empty());
    // Several providers per workload (istio/istio#58082, Istio 1.30: one ext_authz filter per
    // provider, each triggered only by its own policies): one check per matching provider.
    assert_eq!(asked(&[&admin, &all], "/admin/x"), ["opa", "audit-authz"]);
    assert_eq!(asked(&[&admin, &all], "/public"), ["audit-authz"]);
    // No rules: matches nothing (as every action).
    let none = policy(
        "none",
        serde_json::json!({"action": "CUSTOM", "provider": {"name": "opa"}}),
    );
    assert!(asked(&[&none], "/admin/x").is_empty());
}

/// CUSTOM never decides in the DENY/ALLOW pass and never counts as an ALLOW policy
/// (Istio: "If there are no ALLOW policies for the workload, allow the request").
#[test]
fn custom_is_not_an_allow_policy() {
    let ext = policy(
        "ext",
        serde_json::json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
    );
    let header = |_: &str| None::<Cow<'_, str>>;
    let facts = HttpFacts {
        conn: conn(),
        host: "api",
        method: "GET",
        path: "/",
        header: &header,
        auth: None,
    };
    assert!(evaluate_http(&[&ext], &facts).is_allowed());
    // A stream this data plane cannot send to the authorizer (not HTTP) fails closed.
    assert!(!evaluate_conn(&[&ext], &conn()).is_allowed());
}

/// At L4 (a ztunnel, a sidecar's TCP port) no request can go to the authorizer: a CUSTOM
/// policy is enforced as a DENY without its HTTP fields (istio.io "ambient L7 features": a
/// selector policy with L7 rules enforced by a ztunnel "will fail safe by becoming a DENY
/// policy"), never silently skipped.
#[test]
fn custom_fails_closed_at_l4() {
    use mesh_authz::{PolicyIndex, WorkloadRef};
    let p = policy(
        "ext",
        serde_json::json!({"action": "CUSTOM", "provider": {"name": "opa"},
            "selector": {"matchLabels": {"app": "api"}},
            "rules": [{"to": [{"operation": {"ports": ["8080"], "paths": ["/admin/*"]}}]}]}),
    );
    let labels = [("app".to_string(), "api".to_string())]
        .into_iter()
        .collect();
    let api = WorkloadRef {
        key: "shop/api",
        namespace: "shop",
        labels: &labels,
    };
    let index = PolicyIndex::build(&[p], [api], "istio-system");
    let on = |port| Connection {
        destination_port: port,
        ..conn()
    };
    let d = index.evaluate("shop/api", &on(8080));
    assert!(!d.is_allowed());
    assert_eq!(d.to_string(), "denied by shop/ext");
    assert!(index.evaluate("shop/api", &on(9090)).is_allowed());
    // A sidecar serving the workload's HTTP port evaluates it per request.
    assert!(index.http_policies("shop/api").is_some());
}
