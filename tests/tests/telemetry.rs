//! Telemetry: Istio metrics on both reporters equal the traffic the test sent (bytes counted
//! while a connection is open), refusals carry `DENY`, config rejections are counted and shown
//! in `/config_dump` (in-process proxy cores); the admin endpoints and readiness answer, the log
//! level changes at run time, and `meshctl proxy-config` renders a running proxy (the binary).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQ: usize = 5000;
const RESP: usize = 3000;

fn at(ip: std::net::IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_equal_the_traffic_on_both_reporters() {
    let net = Net { b: 61 };
    let mut mesh = InprocMesh::new(&net.config());
    let payload = Arc::new(random_bytes(RESP));
    let mut rx = sink_server(net.app(), payload).await;
    mesh.ztunnel("b", &["--config-poll-interval", "100ms"])
        .await;
    mesh.ztunnel("a", &["--config-poll-interval", "100ms"])
        .await;
    let (ma, mb) = (at(net.node_a(), 15020), at(net.node_b(), 15020));

    let request = random_bytes(REQ);
    for _ in 0..3 {
        let mut s = connect_from(net.client(), net.vip()).await.unwrap();
        let got = exchange(&mut s, &request).await;
        assert_eq!(got.len(), RESP);
        assert_eq!(rx.recv().await.unwrap().received_len, REQ);
    }
    let common: &[(&str, &str)] = &[
        ("source_workload", "client"),
        ("source_workload_namespace", "ns"),
        ("source_principal", "spiffe://cluster.local/ns/ns/sa/client"),
        ("source_app", "client"),
        ("source_version", "latest"),
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "latest"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "server"),
        ("destination_workload_namespace", "ns"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/ns/sa/server",
        ),
        ("destination_app", "server"),
        ("destination_version", "latest"),
        ("destination_service", "server.ns.svc"),
        ("destination_service_name", "server"),
        ("destination_service_namespace", "ns"),
        ("destination_canonical_service", "server"),
        ("destination_canonical_revision", "latest"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    for (addr, reporter) in [(ma, "source"), (mb, "destination")] {
        let mut want = common.to_vec();
        want.push(("reporter", reporter));
        let closed = |t: &str| metric(t, "istio_tcp_connections_closed_total", &want) == 3.0;
        let text = scrape_until(addr, "3 closed connections", closed).await;
        assert_eq!(
            metric(&text, "istio_tcp_connections_opened_total", &want),
            3.0,
            "{reporter}:\n{text}"
        );
        assert_eq!(
            metric(&text, "istio_tcp_received_bytes_total", &want),
            (3 * REQ) as f64,
            "{reporter}:\n{text}"
        );
        assert_eq!(
            metric(&text, "istio_tcp_sent_bytes_total", &want),
            (3 * RESP) as f64,
            "{reporter}:\n{text}"
        );
        // Each reporter records only its own side.
        let other = if reporter == "source" {
            "destination"
        } else {
            "source"
        };
        assert_eq!(
            metric(
                &text,
                "istio_tcp_connections_opened_total",
                &[("reporter", other)]
            ),
            0.0
        );
        assert!(
            metric(&text, "process_resident_memory_bytes", &[]) > 1e6,
            "{text}"
        );
        assert!(
            metric(&text, "process_cpu_seconds_total", &[]) > 0.0,
            "{text}"
        );
        assert_eq!(metric(&text, "mesh_config_generation", &[]), 1.0);
    }
    // Istio's scrape path serves the same registry.
    let prom = http_get(mb, "/stats/prometheus").await;
    assert!(prom.contains("istio_tcp_connections_opened_total{reporter=\"destination\""));

    // Bytes are counted while the connection is open.
    let mut live = connect_from(net.client(), net.vip()).await.unwrap();
    live.write_all(&request[..1000]).await.unwrap();
    let dst = [("reporter", "destination"), ("response_flags", "-")];
    let text = scrape_until(mb, "live request bytes", |t| {
        metric(t, "istio_tcp_received_bytes_total", &dst) == (3 * REQ + 1000) as f64
    })
    .await;
    assert_eq!(
        metric(&text, "istio_tcp_connections_opened_total", &dst),
        4.0
    );
    assert_eq!(
        metric(&text, "istio_tcp_connections_closed_total", &dst),
        3.0
    );
    live.shutdown().await.unwrap();
    let mut rest = Vec::new();
    live.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest.len(), RESP);
    scrape_until(mb, "4 closed", |t| {
        metric(t, "istio_tcp_connections_closed_total", &dst) == 4.0
    })
    .await;

    // A denied connection: opened with "-", closed with DENY, on both reporters.
    let deny = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: ns}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/ns/sa/client"]}}]}]
"#;
    std::fs::write(&mesh.config, net.config() + deny).unwrap();
    mesh.expect_log("b", "generation=2");
    let mut s = connect_from(net.client(), net.vip()).await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        s.read(&mut buf).await.unwrap_or(0),
        0,
        "denied connection closed"
    );
    for (addr, reporter) in [(mb, "destination"), (ma, "source")] {
        let want = [
            ("reporter", reporter),
            ("response_flags", "DENY"),
            ("source_workload", "client"),
        ];
        scrape_until(addr, "a DENY close", |t| {
            metric(t, "istio_tcp_connections_closed_total", &want) == 1.0
        })
        .await;
    }
    mesh.expect_log(
        "b",
        r#""outcome":"refused","reason":"denied by ns/deny-client (401)""#,
    );

    // A broken config is counted and shown; the last good one keeps serving.
    std::fs::write(
        &mesh.config,
        net.config().replace("9000, name: tcp", "0, name: tcp"),
    )
    .unwrap();
    mesh.expect_log("b", "config rejected");
    let text = scrape_until(mb, "a config rejection", |t| {
        metric(t, "mesh_config_rejected_total", &[]) == 1.0
    })
    .await;
    assert_eq!(metric(&text, "mesh_config_generation", &[]), 2.0);
    let dump: serde_json::Value =
        serde_json::from_str(&http_get(at(net.node_b(), 15000), "/config_dump").await).unwrap();
    assert_eq!(dump["configRejections"]["total"], 1);
    let err = dump["configRejections"]["last"]["error"].as_str().unwrap();
    assert!(
        err.contains("mesh.yaml") && err.contains("spec.ports[0].number"),
        "{err}"
    );
    assert_eq!(
        dump["generation"], 2,
        "the last good config is still in force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_readiness_and_proxy_config() {
    let net = Net { b: 63 };
    let mut mesh = TestMesh::new(
        &(net.config()
            + r#"
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server-db-port, namespace: ns}
spec:
  selector: {matchLabels: {app: server}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {"5432": {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: ns}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/ns/sa/client"]}}]}]
"#),
    );
    mesh.ztunnel("b", &[]);
    let admin = at(net.node_b(), 15000);
    assert_eq!(
        http_get(at(net.node_b(), 15021), "/healthz/ready").await,
        "ready\n"
    );

    let text = http_get(admin, "/config_dump").await;
    assert!(!text.contains("PRIVATE KEY"), "no key material in the dump");
    let dump: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dump["node"], "b");
    assert_eq!(dump["workloads"].as_array().unwrap().len(), 2);
    let server = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "server")
        .unwrap();
    assert_eq!(server["local"], true);
    assert_eq!(server["authorizationPolicies"][0], "ns/allow-client");
    assert_eq!(server["mtls"]["mode"], "PERMISSIVE");
    assert_eq!(server["mtls"]["ports"]["5432"], "STRICT");
    assert_eq!(dump["services"][0]["endpoints"][0], "ns/server:9000");
    assert_eq!(dump["authorizationPolicies"][0]["action"], "ALLOW");
    let cert = &dump["certificates"][0];
    assert_eq!(cert["identity"], "spiffe://cluster.local/ns/ns/sa/server");
    assert!(cert["expiresInSeconds"].as_u64().unwrap() > 23 * 3600);
    assert!(
        cert["chain"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let certs: serde_json::Value = serde_json::from_str(&http_get(admin, "/certs").await).unwrap();
    assert_eq!(
        certs[0]["identity"],
        "spiffe://cluster.local/ns/ns/sa/server"
    );

    // Log level at run time.
    assert_eq!(
        http_get(admin, "/logging").await,
        "current log level is debug,h2=info,rustls=info\n"
    );
    let (status, body) = http(admin, "POST", "/logging?level=info,access=debug")
        .await
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "current log level is info,access=debug\n")
    );
    let (status, body) = http(admin, "POST", "/logging?level=%3D%3D").await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("Invalid level provided"), "{body}");
    assert_eq!(
        http(admin, "GET", "/logging?level=debug").await.unwrap().0,
        405
    );
    assert_eq!(http(admin, "GET", "/nope").await.unwrap().0, 404);
    // Admin is on loopback only; metrics and readiness are not admin.
    assert_eq!(
        http(at(net.node_b(), 15020), "GET", "/config_dump")
            .await
            .unwrap()
            .0,
        404
    );

    let (ok, out, err) = meshctl(&["proxy-config", &admin.to_string()], mesh.dir.path());
    assert!(ok, "{out}\n{err}");
    for needle in [
        "node b  generation 1",
        "WORKLOADS (2)",
        "SERVICES (1)",
        "AUTHORIZATION POLICIES (1)",
        "PEER AUTHENTICATION (1)",
        "CERTIFICATES (1)",
        "spiffe://cluster.local/ns/ns/sa/server",
        "PERMISSIVE (5432=STRICT)",
        "ns/allow-client",
        "selector app=server",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    let (ok, _, err) = meshctl(&["proxy-config", "127.63.0.9:15000"], mesh.dir.path());
    assert!(
        !ok && err.contains("cannot connect to 127.63.0.9:15000"),
        "{err}"
    );
}
