//! The waypoint authorizes every stream it carries, not only HTTP requests: a client must not
//! get raw TCP to the app past the waypoint's policies by (a) sending a first line the sniffer
//! does not classify as HTTP on an undeclared port, (b) addressing a workload-waypoint's pod
//! IP, or (c) using a port declared TCP. Policies are read at L4 there, HTTP-only fields
//! failing closed (Istio's ztunnel reading): an ALLOW with `paths` matches no TCP stream, a
//! DENY applies without its HTTP fields.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The standard mesh, its server (service and workload) using waypoint `wp`, whose policy
/// is `policy` (an AuthorizationPolicy spec body, with `targetRefs`), and `port` as the
/// service's port entry.
fn config(net: Net, port: &str, waypoint_for: &str, policy: &str) -> String {
    let wp = format!("127.{}.0.3", net.b);
    let yaml = net.config().replace(
        "ports: [{number: 9000, name: tcp, protocol: TCP}]",
        &format!("ports: [{port}]"),
    );
    let yaml = if waypoint_for == "workload" {
        yaml.replace(
            "metadata: {name: server, namespace: ns}\nspec: {address",
            "metadata: {name: server, namespace: ns}\nspec: {labels: {app: server, istio.io/use-waypoint: wp}, address",
        )
        .replace(", labels: {app: server}}", "}")
    } else {
        yaml.replace(
            "metadata: {name: server, namespace: ns}\nspec:\n  hosts:",
            "metadata: {name: server, namespace: ns, labels: {istio.io/use-waypoint: wp}}\nspec:\n  hosts:",
        )
    };
    yaml + &format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns, labels: {{istio.io/waypoint-for: {waypoint_for}}}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
  addresses: [{{value: {wp}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: wp-policy, namespace: ns}}
spec:
{policy}
"#
    )
}

const ALLOW_CLIENT: &str = "  targetRefs: [{kind: Service, group: \"\", name: server}]\n  rules: [{from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]}]";
const DENY_CLIENT: &str = "  targetRefs: [{kind: Service, group: \"\", name: server}]\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]}]";
const ALLOW_HTTP_ONLY: &str = "  targetRefs: [{kind: Service, group: \"\", name: server}]\n  rules: [{to: [{operation: {paths: [\"/public*\"]}}]}]";
const GW_ALLOW_CLIENT: &str = "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n  rules: [{from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]}]";
const GW_DENY_CLIENT: &str = "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]}]";
const GW_ALLOW_HTTP_ONLY: &str = "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n  rules: [{to: [{operation: {methods: [GET]}}]}]";

/// Sends `data` (a non-HTTP first line), half-closes, and returns what came back before the
/// end or an error (a refused stream gives nothing).
async fn try_exchange(mut s: tokio::net::TcpStream, data: &[u8]) -> Vec<u8> {
    let _ = s.write_all(data).await;
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

const PAYLOAD: &[u8] = b"\x16\x03\x01 not http: a TLS-looking first line\n";

/// Runs the three policies in turn (reloading the config) and checks the outcome of
/// `attempt` under each: allowed by the L4 ALLOW, refused by the DENY and by the ALLOW that
/// only has HTTP fields.
async fn check_path<F, Fut>(net: Net, port: &str, wp_for: &str, policies: [&str; 3], attempt: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<u8>>,
{
    let mut mesh = InprocMesh::new(&config(net, port, wp_for, policies[0]));
    echo_server(net.app()).await;
    let poll = ["--config-poll-interval", "100ms"];
    mesh.ztunnel("b", &poll).await;
    mesh.waypoint("wp", "ns/wp", &poll).await;
    mesh.ztunnel("a", &poll).await;
    assert_eq!(attempt().await, PAYLOAD, "allowed at L4: carried");
    for (generation, policy) in [(2, policies[1]), (3, policies[2])] {
        std::fs::write(&mesh.config, config(net, port, wp_for, policy)).unwrap();
        for node in ["a", "b", "wp"] {
            mesh.expect_log(node, &format!("generation={generation}"));
        }
        assert_eq!(attempt().await, b"", "refused under\n{policy}");
    }
    mesh.expect_log("wp", "denied by ns/wp-policy");
    mesh.expect_log("wp", "no ALLOW policy matched");
}

/// (a) An undeclared port (sniffed): a non-HTTP first line is carried as TCP, and judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_first_line_on_undeclared_port_cannot_bypass_waypoint_policy() {
    let net = Net { b: 132 };
    let attempt = || async move {
        let s = connect_from(net.client(), net.vip()).await.unwrap();
        try_exchange(s, PAYLOAD).await
    };
    let policies = [ALLOW_CLIENT, DENY_CLIENT, ALLOW_HTTP_ONLY];
    check_path(
        net,
        "{number: 9000, name: other}",
        "service",
        policies,
        attempt,
    )
    .await;
}

/// (b) A workload waypoint: the client addresses the pod IP (through SOCKS5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_ip_of_workload_waypoint_cannot_bypass_waypoint_policy() {
    let net = Net { b: 133 };
    let attempt = || async move {
        let server = net.server().to_string();
        match socks5_connect(net.client(), net.socks(), &server, 9000).await {
            Ok(s) => try_exchange(s, PAYLOAD).await,
            Err(_) => Vec::new(),
        }
    };
    let policies = [GW_ALLOW_CLIENT, GW_DENY_CLIENT, GW_ALLOW_HTTP_ONLY];
    let port = "{number: 9000, name: tcp, protocol: TCP}";
    check_path(net, port, "workload", policies, attempt).await;
}

/// (c) A port declared TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_tcp_port_cannot_bypass_waypoint_policy() {
    let net = Net { b: 134 };
    let attempt = || async move {
        let s = connect_from(net.client(), net.vip()).await.unwrap();
        try_exchange(s, PAYLOAD).await
    };
    let policies = [ALLOW_CLIENT, DENY_CLIENT, ALLOW_HTTP_ONLY];
    let port = "{number: 9000, name: tcp, protocol: TCP}";
    check_path(net, port, "service", policies, attempt).await;
}
