//! Ambient L4 through a waypoint (real binaries): a service labelled `istio.io/use-waypoint`
//! is reached through the waypoint, whose identity the destination ztunnel sees (and its L4
//! policy judges); a client that skips the waypoint gets 401; opting out with `none` goes
//! direct again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{ConnectRequest, Error, Pool, PoolConfig};
use mesh_identity::CertStore;
use mesh_tests::inproc::InprocMesh;
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
    let mut mesh = InprocMesh::new(&yaml);
    echo_server(net.app()).await;
    mesh.ztunnel("b", &["--config-poll-interval", "100ms"])
        .await;
    mesh.waypoint("wp", "ns/wp", &["--config-poll-interval", "100ms"])
        .await;
    mesh.ztunnel("a", &["--config-poll-interval", "100ms"])
        .await;

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
            socket_source: None,
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

/// A direct tunnel opened before the workload got a waypoint must not outlive the change: the
/// destination closes it when the waypoint is attached (else a peer could hold it and skip the
/// waypoint's L7 policy for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_opened_before_a_waypoint_is_attached_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let net = Net { b: 143 };
    let mut mesh = InprocMesh::new(&config(net, "none"));
    echo_server(net.app()).await;
    mesh.ztunnel("b", &["--config-poll-interval", "100ms"])
        .await;
    let pool = Pool::new(PoolConfig::default(), mesh.ca.trust_bundle().unwrap());
    let client = CertStore::fixed(
        mesh.ca
            .issue(&"spiffe://cluster.local/ns/ns/sa/client".parse().unwrap())
            .unwrap(),
    );
    let mut tunnel = pool
        .connect(ConnectRequest {
            source: client,
            destination_identity: "spiffe://cluster.local/ns/ns/sa/server".parse().unwrap(),
            hbone_addr: net.hbone(),
            authority: net.app(),
            headers: ConnectHeaders::default().to_header_map(),
            socket_source: None,
        })
        .await
        .unwrap();
    tunnel.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping", "direct while no waypoint is attached");
    std::fs::write(&mesh.config, config(net, "wp")).unwrap();
    mesh.expect_log("b", "generation=2");
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), tunnel.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "the direct tunnel is closed once the waypoint is attached: {r:?}"
    );
    mesh.expect_log("b", "not from the workload's waypoint");
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

fn l7_config(b: u8) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.{b}.0.1, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.{b}.0.2, workloads: [ns/web1, ns/web2]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.{b}.1.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web1, namespace: ns}}
spec: {{address: 127.{b}.1.21, serviceAccount: web, labels: {{app: web, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web2, namespace: ns}}
spec: {{address: 127.{b}.1.22, serviceAccount: web, labels: {{app: web, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [web.ns.svc]
  addresses: [127.{b}.2.1]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web-v1, namespace: ns}}
spec:
  hosts: [web-v1.ns.svc]
  addresses: [127.{b}.2.2]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web-v2, namespace: ns}}
spec:
  hosts: [web-v2.ns.svc]
  addresses: [127.{b}.2.3]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web, version: v2}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: 127.{b}.0.3}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: ns}}
spec:
  hosts: [web.ns.svc]
  http:
  - name: testers
    match: [{{headers: {{x-user: {{exact: tester}}}}}}]
    route: [{{destination: {{host: web-v2.ns.svc}}}}]
  - name: maintenance
    match: [{{uri: {{prefix: /maintenance}}}}]
    directResponse: {{status: 503, body: {{string: down for maintenance}}}}
  - name: old-paths
    match: [{{uri: {{prefix: /old/}}}}]
    rewrite: {{uri: /new/, authority: web.internal}}
    headers: {{response: {{set: {{x-route: old-paths}}}}}}
    route: [{{destination: {{host: web-v1.ns.svc}}}}]
  - name: round-robin
    match: [{{uri: {{prefix: /rr}}}}]
    route: [{{destination: {{host: web.ns.svc}}}}]
  - name: split
    route:
    - destination: {{host: web.ns.svc, subset: v1}}
      weight: 80
    - destination: {{host: web.ns.svc, subset: v2}}
      weight: 20
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: ns}}
spec:
  host: web.ns.svc
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: audit-items, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, name: web}}]
  action: AUDIT
  rules: [{{to: [{{operation: {{paths: ["/item/7"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reads-only, namespace: ns}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: wp}}]
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/ns/sa/client]}}}}]
    to: [{{operation: {{methods: [GET, HEAD]}}}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routing_at_the_waypoint() {
    let b = 67;
    let mut mesh = InprocMesh::new(&l7_config(b));
    http_app(format!("127.{b}.1.21:8080").parse().unwrap(), "v1").await;
    http_app(format!("127.{b}.1.22:8080").parse().unwrap(), "v2").await;
    let info: [&str; 0] = [];
    mesh.ztunnel("b", &info).await;
    mesh.waypoint("wp", "ns/wp", &info).await;
    mesh.ztunnel("a", &info).await;
    let client: std::net::IpAddr = format!("127.{b}.1.10").parse().unwrap();
    let vip: std::net::SocketAddr = format!("127.{b}.2.1:80").parse().unwrap();
    let mut s = tokio::io::BufReader::new(connect_from(client, vip).await.unwrap());

    // 80/20 split over 2000 requests on one keep-alive connection.
    let mut v2 = 0;
    for i in 0..2000 {
        let (status, _, body) =
            http_request(&mut s, "GET", &format!("/item/{i}"), "web.ns.svc", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.ends_with(&format!("GET /item/{i} host=web.ns.svc")),
            "{body}"
        );
        if body.starts_with("v2 ") {
            v2 += 1;
        }
    }
    assert!(
        (320..=480).contains(&v2),
        "v2 got {v2} of 2000 (want 20% ± 4%)"
    );

    // A header match sends testers to v2 only.
    for _ in 0..20 {
        let (_, _, body) =
            http_request(&mut s, "GET", "/", "web.ns.svc", &[("x-user", "tester")]).await;
        assert!(body.starts_with("v2 "), "{body}");
    }
    // A rewrite of path and authority, with a response header added by the route.
    let (status, headers, body) =
        http_request(&mut s, "GET", "/old/page?q=1", "web.ns.svc", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, "v1 GET /new/page?q=1 host=web.internal");
    assert!(
        headers.contains(&("x-route".into(), "old-paths".into())),
        "{headers:?}"
    );
    // DestinationRule ROUND_ROBIN over the service's endpoints alternates exactly.
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (_, _, body) = http_request(&mut s, "GET", "/rr", "web.ns.svc", &[]).await;
        seen.push(body[..2].to_owned());
    }
    assert_eq!(seen.iter().filter(|v| *v == "v1").count(), 5, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "alternates: {seen:?}"
    );
    // A direct response never reaches an app.
    let (status, headers, body) =
        http_request(&mut s, "GET", "/maintenance/x", "web.ns.svc", &[]).await;
    assert_eq!((status, body.as_str()), (503, "down for maintenance"));
    assert!(!headers.iter().any(|(k, _)| k == "x-app"));

    // L7 DENY on /admin*, after path normalization; case-sensitive as Istio.
    for p in [
        "/admin",
        "//admin",
        "/%2Fadmin",
        "/x/../admin",
        "/admin/users",
        "/%61dmin",
    ] {
        let (status, headers, body) = http_request(&mut s, "GET", p, "web.ns.svc", &[]).await;
        assert_eq!((status, body.as_str()), (403, "RBAC: access denied"), "{p}");
        assert!(
            !headers.iter().any(|(k, _)| k == "x-app"),
            "{p} reached an app"
        );
    }
    let tester = [("x-user", "tester")];
    let (status, _, body) = http_request(&mut s, "GET", "/ADMIN", "web.ns.svc", &tester).await;
    assert_eq!(status, 200, "{body}");
    // The path forwarded is the one evaluated.
    let (_, _, body) = http_request(&mut s, "GET", "/a//b/./c/../d", "web.ns.svc", &tester).await;
    assert!(body.contains(" GET /a/b/d "), "{body}");
    // The waypoint-wide ALLOW admits only reads.
    let (status, _, body) = http_request(&mut s, "DELETE", "/item/1", "web.ns.svc", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    mesh.expect_log("wp", "request refused by authorization policy: 403");
    // AUDIT marks the request in the access log without changing the decision.
    mesh.expect_log("wp", r#""path":"/item/7""#);
    mesh.expect_log("wp", r#""audit_policy":"ns/audit-items""#);

    // Request metrics from the waypoint: counts by response code, Istio's labels.
    let metrics: std::net::SocketAddr = format!("127.{b}.0.3:15020").parse().unwrap();
    let ok = [
        ("reporter", "waypoint"),
        ("response_code", "200"),
        ("request_protocol", "http"),
        ("source_workload", "client"),
        ("source_principal", "spiffe://cluster.local/ns/ns/sa/client"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let text = scrape_until(metrics, "2033 requests", |t| {
        metric(t, "istio_requests_total", &ok) == 2033.0
    })
    .await;
    assert_eq!(
        metric(&text, "istio_requests_total", &[("response_code", "403")]),
        7.0
    );
    // web2 served the split's v2 share, the 22 tester requests and half of the 10 round-robin
    // ones.
    let web2 = [("response_code", "200"), ("destination_workload", "web2")];
    assert_eq!(
        metric(&text, "istio_requests_total", &web2),
        (v2 + 22 + 5) as f64,
        "{text}"
    );
    assert_eq!(
        metric(&text, "istio_requests_total", &[("response_code", "503")]),
        1.0
    );
    assert_eq!(
        metric(&text, "istio_request_duration_milliseconds_count", &ok),
        2033.0
    );
    // One JSON access-log line per request, with the route and generated ids.
    mesh.expect_log(
        "wp",
        r#""path":"/maintenance/x","protocol":"HTTP/1.1","status":503"#,
    );
    mesh.expect_log("wp", r#""route":"maintenance""#);
    mesh.expect_log("wp", r#""response_flags":"DR","trace_id":""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_httproute_at_the_waypoint() {
    let b = 68;
    // The L7 mesh with an HTTPRoute instead of the VirtualService and policies.
    let docs: Vec<String> = l7_config(b)
        .split("---\n")
        .filter(|d| !d.contains("kind: VirtualService") && !d.contains("kind: AuthorizationPolicy"))
        .map(str::to_owned)
        .collect();
    let yaml = docs.join("---\n")
        + r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: ns}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: v2-prefix}]}
    backendRefs: [{name: web-v2, port: 80}]
  - backendRefs:
    - {name: web-v1, port: 80, weight: 1}
    - {name: web-v2, port: 80, weight: 1}
"#;
    let mut mesh = InprocMesh::new(&yaml);
    http_app(format!("127.{b}.1.21:8080").parse().unwrap(), "v1").await;
    http_app(format!("127.{b}.1.22:8080").parse().unwrap(), "v2").await;
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    let client: std::net::IpAddr = format!("127.{b}.1.10").parse().unwrap();
    let vip: std::net::SocketAddr = format!("127.{b}.2.1:80").parse().unwrap();
    let mut s = tokio::io::BufReader::new(connect_from(client, vip).await.unwrap());
    let mut v2 = 0;
    for i in 0..400 {
        let (status, _, body) =
            http_request(&mut s, "GET", &format!("/x/{i}"), "web.ns.svc", &[]).await;
        assert_eq!(status, 200, "{body}");
        v2 += usize::from(body.starts_with("v2 "));
    }
    assert!((160..=240).contains(&v2), "50/50 split: v2 got {v2} of 400");
    // Whole-element prefix, prefix rewrite and a response header filter.
    let (_, headers, body) = http_request(&mut s, "GET", "/v2/page", "web.ns.svc", &[]).await;
    assert!(body.starts_with("v2 GET /page "), "{body}");
    assert!(
        headers.contains(&("x-route".into(), "v2-prefix".into())),
        "{headers:?}"
    );
    let (_, headers, _) = http_request(&mut s, "GET", "/v2x", "web.ns.svc", &[]).await;
    assert!(
        !headers.iter().any(|(k, _)| k == "x-route"),
        "/v2x is not under /v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_through_the_waypoint() {
    let b = 69;
    let docs: Vec<String> = l7_config(b)
        .split("---\n")
        .filter(|d| {
            !d.contains("kind: VirtualService")
                && !d.contains("kind: AuthorizationPolicy")
                && !d.contains("kind: DestinationRule")
        })
        .map(|d| d.replace("protocol: HTTP,", "protocol: GRPC,"))
        .collect();
    let mut mesh = InprocMesh::new(&docs.join("---\n"));
    grpc_app(format!("127.{b}.1.21:8080").parse().unwrap(), "v1").await;
    grpc_app(format!("127.{b}.1.22:8080").parse().unwrap(), "v2").await;
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    let client: std::net::IpAddr = format!("127.{b}.1.10").parse().unwrap();
    let vip: std::net::SocketAddr = format!("127.{b}.2.1:80").parse().unwrap();
    let tcp = connect_from(client, vip).await.unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let call = |h2c: h2::client::SendRequest<bytes::Bytes>| async move {
        let req = http::Request::post("http://web.ns.svc/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut h2c = h2c.ready().await.unwrap();
        h2c.send_request(req, false).unwrap()
    };
    // Unary: one message, the echo, grpc-status 0 in the trailers.
    let (resp, mut send) = call(h2c.clone()).await;
    send.send_data(grpc_frame(b"hello"), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, grpc_frame(b"hello").to_vec());
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");

    // Bidirectional streaming: each message is echoed before the next is sent.
    let (resp, mut send) = call(h2c.clone()).await;
    let resp = resp.await.unwrap();
    let mut body = resp.into_body();
    for i in 0..3 {
        let msg = format!("message {i}");
        send.send_data(grpc_frame(msg.as_bytes()), i == 2).unwrap();
        let mut echoed = Vec::new();
        while echoed.len() < msg.len() + 5 {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), body.data())
                .await
                .expect("echo arrives while the stream is open")
                .unwrap()
                .unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            echoed.extend_from_slice(&chunk);
        }
        assert_eq!(echoed, grpc_frame(msg.as_bytes()).to_vec());
    }
    assert!(body.data().await.is_none());
    assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");

    // The waypoint labels the requests as gRPC with their status.
    let metrics: std::net::SocketAddr = format!("127.{b}.0.3:15020").parse().unwrap();
    let want = [
        ("request_protocol", "grpc"),
        ("grpc_response_status", "0"),
        ("response_code", "200"),
    ];
    scrape_until(metrics, "2 gRPC requests", |t| {
        metric(t, "istio_requests_total", &want) == 2.0
    })
    .await;
    mesh.expect_log("wp", r#""protocol":"HTTP/2""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_protocols_are_sniffed_at_the_waypoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = 70;
    // The web service's ports declare no protocol: HTTP is detected, a server-first protocol
    // (the server greets first) is carried as TCP after the detection timeout.
    let docs: Vec<String> = l7_config(b)
        .split("---\n")
        .filter(|d| !d.contains("kind: AuthorizationPolicy"))
        .map(|d| {
            if d.contains("istio.io/use-waypoint") {
                d.replace(
                    "ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]",
                    "ports: [{number: 80, name: web, targetPort: 8080}, {number: 25, name: greeting, targetPort: 2525}]",
                )
            } else {
                d.to_owned()
            }
        })
        .collect();
    let yaml = docs.join("---\n");
    assert!(yaml.contains("name: greeting"), "{yaml}");
    let mut mesh = InprocMesh::new(&yaml);
    for (ip, name) in [(21, "v1"), (22, "v2")] {
        http_app(format!("127.{b}.1.{ip}:8080").parse().unwrap(), name).await;
        let l = tokio::net::TcpListener::bind(format!("127.{b}.1.{ip}:2525"))
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    s.write_all(format!("220 {name} ready\r\n").as_bytes())
                        .await
                        .unwrap();
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    let client: std::net::IpAddr = format!("127.{b}.1.10").parse().unwrap();

    // HTTP detected: the VirtualService's direct response answers.
    let vip: std::net::SocketAddr = format!("127.{b}.2.1:80").parse().unwrap();
    let mut s = tokio::io::BufReader::new(connect_from(client, vip).await.unwrap());
    let (status, _, body) = http_request(&mut s, "GET", "/maintenance", "web.ns.svc", &[]).await;
    assert_eq!((status, body.as_str()), (503, "down for maintenance"));

    // Server-first: the greeting arrives with nothing sent, then bytes echo.
    let vip25: std::net::SocketAddr = format!("127.{b}.2.1:25").parse().unwrap();
    let mut t = connect_from(client, vip25).await.unwrap();
    let mut greeting = [0u8; 14];
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        t.read_exact(&mut greeting),
    )
    .await
    .expect("greeting within the timeout")
    .unwrap();
    assert!(greeting.starts_with(b"220 v"), "{greeting:?}");
    t.write_all(b"HELO test\r\n").await.unwrap();
    let mut echo = [0u8; 11];
    t.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"HELO test\r\n");
    drop(t); // the TCP stream's access-log line is written when it ends
    mesh.expect_log("wp", r#""direction":"waypoint""#);
}
