//! L4 authorization enforced by the destination ztunnel (real binaries): ALLOW by principal
//! and port, DENY before ALLOW, 401 to the HBONE client, SOCKS5 "not allowed" to the app.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{ConnectRequest, Error, Pool, PoolConfig};
use mesh_identity::CertStore;
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
    let mut mesh = TestMesh::new(&config(net));
    let accepted = echo_server(net.app()).await;
    mesh.ztunnel("b", &[]);
    mesh.ztunnel("a", &[]);

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
