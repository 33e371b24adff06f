//! Ambient L4 through a waypoint (real binaries): a service labelled `istio.io/use-waypoint`
//! is reached through the waypoint, whose identity the destination ztunnel sees (and its L4
//! policy judges); a client that skips the waypoint gets 401; opting out with `none` goes
//! direct again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{ConnectRequest, Error, Pool, PoolConfig};
use mesh_identity::CertStore;
use mesh_tests::*;

fn config(net: Net, use_waypoint: &str) -> String {
    let wp = format!("127.{}.0.3", net.b);
    net.config().replace(
        "metadata: {name: server, namespace: ns}\nspec:\n  hosts:",
        &format!(
            "metadata: {{name: server, namespace: ns, labels: {{istio.io/use-waypoint: {use_waypoint}}}}}\nspec:\n  hosts:"
        ),
    ) + &format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
  addresses: [{{value: {wp}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-via-waypoint, namespace: ns}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns/sa/wp, cluster.local/ns/ns/sa/client]}}}}]}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_traffic_goes_through_its_waypoint() {
    let net = Net { b: 65 };
    let yaml = config(net, "wp");
    assert!(yaml.contains("istio.io/use-waypoint: wp"), "{yaml}");
    let mut mesh = TestMesh::new(&yaml);
    echo_server(net.app()).await;
    mesh.ztunnel("b", &["--config-poll-interval", "100ms"]);
    mesh.waypoint("wp", "ns/wp", &["--config-poll-interval", "100ms"]);
    mesh.ztunnel("a", &["--config-poll-interval", "100ms"]);

    // Client → ztunnel a → waypoint → ztunnel b → server, bytes intact.
    let mut s = connect_from(net.client(), net.vip()).await.unwrap();
    assert_eq!(
        exchange(&mut s, b"via the waypoint").await,
        b"via the waypoint"
    );
    mesh.expect_log(
        "a",
        r#""dst.identity":"spiffe://cluster.local/ns/ns/sa/wp""#,
    );
    mesh.expect_log("a", r#""dst.hbone_addr":"127.65.0.3:15008""#);
    mesh.expect_log("wp", r#""direction":"waypoint""#);
    mesh.expect_log(
        "wp",
        r#""src.identity":"spiffe://cluster.local/ns/ns/sa/client""#,
    );
    // The destination sees the waypoint as the source, and the original client address.
    mesh.expect_log("b", r#""src.addr":"127.65.1.10:"#);
    mesh.expect_log(
        "b",
        r#""src.identity":"spiffe://cluster.local/ns/ns/sa/wp""#,
    );

    // Skipping the waypoint: HBONE straight to the destination ztunnel is refused.
    let pool = Pool::new(PoolConfig::default(), mesh.ca.trust_bundle().unwrap());
    let client = CertStore::fixed(
        mesh.ca
            .issue(&"spiffe://cluster.local/ns/ns/sa/client".parse().unwrap())
            .unwrap(),
    );
    let direct = pool
        .connect(ConnectRequest {
            source: client,
            destination_identity: "spiffe://cluster.local/ns/ns/sa/server".parse().unwrap(),
            hbone_addr: net.hbone(),
            authority: net.app(),
            headers: ConnectHeaders::default().to_header_map(),
        })
        .await;
    assert!(
        matches!(direct, Err(Error::Status { status, .. }) if status.as_u16() == 401),
        "{direct:?}"
    );
    mesh.expect_log("b", "must come through the workload's waypoint: 401");
    mesh.expect_log("b", "not from the workload's waypoint ns/wp (401)");

    // Opting the service out (`none`) sends traffic direct again.
    std::fs::write(&mesh.config, config(net, "none")).unwrap();
    mesh.expect_log("a", "generation=2");
    mesh.expect_log("b", "generation=2");
    let mut s = connect_from(net.client(), net.vip()).await.unwrap();
    assert_eq!(exchange(&mut s, b"direct again").await, b"direct again");
    mesh.expect_log("b", r#""bytes_sent":12"#);
}

#[test]
fn waypoint_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    let net = Net { b: 66 };
    let bad = config(net, "missing").replace(
        "gatewayClassName: istio-waypoint",
        "gatewayClassName: istio",
    );
    std::fs::write(&path, bad).unwrap();
    let (ok, _, err) = meshctl(&["validate", path.to_str().unwrap()], dir.path());
    assert!(!ok);
    assert!(
        err.contains(
            "spec.gatewayClassName: \"istio\": only waypoints (\"istio-waypoint\") are supported"
        ),
        "{err}"
    );
    assert!(
        err.contains("metadata.labels.istio.io/use-waypoint: no waypoint Gateway ns/missing"),
        "{err}"
    );
}
