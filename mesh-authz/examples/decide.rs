//! Authorization decisions without the data plane: parse Istio policies, compile them for a few
//! workloads, and decide connections.
//!
//! Run: `cargo run -p mesh-authz --example decide`

use std::collections::BTreeMap;

use mesh_authz::istio::AuthorizationPolicySpec;
use mesh_authz::{Connection, PolicyIndex, WorkloadRef};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let specs = [
        (
            "istio-system",
            "deny-legacy",
            r#"{"action": "DENY",
            "rules": [{"from": [{"source": {"namespaces": ["legacy"]}}]}]}"#,
        ),
        (
            "shop",
            "db-from-web",
            r#"{"selector": {"matchLabels": {"app": "db"}},
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}],
                       "to": [{"operation": {"ports": ["5432"]}}]}]}"#,
        ),
    ];
    let mut policies = Vec::new();
    for (ns, name, json) in specs {
        let spec: AuthorizationPolicySpec = serde_json::from_str(json)?;
        policies.push(
            spec.to_policy(ns, name, "istio-system")
                .map_err(|e| format!("{e:?}"))?,
        );
    }
    let db: BTreeMap<String, String> = [("app".into(), "db".into())].into();
    let index = PolicyIndex::build(
        &policies,
        [WorkloadRef {
            key: "shop/db",
            namespace: "shop",
            labels: &db,
        }],
        "istio-system",
    );
    for (principal, port) in [
        ("cluster.local/ns/shop/sa/web", 5432),
        ("cluster.local/ns/shop/sa/web", 22),
        ("cluster.local/ns/legacy/sa/app", 5432),
    ] {
        let c = Connection {
            source_ip: "10.0.0.7".parse()?,
            remote_ip: None,
            source_principal: Some(principal),
            source_namespace: principal.split('/').nth(2),
            destination_ip: "10.0.1.9".parse()?,
            destination_port: port,
        };
        eprintln!(
            "{principal} -> shop/db:{port}: {:?}",
            index.evaluate("shop/db", &c)
        );
    }
    Ok(())
}
