//! Authorization bypasses and leaks, with the real binaries: a header sent twice past a
//! waypoint DENY, a DENY on `remote.ip` that the waypoint skipped (fail open), Istio's
//! waypoint default-deny (`targetRefs` to the `istio-waypoint` GatewayClass), inline JWKS
//! secrets in `/config_dump`, and `remoteIpBlocks` read as Istio reads it at a ztunnel and at
//! a sidecar.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::BufReader;

const HMAC_K: &str = "aG1hYy1zZWNyZXQtdGhhdC1tdXN0LW5vdC1sZWFrLTEyMzQ";

/// Starts the mesh and the app; returns it with a keep-alive connection from `client` (or
/// from `intruder`) to `vip`.
async fn start(b: u8, yaml: &str) -> InprocMesh {
    let mut mesh = InprocMesh::new(yaml);
    http_app(format!("127.{b}.1.21:8080").parse().unwrap(), "web").await;
    let none: [&str; 0] = [];
    mesh.ztunnel("b", &none).await;
    mesh.waypoint("wp", "ns/wp", &none).await;
    mesh.ztunnel("a", &none).await;
    mesh
}

async fn conn(from: &str, to: &str) -> BufReader<tokio::net::TcpStream> {
    let from: IpAddr = from.parse().unwrap();
    let to: SocketAddr = to.parse().unwrap();
    BufReader::new(connect_from(from, to).await.unwrap())
}

/// `x-role: user` then `x-role: admin`: the waypoint used to read only the first value, so a
/// DENY on `admin` let the request through to an app that may read the second. Also an
/// ALLOW with `notValues` (only non-`prod` requests) and a DENY on `remote.ip`, which the
/// waypoint treated as absent and so never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_deny_is_not_bypassed_by_a_repeated_header_or_skipped_on_remote_ip() {
    let b = 121;
    let policies = format!(
        r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin-role, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: DENY
  rules: [{{when: [{{key: "request.headers[x-role]", values: [admin]}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-intruder, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: DENY
  rules: [{{when: [{{key: remote.ip, values: ["127.{b}.1.11"]}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: not-prod, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, group: "", name: other}}]
  rules: [{{when: [{{key: "request.headers[x-env]", notValues: [prod]}}]}}]
"#
    );
    let mesh = start(b, &waypoint_mesh(b, &policies)).await;
    let web = format!("127.{b}.2.1:80");
    let mut s = conn(&format!("127.{b}.1.10"), &web).await;
    let (status, _, body) = http_request(&mut s, "GET", "/", "web.ns.svc", &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) =
        http_request(&mut s, "GET", "/", "web.ns.svc", &[("x-role", "admin")]).await;
    assert_eq!(status, 403);
    for twice in [
        [("x-role", "user"), ("x-role", "admin")],
        [("x-role", "admin"), ("x-role", "user")],
    ] {
        let (status, headers, body) = http_request(&mut s, "GET", "/", "web.ns.svc", &twice).await;
        assert_eq!(
            (status, body.as_str()),
            (403, "RBAC: access denied"),
            "{twice:?}"
        );
        assert!(
            !headers.iter().any(|(k, _)| k == "x-app"),
            "reached the app"
        );
    }
    let (status, _, body) = http_request(
        &mut s,
        "GET",
        "/",
        "web.ns.svc",
        &[("x-role", "user, admin")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    mesh.expect_log("wp", "denied by ns/no-admin-role");

    // `notValues` in an ALLOW: a second header does not smuggle `prod` in.
    let mut o = conn(&format!("127.{b}.1.10"), &format!("127.{b}.2.2:80")).await;
    let (status, _, body) =
        http_request(&mut o, "GET", "/", "other.ns.svc", &[("x-env", "dev")]).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = http_request(
        &mut o,
        "GET",
        "/",
        "other.ns.svc",
        &[("x-env", "dev"), ("x-env", "prod")],
    )
    .await;
    assert_eq!(status, 403);

    // `remote.ip`: the client address the source ztunnel asserts.
    let mut i = conn(&format!("127.{b}.1.11"), &web).await;
    let (status, headers, _) = http_request(&mut i, "GET", "/", "web.ns.svc", &[]).await;
    assert_eq!(status, 403);
    assert!(!headers.iter().any(|(k, _)| k == "x-app"));
    mesh.expect_log("wp", "denied by ns/no-intruder");
}

/// Istio 1.25's default-deny for waypoints: an ALLOW without rules in the root namespace,
/// attached to the `istio-waypoint` GatewayClass, denies at every waypoint; a more specific
/// ALLOW on a service admits what it matches there. Its inline JWKS secret never shows in
/// `/config_dump`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_class_default_deny_is_enforced_and_dumps_hide_jwks_secrets() {
    let b = 122;
    let policies = format!(
        r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: waypoint-default-deny, namespace: istio-system}}
spec:
  targetRefs:
  - {{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: web-reads, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/ns/sa/client]}}}}]
    to: [{{operation: {{methods: [GET]}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: hmac, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, group: "", name: other}}]
  jwtRules:
  - issuer: hmac-issuer
    jwks: '{{"keys":[{{"kty":"oct","kid":"h1","alg":"HS256","k":"{HMAC_K}"}}]}}'
"#
    );
    let mesh = start(b, &waypoint_mesh(b, &policies)).await;
    let mut web = conn(&format!("127.{b}.1.10"), &format!("127.{b}.2.1:80")).await;
    let (status, headers, body) = http_request(&mut web, "GET", "/x", "web.ns.svc", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains(&("x-app".into(), "web".into())));
    let (status, _, _) = http_request(&mut web, "DELETE", "/x", "web.ns.svc", &[]).await;
    assert_eq!(status, 403, "only the GET is allowed on web");
    // `other` has no policy of its own: the class default denies everything.
    let mut other = conn(&format!("127.{b}.1.10"), &format!("127.{b}.2.2:80")).await;
    let (status, headers, body) = http_request(&mut other, "GET", "/x", "other.ns.svc", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert!(!headers.iter().any(|(k, _)| k == "x-app"));
    mesh.expect_log("wp", "request refused by authorization policy: 403");

    let admin: SocketAddr = format!("127.{b}.0.3:15000").parse().unwrap();
    let dump = http_get(admin, "/config_dump").await;
    assert!(dump.contains("waypoint-default-deny"), "{dump}");
    assert!(dump.contains("\"h1\""), "the key is listed: {dump}");
    assert!(!dump.contains(HMAC_K), "secret in the dump: {dump}");
}

/// `remoteIpBlocks` at a ztunnel (Istio's ztunnel: an HTTP attribute, so an ALLOW rule using
/// it never matches, even for the client it names) and at a sidecar (matched against the
/// original client, as Istio's sidecars do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_ip_blocks_follow_istio_at_ztunnels_and_sidecars() {
    let net = Net { b: 123 };
    let b = net.b;
    let yaml = net.config()
        + &format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: side, namespace: ns}}
spec:
  address: 127.{b}.1.30
  serviceAccount: side
  labels: {{app: side, sidecar.istio.io/inject: "true"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: side, namespace: ns}}
spec:
  hosts: [side.ns.svc]
  addresses: [127.{b}.2.3]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  workloadSelector: {{labels: {{app: side}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: from-client-address, namespace: ns}}
spec:
  rules: [{{from: [{{source: {{remoteIpBlocks: ["127.{b}.1.10/32"]}}}}]}}]
"#
        );
    let mut mesh = InprocMesh::new(&yaml);
    echo_server(net.app()).await;
    echo_server(format!("127.{b}.1.30:9000").parse().unwrap()).await;
    let none: [&str; 0] = [];
    mesh.ztunnel("b", &none).await;
    mesh.sidecar(
        "side",
        "ns/side",
        None,
        &["--outbound-port", "0", "--plaintext-port", "0"],
    )
    .await;
    mesh.ztunnel("a", &none).await;

    // The sidecar matches the client's address: allowed.
    let side: SocketAddr = format!("127.{b}.2.3:9000").parse().unwrap();
    let mut s = connect_from(net.client(), side).await.unwrap();
    assert_eq!(
        exchange(&mut s, b"via the sidecar").await,
        b"via the sidecar"
    );
    // The ztunnel does not evaluate it: the only ALLOW rule never matches.
    let refused = match connect_from(net.client(), net.vip()).await {
        Ok(mut s) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"hello").await;
            let mut buf = [0u8; 16];
            matches!(s.read(&mut buf).await, Ok(0) | Err(_))
        }
        Err(_) => true,
    };
    assert!(refused, "the ztunnel let the connection through");
    mesh.expect_log("b", "not allowed by ns/from-client-address");
}
