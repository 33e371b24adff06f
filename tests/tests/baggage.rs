//! `baggage` as Istio 1.29+'s ztunnel: the source's on the HBONE CONNECT, the destination's
//! own on the 200 (`ENABLE_RESPONSE_BAGGAGE`, `--response-baggage`), with istio/ztunnel
//! `src/baggage.rs`'s keys (`k8s.cluster.name`, `k8s.namespace.name`, `k8s.<kind>.name`,
//! `service.name`, `service.version`, `cloud.region`, `cloud.availability_zone`); and the
//! `istio_build` gauge (istio/ztunnel `src/metrics/meta.rs`). Loopback block 127.219.200.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use mesh_identity::CertStore;
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// The addresses of one test: each test (nextest runs them as parallel processes) has its
/// own 32 addresses of 127.219.200.x, from `o`.
#[derive(Clone, Copy)]
struct Addrs {
    o: u8,
}

impl Addrs {
    fn at(self, k: u8) -> String {
        format!("127.219.200.{}", self.o + k)
    }
    fn server(self) -> String {
        self.at(20)
    }
}

const APP_PORT: u16 = 9000;

/// Node `a` runs `ns/client` and binds service VIPs, node `b` runs `ns/server` (app on 9000,
/// service VIP at 30); both carry canonical
/// labels and a locality so every baggage key has a value.
fn config(n: Addrs) -> String {
    let (node_a, node_b, client, server, vip) = (n.at(1), n.at(2), n.at(10), n.server(), n.at(30));
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: {node_a}, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: {node_b}, workloads: [ns/server]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec:
  address: {client}
  serviceAccount: client
  locality: us-west1/us-west1-a
  labels: {{app: client, service.istio.io/canonical-name: client-svc, service.istio.io/canonical-revision: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: ns}}
spec:
  address: {server}
  serviceAccount: server
  locality: us-east1/us-east1-b
  labels: {{app: server, service.istio.io/canonical-name: server-svc, service.istio.io/canonical-revision: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: ns}}
spec:
  hosts: [server.ns.svc]
  addresses: [{vip}]
  ports: [{{number: {APP_PORT}, name: tcp, protocol: TCP}}]
  workloadSelector: {{labels: {{app: server}}}}
"#
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A raw HTTP/2 CONNECT over mTLS from `from` with the certificate of `identity`, to the
/// server's HBONE port, carrying `headers`: the 200's (or refusal's) status and headers,
/// and the send half to write on.
async fn raw_connect(
    mesh: &InprocMesh,
    n: Addrs,
    from: &str,
    identity: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, h2::SendStream<Bytes>) {
    let cert = mesh.ca.issue(&identity.parse().unwrap()).unwrap();
    let bundle = mesh.ca.trust_bundle().unwrap();
    let tls = mesh_identity::client_config(
        CertStore::fixed(cert),
        &bundle,
        "spiffe://cluster.local/ns/ns/sa/server".parse().unwrap(),
    )
    .unwrap();
    let server = n.server();
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip(from), 0)).unwrap();
    let tcp = sock
        .connect(SocketAddr::new(ip(&server), 15008))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(ip(&server).into());
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut req = Request::builder()
        .method("CONNECT")
        .uri(format!("{server}:{APP_PORT}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, stream) = send.send_request(req.body(()).unwrap(), false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    (resp.status(), resp.headers().clone(), stream)
}

/// The destination answers the 200 with its own workload's baggage, exactly Istio's keys in
/// Istio's order (istio/ztunnel `src/proxy/inbound.rs` `build_response`, and its test
/// `test_build_response_baggage_feature_gate`); a spoofed request baggage, from the real
/// client or from a certified peer at another address, changes none of the destination's
/// metric labels (ours are read from the mesh config and the mTLS identity only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_200_carries_the_destinations_baggage_and_spoofed_baggage_labels_nothing() {
    let n = Addrs { o: 0 };
    let mut mesh = InprocMesh::new(&config(n));
    echo_server(SocketAddr::new(ip(&n.server()), APP_PORT)).await;
    mesh.ztunnel("b", &[]).await;
    let spoof = "k8s.cluster.name=evil-c,k8s.namespace.name=evil-ns,k8s.deployment.name=evil-w,service.name=evil-s,service.version=evil-v,cloud.region=evil-r,cloud.availability_zone=evil-z";
    let client_id = "spiffe://cluster.local/ns/ns/sa/client";
    for (from, id) in [
        (n.at(10), client_id),
        (n.at(31), "spiffe://cluster.local/ns/other/sa/attacker"),
    ] {
        let (status, headers, mut send) =
            raw_connect(&mesh, n, &from, id, &[("baggage", spoof)]).await;
        assert_eq!(status, StatusCode::OK);
        let got: Vec<_> = headers.get_all("baggage").iter().collect();
        assert_eq!(
            got,
            [
                "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns,k8s.deployment.name=server,service.name=server-svc,service.version=v1,cloud.region=us-east1,cloud.availability_zone=us-east1-b"
            ],
            "from {from}"
        );
        send.send_data(Bytes::from_static(b"hi"), true).unwrap();
    }
    let text = scrape(&mesh, "b", |t| {
        t.contains(&format!("source_principal=\"{client_id}\""))
            && t.contains("ns/other/sa/attacker")
    })
    .await;
    assert!(!text.contains("evil"), "{text}");
    // The real client is labelled by the config, the unknown peer by its identity only.
    assert!(text.contains("source_workload=\"client\""), "{text}");
    assert!(
        text.contains("source_canonical_service=\"client-svc\""),
        "{text}"
    );
}

/// A plaintext workload cannot speak HBONE at all (Istio's ztunnel accepts HBONE only over
/// mTLS, istio/ztunnel `src/proxy/inbound.rs`): its HTTP/2 CONNECT with a forged `baggage`
/// is dropped at the TLS handshake and labels no metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_baggage_is_never_read() {
    let n = Addrs { o: 128 };
    let mut mesh = InprocMesh::new(&config(n));
    echo_server(SocketAddr::new(ip(&n.server()), APP_PORT)).await;
    mesh.ztunnel("b", &[]).await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip(&n.at(10)), 0)).unwrap();
    let tcp = sock
        .connect(SocketAddr::new(ip(&n.server()), 15008))
        .await
        .unwrap();
    let refused = async {
        let (send, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method("CONNECT")
            .uri(format!("{}:{APP_PORT}", n.server()))
            .header("baggage", "k8s.namespace.name=evil-ns,service.name=evil-s")
            .body(())
            .unwrap();
        let (resp, _s) = send.ready().await?.send_request(req, false)?;
        resp.await
    };
    let r = tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .unwrap();
    assert!(r.is_err(), "{r:?}");
    let text = mesh.proxy("b").metrics_text();
    assert!(!text.contains("evil"), "{text}");
    assert!(
        !text.contains("istio_tcp_connections_opened_total{"),
        "{text}"
    );
}

/// `--response-baggage false` (Istio's `ENABLE_RESPONSE_BAGGAGE=false`): no baggage on the 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_baggage_off_sends_none() {
    let n = Addrs { o: 32 };
    let mut mesh = InprocMesh::new(&config(n));
    echo_server(SocketAddr::new(ip(&n.server()), APP_PORT)).await;
    mesh.ztunnel("b", &["--response-baggage", "false"]).await;
    let (status, headers, _send) = raw_connect(
        &mesh,
        n,
        &n.at(10),
        "spiffe://cluster.local/ns/ns/sa/client",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("baggage").is_none(), "{headers:?}");
}

/// The source's CONNECT carries its baggage with every key Istio's ztunnel sends
/// (istio/ztunnel `src/proxy/outbound.rs` `create_hbone_request`, `Workload::baggage`): the
/// test plays the destination with a fake HBONE server holding the server's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_carries_the_sources_baggage() {
    let n = Addrs { o: 64 };
    let mut mesh = InprocMesh::new(&config(n));
    let seen = Arc::new(Mutex::new(None::<HeaderMap>));
    let cert = mesh
        .ca
        .issue(&"spiffe://cluster.local/ns/ns/sa/server".parse().unwrap())
        .unwrap();
    let tls = mesh_identity::server_config(
        CertStore::fixed(cert),
        &mesh.ca.trust_bundle().unwrap(),
        vec!["cluster.local".parse().unwrap()],
    )
    .unwrap();
    let l = TcpListener::bind(SocketAddr::new(ip(&n.server()), 15008))
        .await
        .unwrap();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let (io, info) = mesh_hbone::accept_tls(tcp, tls, Duration::from_secs(5))
            .await
            .unwrap();
        let settings = mesh_hbone::H2Settings::default();
        let _ =
            mesh_hbone::serve_connection(io, info, &settings, CancellationToken::new(), |req| {
                *seen2.lock().unwrap() = Some(req.headers.clone());
                async move { req.refuse(StatusCode::SERVICE_UNAVAILABLE) }
            })
            .await;
    });
    mesh.ztunnel("a", &[]).await;
    let mut s = connect_from(ip(&n.at(10)), SocketAddr::new(ip(&n.at(30)), APP_PORT))
        .await
        .unwrap();
    let _ = s.write_all(b"x").await;
    let headers = wait_for(|| seen.lock().unwrap().clone()).await;
    assert_eq!(
        headers.get("baggage").unwrap(),
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns,k8s.deployment.name=client,service.name=client-svc,service.version=v2,cloud.region=us-west1,cloud.availability_zone=us-west1-a"
    );
}

/// `istio_build{component,tag} 1` on `/metrics`: `ztunnel` for the node proxy (istio/ztunnel
/// `src/metrics/meta.rs`), `proxy` for the waypoint (Envoy-based in Istio).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_build_gauge_names_the_component() {
    let gw = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: ns}\nspec:\n  gatewayClassName: istio-waypoint\n  addresses: [{value: 127.219.200.99}]\n";
    let mut mesh = InprocMesh::new(&(config(Addrs { o: 96 }) + gw));
    mesh.ztunnel("a", &[]).await;
    let tag = env!("CARGO_PKG_VERSION");
    let text = mesh.proxy("a").metrics_text();
    assert!(
        text.contains(&format!(
            "istio_build{{component=\"ztunnel\",tag=\"{tag}\"}} 1\n"
        )),
        "{text}"
    );
    mesh.waypoint("wp", "ns/wp", &[]).await;
    let text = mesh.proxy("wp").metrics_text();
    assert!(
        text.contains(&format!(
            "istio_build{{component=\"proxy\",tag=\"{tag}\"}} 1\n"
        )),
        "{text}"
    );
}

async fn scrape(mesh: &InprocMesh, node: &str, ready: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let t = mesh.proxy(node).metrics_text();
        if ready(&t) {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metrics never ready:\n{}", mesh.proxy(node).metrics_text());
}

async fn wait_for<T>(f: impl Fn() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened");
}
