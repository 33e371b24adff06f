//! `AuthorizationPolicy` `action: CUSTOM` at the waypoint (in process), asking a test
//! authorizer over Envoy's ext_authz gRPC API (`envoy.service.auth.v3.Authorization/Check`)
//! that answers as OPA-Envoy does: `OK` with headers to add, or `PERMISSION_DENIED` with a
//! `denied_response`. Loopback block 127.215.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status;
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;

const B: u8 = 215;

/// What the authorizer saw: (path, x-user header, source principal, source address,
/// destination principal).
type Seen = Arc<Mutex<Vec<(String, String, String, String, String)>>>;

/// A small OPA-Envoy-like authorizer.
#[derive(Clone)]
struct Opa {
    seen: Seen,
}

fn hvo(k: &str, v: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: k.into(),
            value: v.into(),
            ..HeaderValue::default()
        }),
        ..HeaderValueOption::default()
    }
}

#[tonic::async_trait]
impl Authorization for Opa {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attrs = req.into_inner().attributes.unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let source = attrs.source.unwrap_or_default();
        let destination = attrs.destination.unwrap_or_default().principal;
        let addr = format!("{:?}", source.address);
        let user = http.headers.get("x-user").cloned().unwrap_or_default();
        self.seen.lock().unwrap().push((
            http.path.clone(),
            user,
            source.principal.clone(),
            addr,
            destination,
        ));
        if http.path.contains("slow") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let resp = if http.path.contains("deny") {
            CheckResponse {
                status: Some(Status {
                    code: 7, // PERMISSION_DENIED
                    ..Status::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 403 }),
                    headers: vec![hvo("x-reason", "opa-policy")],
                    body: "denied by opa".into(),
                })),
                ..CheckResponse::default()
            }
        } else {
            CheckResponse {
                status: Some(Status::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![hvo("x-user", "alice")],
                    response_headers_to_add: vec![hvo("x-authz", "opa")],
                    ..OkHttpResponse::default()
                })),
                ..CheckResponse::default()
            }
        };
        Ok(tonic::Response::new(resp))
    }
}

async fn authorizer(addr: SocketAddr, seen: Seen) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let svc = AuthorizationServer::new(Opa { seen });
    // Plain gRPC (HTTP/2 prior knowledge), as the proxy calls it.
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper_util::service::TowerToHyperService::new(svc),
                        )
                        .await;
            });
        }
    });
}

/// The authorizer as a mesh service (`authz.ns.svc:9000`, endpoint 127.215.1.30:9000), one
/// service whose endpoint listens nowhere (`down.ns.svc`), three providers and the policies.
fn policies() -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: authz, namespace: ns}}
spec: {{address: 127.{B}.1.30, serviceAccount: authz, labels: {{app: authz}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: authz, namespace: ns}}
spec:
  hosts: [authz.ns.svc]
  addresses: [127.{B}.2.9]
  ports: [{{number: 9000, name: grpc, protocol: GRPC, targetPort: 9000}}]
  workloadSelector: {{labels: {{app: authz}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: down, namespace: ns}}
spec: {{address: 127.{B}.1.31, serviceAccount: down, labels: {{app: down}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: down, namespace: ns}}
spec:
  hosts: [down.ns.svc]
  addresses: [127.{B}.2.10]
  ports: [{{number: 9000, name: grpc, protocol: GRPC, targetPort: 9000}}]
  workloadSelector: {{labels: {{app: down}}}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  extensionProviders:
  - name: opa
    envoyExtAuthzGrpc: {{service: authz.ns.svc, port: 9000, timeout: 500ms}}
  - name: opa-open
    envoyExtAuthzGrpc: {{service: ns/authz.ns.svc, port: 9000, timeout: 500ms, failOpen: true}}
  - name: down
    envoyExtAuthzGrpc: {{service: down.ns.svc, port: 9000, timeout: 1s, statusOnError: "503"}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, name: web}}]
  action: CUSTOM
  provider: {{name: opa}}
  rules: [{{to: [{{operation: {{paths: ["/admin/*", "/slow"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-open, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, name: web}}]
  action: CUSTOM
  provider: {{name: opa-open}}
  rules: [{{to: [{{operation: {{paths: ["/open-slow"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-down, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, name: web}}]
  action: CUSTOM
  provider: {{name: down}}
  rules: [{{to: [{{operation: {{paths: ["/down"]}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api, namespace: ns}}
spec:
  address: 127.{B}.1.40
  serviceAccount: api
  labels: {{app: api, sidecar.istio.io/inject: "true"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: ns}}
spec:
  hosts: [api.ns.svc]
  addresses: [127.{B}.2.4]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: api}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api-ext, namespace: ns}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  action: CUSTOM
  provider: {{name: opa}}
  rules: [{{to: [{{operation: {{paths: ["/admin/*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-secret, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, name: web}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin/secret"]}}}}]}}]
"#
    )
}

/// One test, one mesh (one loopback block): at the waypoint allow, deny, skip, DENY after a
/// CUSTOM allow, timeouts with failOpen on and off, statusOnError for an unreachable
/// authorizer, spoofed headers, path tricks; then the same at a sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_policies_ask_the_external_authorizer() {
    let seen: Seen = Arc::default();
    authorizer(format!("127.{B}.1.30:9000").parse().unwrap(), seen.clone()).await;
    let mut mesh = InprocMesh::new(&waypoint_mesh(B, &policies()));
    http_app(format!("127.{B}.1.21:8080").parse().unwrap(), "web").await;
    let none: [&str; 0] = [];
    mesh.ztunnel("b", &none).await;
    mesh.waypoint("wp", "ns/wp", &none).await;
    mesh.ztunnel("a", &none).await;
    let client: std::net::IpAddr = format!("127.{B}.1.10").parse().unwrap();
    at_the_waypoint(&mesh, &seen, client).await;
    at_a_sidecar(&mut mesh, &seen, client).await;
}

/// The waypoint part: allow, deny, skip, DENY after a CUSTOM allow, timeouts with failOpen on
/// and off, statusOnError for an unreachable authorizer, spoofed headers, path tricks.
async fn at_the_waypoint(mesh: &InprocMesh, seen: &Seen, client: std::net::IpAddr) {
    let vip: SocketAddr = format!("127.{B}.2.1:80").parse().unwrap();
    let mut s = tokio::io::BufReader::new(connect_from(client, vip).await.unwrap());
    let host = "web.ns.svc";
    let got = |h: &[(String, String)]| {
        h.iter()
            .find(|(k, _)| k == "x-got")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let header = |h: &[(String, String)], name: &str| {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    let asked = || seen.lock().unwrap().len();

    // Allowed: the authorizer's `x-user` replaces the client's spoofed one (Envoy ext_authz
    // OkHttpResponse.headers: "append defaults to false"), its response header reaches the
    // client.
    let spoof = [("x-user", "mallory")];
    let (status, h, body) = http_request(&mut s, "GET", "/admin/ok", host, &spoof).await;
    assert_eq!(status, 200, "{body}");
    let upstream = got(&h);
    assert!(upstream.contains("x-user=alice"), "{upstream}");
    assert!(
        !upstream.contains("mallory"),
        "spoofed header reached the app: {upstream}"
    );
    assert_eq!(header(&h, "x-authz").as_deref(), Some("opa"));
    {
        let seen = seen.lock().unwrap();
        let (path, user, principal, addr, own) = seen.last().unwrap();
        assert_eq!(
            own, "spiffe://cluster.local/ns/ns/sa/wp",
            "the waypoint's identity"
        );
        assert_eq!((path.as_str(), user.as_str()), ("/admin/ok", "mallory"));
        assert_eq!(principal, "spiffe://cluster.local/ns/ns/sa/client");
        assert!(addr.contains(&format!("127.{B}.1.10")), "{addr}");
    }

    // Denied: the authorizer's status, headers and body (OPA-Envoy's denied_response).
    let (status, h, body) = http_request(&mut s, "GET", "/admin/deny", host, &[]).await;
    assert_eq!((status, body.as_str()), (403, "denied by opa"));
    assert_eq!(header(&h, "x-reason").as_deref(), Some("opa-policy"));
    assert!(header(&h, "x-app").is_none(), "reached the app");
    // The rules see the normalized path: `//admin/./deny` is still checked (and denied).
    let (status, _, _) = http_request(&mut s, "GET", "//admin/./deny", host, &[]).await;
    assert_eq!(status, 403);

    // A request no CUSTOM rule matches skips the authorizer (Istio: the rules say when the
    // provider is asked).
    let before = asked();
    let (status, _, _) = http_request(&mut s, "GET", "/public", host, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(asked(), before, "authorizer asked about /public");

    // CUSTOM first, then DENY: the authorizer allows, the DENY policy still refuses.
    let (status, _, body) = http_request(&mut s, "GET", "/admin/secret", host, &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(asked(), before + 1, "CUSTOM is evaluated before DENY");

    // A check slower than the timeout: fail closed (403) unless failOpen.
    let (status, h, _) = http_request(&mut s, "GET", "/slow", host, &[]).await;
    assert_eq!(status, 403);
    assert!(header(&h, "x-app").is_none());
    let (status, h, _) =
        http_request(&mut s, "GET", "/open-slow", host, &[("x-user", "mallory")]).await;
    assert_eq!(status, 200, "failOpen lets it through");
    assert!(
        got(&h).contains("x-user=mallory"),
        "nothing from a failed check"
    );

    // An authorizer that cannot be reached: statusOnError.
    let (status, _, _) = http_request(&mut s, "GET", "/down", host, &[]).await;
    assert_eq!(status, 503);
    mesh.expect_log("wp", "request refused by external authorization");
    mesh.expect_log("wp", "UAEX");
}

/// A selector CUSTOM policy is enforced by the workload's sidecar (inbound), as Istio's
/// sidecars do: same authorizer, same answers.
async fn at_a_sidecar(mesh: &mut InprocMesh, seen: &Seen, client: std::net::IpAddr) {
    http_app(format!("127.{B}.1.40:8080").parse().unwrap(), "api").await;
    mesh.sidecar(
        "side",
        "ns/api",
        None,
        &["--outbound-port", "0", "--plaintext-port", "0"],
    )
    .await;
    let vip: SocketAddr = format!("127.{B}.2.4:80").parse().unwrap();
    let mut s = tokio::io::BufReader::new(connect_from(client, vip).await.unwrap());
    let host = "api.ns.svc";

    let before = seen.lock().unwrap().len();
    let (status, h, body) =
        http_request(&mut s, "GET", "/admin/ok", host, &[("x-user", "mallory")]).await;
    assert_eq!(status, 200, "{body}");
    let upstream = h
        .iter()
        .find(|(k, _)| k == "x-got")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        upstream.contains("x-user=alice") && !upstream.contains("mallory"),
        "{upstream}"
    );
    let (status, _, body) = http_request(&mut s, "GET", "/admin/deny", host, &[]).await;
    assert_eq!((status, body.as_str()), (403, "denied by opa"));
    let asked = seen.lock().unwrap().len();
    assert_eq!(asked, before + 2);
    let own = seen.lock().unwrap().last().unwrap().4.clone();
    assert_eq!(
        own, "spiffe://cluster.local/ns/ns/sa/api",
        "the sidecar's workload"
    );
    let (status, _, _) = http_request(&mut s, "GET", "/public", host, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(seen.lock().unwrap().len(), asked, "asked about /public");
    mesh.expect_log("side", "request refused by external authorization");
}
