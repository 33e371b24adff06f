//! Tests in network namespaces the test creates (root only; skipped with a printed reason
//! otherwise). They run one at a time in the `netns` nextest group.
//!
//! - PeerAuthentication: a plaintext client outside the mesh is DNAT-ed to the node's
//!   plaintext inbound port (Istio's 15006); STRICT refuses it, PERMISSIVE delivers it, at
//!   mesh, namespace, workload and port scope, and L4 policy still applies to it.
//! - The admin endpoint is never reachable on a non-loopback address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `msg` from `src` to `dst` and returns what came back before EOF (empty when the
/// connection was refused or closed without an answer).
async fn echo_from(src: std::net::IpAddr, dst: SocketAddr, msg: &'static [u8]) -> Vec<u8> {
    let Ok(mut s) = connect_from(src, dst).await else {
        return Vec::new();
    };
    let _ = s.write_all(msg).await;
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

const LEGACY: &str = "127.62.1.30";

fn config(net: &Net, extra: &str) -> String {
    format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: legacy, namespace: other}}
spec: {{address: {LEGACY}, labels: {{app: legacy}}}}
{extra}",
        net.config()
    )
}

const MESH_STRICT: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";
const NS_PERMISSIVE: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: ns}
spec: {mtls: {mode: PERMISSIVE}}
";
const PORT_STRICT: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server-9001, namespace: ns}
spec:
  selector: {matchLabels: {app: server}}
  portLevelMtls: {\"9001\": {mode: STRICT}}
";
const ALLOW_CLIENT: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: ns}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: [\"cluster.local/ns/ns/sa/client\"]}}]}]
";

#[test]
fn peer_authentication_strict_and_permissive() {
    let Some(ns) = NetNs::create("mesh-t62") else {
        return;
    };
    let net = Net { b: 62 };
    // Capture: the legacy client's connections to the server workload go to node b's
    // plaintext inbound port, as Istio's in-pod redirection sends them to 15006.
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-s",
        LEGACY,
        "-d",
        &net.server().to_string(),
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{}:15006", net.node_b()),
    ]);
    let rt = ns.runtime();
    let mut mesh = TestMesh::new(&config(&net, ""));
    mesh.netns = Some(ns.name.clone());
    let app9001 = SocketAddr::new(net.server(), 9001);
    rt.block_on(rt.spawn(async move {
        echo_server(net.app()).await;
        echo_server(app9001).await;
    }))
    .unwrap();
    mesh.ztunnel("b", &["--config-poll-interval", "100ms"]);
    mesh.ztunnel("a", &["--config-poll-interval", "100ms"]);
    let legacy: std::net::IpAddr = LEGACY.parse().unwrap();
    let plain = |dst: SocketAddr, msg: &'static [u8]| {
        rt.block_on(rt.spawn(echo_from(legacy, dst, msg))).unwrap()
    };
    let mesh_client = |msg: &'static [u8]| {
        rt.block_on(rt.spawn(echo_from(net.client(), net.vip(), msg)))
            .unwrap()
    };

    // No PeerAuthentication: PERMISSIVE, plaintext is delivered.
    assert_eq!(
        plain(net.app(), b"permissive by default"),
        b"permissive by default"
    );
    mesh.expect_log("b", r#""src.workload":"legacy","src.namespace":"other""#);
    mesh.expect_log("b", r#""security":"unknown""#);

    let mut generation = 1;
    let mut apply = |mesh: &TestMesh, extra: &str| {
        std::fs::write(&mesh.config, config(&net, extra)).unwrap();
        generation += 1;
        mesh.expect_log("b", &format!("generation={generation}"));
    };

    // A live plaintext connection is closed when STRICT lands.
    let live = rt
        .block_on(rt.spawn(async move {
            let mut s = connect_from(legacy, net.app()).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s
        }))
        .unwrap();

    // Mesh-wide STRICT: plaintext refused, mTLS (HBONE) still works.
    apply(&mesh, MESH_STRICT);
    let closed = rt
        .block_on(rt.spawn(async move {
            let mut live = live;
            let mut b = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(2), live.read(&mut b)).await
        }))
        .unwrap();
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "live plaintext closed: {closed:?}"
    );
    mesh.expect_log(
        "b",
        "closing live connection: no longer allowed by the new policies",
    );
    mesh.expect_log("b", "PeerAuthentication is STRICT");
    assert_eq!(
        plain(net.app(), b"strict"),
        b"",
        "plaintext refused under STRICT"
    );
    mesh.expect_log("b", "plaintext refused: PeerAuthentication STRICT");
    assert_eq!(mesh_client(b"mtls ok"), b"mtls ok");

    // Namespace PERMISSIVE overrides the mesh's STRICT.
    apply(&mesh, &format!("{MESH_STRICT}{NS_PERMISSIVE}"));
    assert_eq!(plain(net.app(), b"ns permissive"), b"ns permissive");

    // A workload policy makes only port 9001 STRICT (its mode inherits PERMISSIVE).
    apply(&mesh, &format!("{MESH_STRICT}{NS_PERMISSIVE}{PORT_STRICT}"));
    assert_eq!(plain(net.app(), b"port 9000 open"), b"port 9000 open");
    assert_eq!(plain(app9001, b"port 9001 strict"), b"", "9001 is STRICT");

    // Authorization still applies to plaintext: a principal can't match without mTLS.
    apply(&mesh, &format!("{NS_PERMISSIVE}{ALLOW_CLIENT}"));
    assert_eq!(
        plain(net.app(), b"no identity"),
        b"",
        "ALLOW by principal refuses plaintext"
    );
    mesh.expect_log("b", "not allowed by ns/only-client");
    assert_eq!(mesh_client(b"client allowed"), b"client allowed");

    // Refusals are counted as DENY with the plaintext security policy.
    let metrics = SocketAddr::new(net.node_b(), 15020);
    let text = rt
        .block_on(rt.spawn(async move { http_get(metrics, "/metrics").await }))
        .unwrap();
    let want = [
        ("reporter", "destination"),
        ("source_workload", "legacy"),
        ("source_principal", "unknown"),
        ("connection_security_policy", "unknown"),
        ("response_flags", "DENY"),
    ];
    assert_eq!(
        metric(&text, "istio_tcp_connections_closed_total", &want),
        3.0,
        "{text}"
    );
    let ok = [("source_workload", "legacy"), ("response_flags", "-")];
    assert_eq!(
        metric(&text, "istio_tcp_received_bytes_total", &ok),
        52.0,
        "{text}"
    );
    drop(mesh);
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Plaintext inbound used to decide, then connect to the app, then register the connection:
/// a DENY applied while the app was slow to accept was never applied to it. Now it is
/// registered first, so the DENY landing during the connect closes it before a byte reaches
/// the app.
#[test]
fn deny_landing_during_a_slow_app_connect_closes_plaintext() {
    let Some(ns) = NetNs::create("mesh-t136") else {
        return;
    };
    let net = Net { b: 136 };
    let dnat = format!("{}:15006", net.node_b());
    let server = net.server().to_string();
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-s",
        LEGACY_136,
        "-d",
        &server,
        "-j",
        "DNAT",
        "--to-destination",
        &dnat,
    ]);
    let legacy = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: legacy, namespace: other}}\nspec: {{address: {LEGACY_136}, labels: {{app: legacy}}}}\n"
    );
    let deny = format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-legacy, namespace: ns}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n  action: DENY\n  rules: [{{from: [{{source: {{ipBlocks: [{LEGACY_136}/32]}}}}]}}]\n"
    );
    let rt = ns.runtime();
    let mut mesh = TestMesh::new(&(net.config() + &legacy));
    mesh.netns = Some(ns.name.clone());
    let accepted = rt
        .block_on(rt.spawn(async move { echo_server(net.app()).await }))
        .unwrap();
    mesh.ztunnel("b", &["--config-poll-interval", "50ms"]);
    let src: std::net::IpAddr = LEGACY_136.parse().unwrap();
    assert_eq!(
        rt.block_on(rt.spawn(echo_from(src, net.app(), b"before")))
            .unwrap(),
        b"before",
        "delivered while allowed"
    );
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);

    // The app is slow to accept: its SYNs are dropped for a while (the proxy's connect hangs).
    let drop_syn = |op: &str| {
        ns.run(&[
            "iptables", "-t", "filter", op, "OUTPUT", "-p", "tcp", "-d", &server, "--dport",
            "9000", "--syn", "-j", "DROP",
        ])
    };
    drop_syn("-A");
    let attempt = rt.spawn(echo_from(src, net.app(), b"during the connect"));
    std::thread::sleep(Duration::from_millis(300));
    // The DENY lands while the proxy is still connecting; then the app accepts again (the
    // SYN retransmitted at ~1 s gets through, well within the 5 s connect timeout).
    std::fs::write(&mesh.config, net.config() + &legacy + &deny).unwrap();
    mesh.expect_log("b", "generation=2");
    drop_syn("-D");
    let got = rt.block_on(attempt).unwrap();
    assert_eq!(
        got, b"",
        "the DENY applied to the connection being connected"
    );
    mesh.expect_log(
        "b",
        "no longer allowed by the new policies (during connect)",
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) <= before + 1,
        "at most the bare connect reached the app"
    );
    drop(mesh);
    rt.shutdown_timeout(Duration::from_secs(1));
}

const LEGACY_136: &str = "127.136.1.30";

#[test]
fn admin_is_never_on_a_non_loopback_address() {
    let Some(ns) = NetNs::create("mesh-t64") else {
        return;
    };
    // A non-loopback address that exists only inside the test's namespace.
    ns.run(&[
        "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    ns.pod()
        .address("d0", &["192.0.2.1/24", "192.0.2.10/24"])
        .unwrap();
    ns.run(&["ip", "link", "set", "d1", "up"]);
    let yaml = r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {name: n}
spec: {address: 192.0.2.1, workloads: [ns/w]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w, namespace: ns}
spec: {address: 192.0.2.10}
"#;
    let mut mesh = TestMesh::new(yaml);
    mesh.netns = Some(ns.name.clone());

    // Asking for a non-loopback admin address is refused at start.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(bin("ztunnel"))
        .arg("--config")
        .arg(&mesh.config)
        .args(["--node", "n", "--ca-dir"])
        .arg(mesh.ca_dir())
        .args(["--admin-addr", "192.0.2.1:15000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("admin address 192.0.2.1:15000 is not a loopback address"),
        "{err}"
    );

    // By default a node with a non-loopback address serves admin on 127.0.0.1 only.
    mesh.ztunnel("n", &[]);
    mesh.expect_log("n", "admin endpoint listening addr=127.0.0.1:15000");
    let rt = ns.runtime();
    let (outside, inside, metrics) = rt
        .block_on(rt.spawn(async {
            let outside = tokio::net::TcpStream::connect("192.0.2.1:15000")
                .await
                .is_ok();
            let inside = http_get("127.0.0.1:15000".parse().unwrap(), "/config_dump").await;
            let metrics = http_get("192.0.2.1:15020".parse().unwrap(), "/metrics").await;
            (outside, inside, metrics)
        }))
        .unwrap();
    assert!(!outside, "admin must not accept on 192.0.2.1");
    assert!(inside.contains("\"node\": \"n\""), "{inside}");
    assert!(metrics.contains("process_cpu_seconds_total"));
    drop(mesh);
    rt.shutdown_timeout(Duration::from_secs(1));
}
