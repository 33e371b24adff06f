//! L4 authorization enforced by the destination ztunnel (real binaries): ALLOW by principal
//! and port, DENY before ALLOW, 401 to the HBONE client, SOCKS5 "not allowed" to the app.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{ConnectRequest, Error, Pool, PoolConfig};
use mesh_identity::CertStore;
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;

const POLICIES: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: ns}
spec: {address: 127.41.1.11, serviceAccount: other}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: intruder, namespace: blocked}
spec: {address: 127.41.1.12, serviceAccount: intruder}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-allow, namespace: ns}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/ns/*"]}}]
    to: [{operation: {ports: ["9000"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/ns/sa/other"]}}]
"#;

fn config(net: Net) -> String {
    net.config().replace(
        "workloads: [ns/client]",
        "workloads: [ns/client, ns/other, blocked/intruder]",
    ) + POLICIES
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_allow_deny_and_answer_401() {
    let net = Net { b: 41 };
    let mut mesh = InprocMesh::new(&config(net));
    let accepted = echo_server(net.app()).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;

    // Allowed: ns/client matches cluster.local/ns/ns/* on port 9000.
    let mut s = socks5_connect(net.client(), net.socks(), "server.ns.svc", 9000)
        .await
        .unwrap();
    assert_eq!(exchange(&mut s, b"hello").await, b"hello");

    // DENY before ALLOW: ns/other matches the ALLOW too, but the mesh-wide DENY wins.
    let other = "127.41.1.11".parse().unwrap();
    assert_eq!(
        socks5_connect(other, net.socks(), "server.ns.svc", 9000)
            .await
            .unwrap_err(),
        0x02
    );
    // Not allowed: blocked/intruder matches no ALLOW rule.
    let intruder = "127.41.1.12".parse().unwrap();
    assert_eq!(
        socks5_connect(intruder, net.socks(), "server.ns.svc", 9000)
            .await
            .unwrap_err(),
        0x02
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "refused connections never reach the app"
    );

    // The HBONE answer itself is 401.
    let certs = CertStore::fixed(
        mesh.ca
            .issue(&"spiffe://cluster.local/ns/ns/sa/other".parse().unwrap())
            .unwrap(),
    );
    let pool = Pool::new(PoolConfig::default(), mesh.ca.trust_bundle().unwrap());
    let r = pool
        .connect(ConnectRequest {
            source: certs,
            destination_identity: "spiffe://cluster.local/ns/ns/sa/server".parse().unwrap(),
            hbone_addr: net.hbone(),
            authority: net.app(),
            headers: ConnectHeaders::default().to_header_map(),
            socket_source: None,
        })
        .await;
    assert!(matches!(r, Err(Error::Status { status, .. }) if status.as_u16() == 401));

    mesh.expect_log("b", "denied by istio-system/deny-other");
    mesh.expect_log("b", "not allowed by ns/server-allow");
    mesh.expect_log(
        "b",
        "src.identity=spiffe://cluster.local/ns/blocked/sa/intruder",
    );
}

#[test]
fn validate_checks_policies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    let bad = POLICIES.replace("ports: [\"9000\"]", "ports: [\"http\"]");
    std::fs::write(&path, Net { b: 42 }.config() + &bad).unwrap();
    let (ok, _, err) = meshctl(&["validate", path.to_str().unwrap()], dir.path());
    assert!(!ok);
    assert!(
        err.contains("(AuthorizationPolicy ns/server-allow): spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port"),
        "{err}"
    );
}

/// One policy case: the extra config, and for each (source, port) whether it is allowed.
struct Case {
    name: &'static str,
    yaml: &'static str,
    /// (source index, port, allowed)
    expect: &'static [(usize, u16, bool)],
}

const SOURCES: [(&str, &str); 3] = [
    (
        "spiffe://cluster.local/ns/ns/sa/client",
        "127.43.1.10:40000",
    ),
    ("spiffe://cluster.local/ns/ns/sa/other", "127.43.1.11:40000"),
    (
        "spiffe://cluster.local/ns/blocked/sa/intruder",
        "127.43.3.12:40000",
    ),
];

const ALL: &[(usize, u16, bool)] = &[
    (0, 9000, true),
    (0, 9001, true),
    (1, 9000, true),
    (1, 9001, true),
    (2, 9000, true),
    (2, 9001, true),
];

const NONE: &[(usize, u16, bool)] = &[
    (0, 9000, false),
    (0, 9001, false),
    (1, 9000, false),
    (1, 9001, false),
    (2, 9000, false),
    (2, 9001, false),
];

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

const CASES: &[Case] = &[
    Case {
        name: "no policy",
        yaml: "",
        expect: ALL,
    },
    Case {
        name: "ALLOW by principal (selector)",
        yaml: "ns|a|  selector: {matchLabels: {app: server}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]}]",
        expect: &[
            (0, 9000, true),
            (0, 9001, true),
            (1, 9000, false),
            (2, 9001, false),
        ],
    },
    Case {
        name: "DENY by namespace (namespace scope)",
        yaml: "ns|d|  action: DENY\n  rules: [{from: [{source: {namespaces: [blocked]}}]}]",
        expect: &[
            (0, 9000, true),
            (1, 9001, true),
            (2, 9000, false),
            (2, 9001, false),
        ],
    },
    Case {
        name: "ALLOW by ipBlocks",
        yaml: "ns|a|  rules: [{from: [{source: {ipBlocks: [127.43.1.0/24]}}]}]",
        expect: &[(0, 9000, true), (1, 9000, true), (2, 9000, false)],
    },
    Case {
        name: "ALLOW to ports",
        yaml: "ns|a|  rules: [{to: [{operation: {ports: [\"9001\"]}}]}]",
        expect: &[
            (0, 9000, false),
            (0, 9001, true),
            (2, 9000, false),
            (2, 9001, true),
        ],
    },
    Case {
        name: "DENY notPorts",
        yaml: "ns|d|  action: DENY\n  rules: [{to: [{operation: {notPorts: [\"9000\"]}}]}]",
        expect: &[
            (0, 9000, true),
            (0, 9001, false),
            (2, 9000, true),
            (2, 9001, false),
        ],
    },
    Case {
        name: "ALLOW notPrincipals",
        yaml: "ns|a|  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/ns/sa/other]}}]}]",
        expect: &[(0, 9000, true), (1, 9000, false), (2, 9000, true)],
    },
    Case {
        name: "DENY notNamespaces",
        yaml: "ns|d|  action: DENY\n  rules: [{from: [{source: {notNamespaces: [ns]}}]}]",
        expect: &[(0, 9000, true), (1, 9000, true), (2, 9000, false)],
    },
    Case {
        name: "ALLOW notIpBlocks",
        yaml: "ns|a|  rules: [{from: [{source: {notIpBlocks: [127.43.1.11/32]}}]}]",
        expect: &[(0, 9000, true), (1, 9000, false), (2, 9000, true)],
    },
    Case {
        name: "mesh-wide DENY (root namespace)",
        yaml: "istio-system|d|  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]}]",
        expect: &[(0, 9000, false), (1, 9000, true), (2, 9001, true)],
    },
    Case {
        name: "mesh-wide ALLOW applies to every namespace",
        yaml: "istio-system|a|  rules: [{from: [{source: {namespaces: [ns]}}]}]",
        expect: &[(0, 9000, true), (1, 9001, true), (2, 9000, false)],
    },
    Case {
        name: "DENY over ALLOW",
        yaml: "ns|a|  rules: [{from: [{source: {principals: [\"*\"]}}]}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d2, namespace: ns}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/ns/sa/other]}}]}]",
        expect: &[(0, 9000, true), (1, 9000, false), (2, 9000, true)],
    },
    Case {
        name: "selector matching nothing leaves the server open",
        yaml: "ns|a|  selector: {matchLabels: {app: nothing}}\n  rules: [{from: [{source: {principals: [nobody]}}]}]",
        expect: ALL,
    },
    Case {
        name: "ALLOW with no rules allows nothing",
        yaml: "ns|a|  action: ALLOW",
        expect: NONE,
    },
    Case {
        name: "DENY with no rules denies nothing",
        yaml: "ns|d|  action: DENY",
        expect: ALL,
    },
    Case {
        name: "when destination.port and source.ip",
        yaml: "ns|a|  rules: [{when: [{key: destination.port, values: [\"9001\"]}, {key: source.ip, values: [127.43.1.10]}]}]",
        expect: &[(0, 9000, false), (0, 9001, true), (1, 9001, false)],
    },
    Case {
        name: "ALLOW using only HTTP fields is dropped at L4: fails closed",
        yaml: "ns|a|  rules: [{to: [{operation: {methods: [GET]}}]}]",
        expect: NONE,
    },
];

/// Expands `ns|name-suffix|spec` into a policy document.
fn case_yaml(c: &Case) -> String {
    if c.yaml.is_empty() {
        return String::new();
    }
    let mut parts = c.yaml.splitn(3, '|');
    let (ns, name, spec) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    policy(ns, &format!("p-{name}"), spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_matrix_outcomes_and_401() {
    let net = Net { b: 43 };
    let mut mesh = InprocMesh::new(&net.config());
    let accepted = echo_server(net.app()).await;
    echo_server(std::net::SocketAddr::new(net.server(), 9001)).await;
    mesh.ztunnel("b", &["--config-poll-interval", "50ms"]).await;
    let pool = Pool::new(PoolConfig::default(), mesh.ca.trust_bundle().unwrap());
    let stores: Vec<_> = SOURCES
        .iter()
        .map(|(id, _)| CertStore::fixed(mesh.ca.issue(&id.parse().unwrap()).unwrap()))
        .collect();
    let sources: Vec<Arc<dyn mesh_hbone::SocketSource>> = SOURCES
        .iter()
        .map(|(_, addr)| {
            let ip = addr.parse::<std::net::SocketAddr>().unwrap().ip();
            Arc::new(mesh_tests::bind::BindFrom(ip)) as Arc<dyn mesh_hbone::SocketSource>
        })
        .collect();
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        std::fs::write(&mesh.config, net.config() + &case_yaml(case)).unwrap();
        if i > 0 {
            mesh.expect_log("b", &format!("generation={}", i + 1));
        }
        for &(src, port, allowed) in case.expect {
            let r = pool
                .connect(ConnectRequest {
                    source: stores[src].clone(),
                    destination_identity: "spiffe://cluster.local/ns/ns/sa/server".parse().unwrap(),
                    hbone_addr: net.hbone(),
                    authority: std::net::SocketAddr::new(net.server(), port),
                    // The source address is the TCP peer's (a `Forwarded` header from a
                    // peer that is not the workload's waypoint is ignored).
                    headers: ConnectHeaders::default().to_header_map(),
                    socket_source: Some(sources[src].clone()),
                })
                .await;
            let outcome = match r {
                Ok(_) => "allowed".to_owned(),
                Err(Error::Status { status, .. }) if status.as_u16() == 401 => "401".to_owned(),
                Err(e) => format!("error {e}"),
            };
            let want = if allowed { "allowed" } else { "401" };
            if outcome != want {
                failures.push(format!(
                    "{}: {} -> :{port}: got {outcome}, want {want}",
                    case.name, SOURCES[src].0
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "policy matrix:\n{}",
        failures.join("\n")
    );
    // Refused connections never reached the app: it accepted exactly the allowed ones.
    let allowed_9000 = CASES
        .iter()
        .flat_map(|c| c.expect)
        .filter(|(_, port, allowed)| *allowed && *port == 9000)
        .count();
    for _ in 0..100 {
        if accepted.load(Ordering::SeqCst) >= allowed_9000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), allowed_9000);
}
