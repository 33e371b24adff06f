//! Live configuration: the ztunnel watches its config file; a valid change applies at once
//! (policies close live connections they now deny; new listeners appear), an invalid one is
//! rejected with file, field and reason while the last good config keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DENY_CLIENT: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/ns/sa/client"]}}]
"#;

async fn round_trip(s: &mut tokio::net::TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && buf == msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_apply_live_and_bad_files_are_rejected() {
    let net = Net { b: 51 };
    let mut mesh = TestMesh::new(&net.config());
    echo_server(net.app()).await;
    mesh.ztunnel("b", &["--config-poll-interval", "100ms"]);
    mesh.ztunnel("a", &["--config-poll-interval", "100ms"]);

    let mut live = connect_from(net.client(), net.vip()).await.unwrap();
    assert!(round_trip(&mut live, b"before").await);

    // A DENY for the client closes the live connection within a second.
    std::fs::write(&mesh.config, net.config() + DENY_CLIENT).unwrap();
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), live.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "live connection closed");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "closed in {:?}",
        start.elapsed()
    );
    mesh.expect_log("b", "closing live connection: no longer allowed");
    mesh.expect_log("a", "generation=2");
    let mut fresh = connect_from(net.client(), net.vip()).await.unwrap();
    assert!(
        !round_trip(&mut fresh, b"denied").await,
        "new connections are denied"
    );

    // A broken file is rejected and the last good config (with the DENY) keeps serving.
    let broken = net
        .config()
        .replace("address: 127.51.1.20", "address: 127.51.1.300")
        + DENY_CLIENT;
    assert_ne!(broken, net.config() + DENY_CLIENT);
    std::fs::write(&mesh.config, &broken).unwrap();
    mesh.expect_log("b", "config rejected; the last good config keeps serving");
    mesh.expect_log("b", "spec.address: \"127.51.1.300\" is not an IP address");
    let mut still = connect_from(net.client(), net.vip()).await.unwrap();
    assert!(!round_trip(&mut still, b"still denied").await);

    // The fix applies: no DENY, and a second VIP for the service gets a listener on node a.
    let fixed = net.config().replace(
        "addresses: [127.51.2.1]",
        "addresses: [127.51.2.1, 127.51.2.2]",
    );
    std::fs::write(&mesh.config, &fixed).unwrap();
    mesh.expect_log("a", "generation=3 listeners_added=1");
    mesh.expect_log("b", "generation=3");
    let mut again = connect_from(net.client(), net.vip()).await.unwrap();
    assert!(round_trip(&mut again, b"allowed again").await);
    let vip2 = "127.51.2.2:9000".parse().unwrap();
    let mut second = connect_from(net.client(), vip2).await.unwrap();
    assert!(round_trip(&mut second, b"new listener").await);

    // The server workload changes identity at the same address: node b presents the new
    // certificate on its existing HBONE listener, which node a now expects.
    let renamed = fixed.replace("serviceAccount: server", "serviceAccount: server-v2");
    std::fs::write(&mesh.config, &renamed).unwrap();
    mesh.expect_log("a", "generation=4");
    mesh.expect_log("b", "generation=4");
    let mut renamed_conn = connect_from(net.client(), net.vip()).await.unwrap();
    assert!(round_trip(&mut renamed_conn, b"new identity").await);
    drop(renamed_conn); // the access log line is written when the connection ends
    mesh.expect_log(
        "a",
        r#""dst.identity":"spiffe://cluster.local/ns/ns/sa/server-v2""#,
    );
}
