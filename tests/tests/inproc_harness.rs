//! The in-process harness itself ([`mesh_tests::inproc`]): each proxy core's logs are its own,
//! a new config applied through the handle changes what is served, metrics are read from the
//! handle, a stop drains cleanly; and a sidecar core runs inside its pod (root; skipped
//! otherwise). Block 127.190.x.x; namespaces `h2t-*`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_per_proxy_and_apply_changes_what_is_served() {
    let net = Net { b: 190 };
    let mut mesh = InprocMesh::new(&net.config());
    echo_server(net.app()).await;
    mesh.ztunnel("b", &["--metrics-port", "0"]).await;
    mesh.ztunnel("a", &["--socks5-port", "0"]).await;
    // Flags reach the core as they reach the binary's.
    let kinds: Vec<_> = mesh.proxy("a").listening().iter().map(|l| l.kind).collect();
    assert!(
        !kinds.contains(&mesh_dataplane::proxy::ListenerKind::Socks5),
        "{kinds:?}"
    );

    let mut s = connect_from(net.client(), net.vip()).await.unwrap();
    assert_eq!(exchange(&mut s, b"hello").await, b"hello");
    mesh.expect_log("a", r#""direction":"outbound""#);
    mesh.expect_log("b", r#""direction":"inbound""#);
    // Each proxy's lines are its own, as separate processes' would be.
    assert!(mesh.logs("a").contains("ztunnel ready node=a"));
    assert!(!mesh.logs("a").contains("node=b"), "{}", mesh.logs("a"));
    assert!(!mesh.logs("b").contains(r#""direction":"outbound""#));

    // Endpoints as the flags set them: b's metrics port is off, a's on the node address.
    assert_eq!(mesh.proxy("b").endpoints().metrics, None);
    let metrics_a = mesh.proxy("a").endpoints().metrics.unwrap();
    assert_eq!(metrics_a, SocketAddr::new(net.node_a(), 15020));
    let scraped = http_get(metrics_a, "/metrics").await;
    assert!(
        scraped.contains("istio_tcp_connections_opened_total"),
        "{scraped}"
    );
    let opened = metric(
        &mesh.proxy("b").metrics_text(),
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination")],
    );
    assert_eq!(opened, 1.0);

    // A config applied through the handle: node b now denies everything.
    let deny = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: istio-system}\nspec: {action: DENY, rules: [{}]}\n";
    let report = mesh
        .proxy("b")
        .apply_yaml(&(net.config() + deny))
        .await
        .unwrap();
    assert_eq!(report.generation, 2);
    let mut s = connect_from(net.client(), net.vip()).await.unwrap();
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 8];
    assert!(
        matches!(s.read(&mut buf).await, Ok(0) | Err(_)),
        "denied after apply"
    );
    mesh.expect_log("b", "denied by istio-system/deny-all");

    for p in &mut mesh.procs {
        assert!(p.stop().await, "{} stops cleanly", p.name);
    }
    assert!(mesh.proxy("a").core().is_none());
}

const CLIENT_IP: &str = "10.190.0.2";
const SERVER_IP: &str = "10.190.0.3";

fn sidecar_config() -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: {CLIENT_IP}, serviceAccount: client, labels: {{app: client, sidecar.istio.io/inject: "true"}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: ns}}
spec: {{address: {SERVER_IP}, serviceAccount: server, labels: {{app: server, sidecar.istio.io/inject: "true"}}}}
"#
    )
}

/// A sidecar core started with a pod listens inside it: its HBONE port answers on the pod's
/// address from the other pod, and the test's own namespace has no such address.
#[test]
fn sidecar_core_runs_inside_its_pod() {
    let Some(pa) = NetNs::create("h2t-ipa") else {
        return;
    };
    let Some(pb) = NetNs::create("h2t-ipb") else {
        return;
    };
    link_pods(
        &pa,
        &format!("{CLIENT_IP}/24"),
        &pb,
        &format!("{SERVER_IP}/24"),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut mesh = InprocMesh::new(&sidecar_config());
    rt.block_on(mesh.sidecar("b", "ns/server", Some(&pb.name), &[]));
    let hbone: SocketAddr = format!("{SERVER_IP}:15008").parse().unwrap();
    let listening = mesh.proxy("b").listening();
    assert!(listening.iter().any(|l| l.addr == hbone), "{listening:?}");
    let from_a = pa.block_on(move || async move { tokio::net::TcpStream::connect(hbone).await });
    assert!(from_a.is_ok(), "HBONE port of pod b from pod a: {from_a:?}");
    drop(mesh);
}
