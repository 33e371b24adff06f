//! DENY rules must not fail open: attacks on how a proxy reads the attributes a policy names.
//! A header sent twice, an attribute the proxy cannot see (`connection.sni`), and
//! `remote.ip` / `remoteIpBlocks`, which a ztunnel does not evaluate (Istio's ztunnel: an
//! ALLOW rule using them never matches; a DENY rule is enforced without them) while L7
//! proxies match them against the original client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::collections::BTreeMap;

use mesh_authz::http::{HttpFacts, evaluate_http};
use mesh_authz::istio::AuthorizationPolicySpec;
use mesh_authz::*;

const ROOT: &str = "istio-system";

fn policy(json: serde_json::Value) -> Policy {
    let spec: AuthorizationPolicySpec = serde_json::from_value(json).unwrap();
    spec.to_policy("shop", "p", ROOT).unwrap()
}

fn conn(source: &str, remote: Option<&str>) -> Connection<'static> {
    Connection {
        source_ip: source.parse().unwrap(),
        remote_ip: remote.map(|r| r.parse().unwrap()),
        source_principal: Some("cluster.local/ns/shop/sa/web"),
        source_namespace: Some("shop"),
        destination_ip: "10.2.0.9".parse().unwrap(),
        destination_port: 8080,
    }
}

/// Decides one request at an L7 proxy, with `header` as the value of every header (a
/// repeated header is passed joined with `,`, as the proxies do).
fn l7_allowed(p: &Policy, header: Option<&'static str>, remote: Option<&str>) -> bool {
    let lookup = move |_: &str| header.map(Cow::Borrowed);
    let facts = HttpFacts {
        conn: conn("10.1.0.5", remote),
        host: "web.shop.svc",
        method: "GET",
        path: "/",
        header: &lookup,
        auth: None,
    };
    evaluate_http(&[p], &facts).is_allowed()
}

fn l4_allowed(p: Policy, c: Connection<'_>) -> bool {
    let labels = BTreeMap::new();
    let db = WorkloadRef {
        key: "shop/db",
        namespace: "shop",
        labels: &labels,
    };
    PolicyIndex::build(&[p], [db], ROOT)
        .evaluate("shop/db", &c)
        .is_allowed()
}

/// `x-role: user` then `x-role: admin`: a DENY on `admin` must see the second value, not
/// just the first (the app may read either).
#[test]
fn deny_on_a_header_sent_twice_matches_every_value() {
    let deny = policy(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "action": "DENY",
        "rules": [{"when": [{"key": "request.headers[x-role]", "values": ["admin"]}]}]
    }));
    assert!(!l7_allowed(&deny, Some("admin"), None));
    assert!(!l7_allowed(&deny, Some("user,admin"), None), "second value");
    assert!(!l7_allowed(&deny, Some("admin,user"), None), "first value");
    assert!(!l7_allowed(&deny, Some("user, admin"), None), "list spaces");
    assert!(l7_allowed(&deny, Some("user,user"), None));
    assert!(l7_allowed(&deny, None, None));
    // Envoy's joined value is matched too (a suffix rule sees `user,admin`).
    let suffix = policy(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "action": "DENY",
        "rules": [{"when": [{"key": "request.headers[x-role]", "values": ["*,admin"]}]}]
    }));
    assert!(!l7_allowed(&suffix, Some("user,admin"), None));
}

/// An ALLOW with `notValues: [prod]` must not admit `x-env: dev` + `x-env: prod`.
#[test]
fn allow_not_values_cannot_be_bypassed_by_a_second_header() {
    let allow = policy(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "rules": [{"when": [{"key": "request.headers[x-env]", "notValues": ["prod"]}]}]
    }));
    assert!(l7_allowed(&allow, Some("dev"), None));
    assert!(!l7_allowed(&allow, Some("prod"), None));
    assert!(!l7_allowed(&allow, Some("dev,prod"), None), "second value");
    assert!(!l7_allowed(&allow, Some("prod,dev"), None), "first value");
    // ALLOW `values` use Envoy's joined value: `dev,prod` is not `dev`.
    let only_dev = policy(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "rules": [{"when": [{"key": "request.headers[x-env]", "values": ["dev"]}]}]
    }));
    assert!(l7_allowed(&only_dev, Some("dev"), None));
    assert!(!l7_allowed(&only_dev, Some("dev,prod"), None));
}

/// `connection.sni` is not available to these proxies: a DENY on it denies (enforced
/// without it), an ALLOW rule on it never matches.
#[test]
fn deny_on_an_unavailable_attribute_fails_closed() {
    let deny = policy(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "action": "DENY",
        "rules": [{"when": [{"key": "connection.sni", "values": ["evil.example"]}]}]
    }));
    assert!(!l7_allowed(&deny, None, Some("10.1.0.5")));
    let deny_not = policy(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "action": "DENY",
        "rules": [{"when": [{"key": "connection.sni", "notValues": ["good.example"]}]}]
    }));
    assert!(!l7_allowed(&deny_not, None, Some("10.1.0.5")));
    let allow = policy(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "rules": [{"when": [{"key": "connection.sni", "notValues": ["evil.example"]}]}]
    }));
    assert!(!l7_allowed(&allow, None, Some("10.1.0.5")));
}

/// At an L7 proxy `remote.ip` is the original client: a DENY on it is enforced.
#[test]
fn deny_on_remote_ip_is_enforced_at_l7() {
    let deny = policy(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "action": "DENY",
        "rules": [{"when": [{"key": "remote.ip", "values": ["192.0.2.0/24"]}]}]
    }));
    assert!(!l7_allowed(&deny, None, Some("192.0.2.7")));
    assert!(l7_allowed(&deny, None, Some("198.51.100.7")));
    let blocks = policy(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "web"}],
        "action": "DENY",
        "rules": [{"from": [{"source": {"notRemoteIpBlocks": ["198.51.100.0/24"]}}]}]
    }));
    assert!(!l7_allowed(&blocks, None, Some("192.0.2.7")));
    assert!(l7_allowed(&blocks, None, Some("198.51.100.7")));
}

/// Istio's ztunnel: `remoteIpBlocks` is an HTTP attribute there. An ALLOW rule using it never
/// matches, even when the peer's address is in the block.
#[test]
fn allow_remote_ip_blocks_never_matches_at_ztunnel() {
    let allow = policy(serde_json::json!({
        "rules": [{"from": [{"source": {"remoteIpBlocks": ["192.0.2.0/24"]}}]}]
    }));
    assert!(!l4_allowed(allow, conn("192.0.2.7", None)));
}

/// ...and a DENY rule using it is enforced without it (more broadly), never skipped.
#[test]
fn deny_remote_ip_blocks_at_ztunnel_is_enforced_without_it() {
    let deny = policy(serde_json::json!({
        "action": "DENY",
        "rules": [{"from": [{"source": {"remoteIpBlocks": ["198.51.100.0/24"], "namespaces": ["shop"]}}]}]
    }));
    assert!(!l4_allowed(deny.clone(), conn("192.0.2.7", None)));
    let mut other_ns = conn("192.0.2.7", None);
    other_ns.source_namespace = Some("blog");
    other_ns.source_principal = Some("cluster.local/ns/blog/sa/x");
    assert!(
        l4_allowed(deny, other_ns),
        "the rest of the rule still applies"
    );
}

/// Where the original client is known (a sidecar), `remoteIpBlocks` is matched against it.
#[test]
fn remote_ip_blocks_match_the_original_client_where_known() {
    let allow = policy(serde_json::json!({
        "rules": [{"from": [{"source": {"remoteIpBlocks": ["192.0.2.0/24"]}}]}]
    }));
    assert!(l4_allowed(
        allow.clone(),
        conn("10.1.0.5", Some("192.0.2.7"))
    ));
    assert!(!l4_allowed(allow, conn("192.0.2.7", Some("10.1.0.5"))));
}
