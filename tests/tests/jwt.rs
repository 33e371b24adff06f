//! JWT at the waypoint (real binaries): `RequestAuthentication` with a `jwksUri` served by a
//! test issuer, and `AuthorizationPolicy` on request principals and claims.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://issuer.test";

/// An ES256 signing key and its public JWK.
struct Key {
    kid: &'static str,
    enc: EncodingKey,
    jwk: Value,
}

impl Key {
    fn new(kid: &'static str) -> Key {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4), "uncompressed P-256 point");
        Key {
            kid,
            enc: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..]),
            }),
        }
    }

    fn sign(&self, claims: Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.into());
        jsonwebtoken::encode(&h, &claims, &self.enc).unwrap()
    }
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims(sub: &str, groups: &[&str]) -> Value {
    json!({"iss": ISSUER, "sub": sub, "aud": ["api"], "exp": now() + 600, "groups": groups})
}

/// Serves the JWKS document (swappable) at `/jwks.json`, counting fetches.
async fn issuer(addr: SocketAddr, jwks: Arc<Mutex<String>>, hits: Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let jwks = jwks.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(m) => n += m,
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let resp = if req.starts_with("GET /jwks.json ") {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let body = jwks.lock().unwrap().clone();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .into()
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
}

fn config(b: u8) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.{b}.0.1, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.{b}.0.2, workloads: [ns/api]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.{b}.1.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api, namespace: ns}}
spec: {{address: 127.{b}.1.21, serviceAccount: api, labels: {{app: api}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [api.ns.svc]
  addresses: [127.{b}.2.1]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: api}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: 127.{b}.0.3}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, group: "", name: api}}]
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: http://127.{b}.3.1:8000/jwks.json
    audiences: [api]
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api, namespace: ns}}
spec:
  targetRefs: [{{kind: Service, name: api}}]
  rules:
  - to: [{{operation: {{paths: ["/public*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
    to: [{{operation: {{paths: ["/private*"]}}}}]
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: [admin]}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_authentication_and_claim_policies_at_the_waypoint() {
    let b = 71;
    let k1 = Key::new("k1");
    let jwks = Arc::new(Mutex::new(json!({"keys": [k1.jwk]}).to_string()));
    let hits = Arc::new(AtomicUsize::new(0));
    issuer(
        format!("127.{b}.3.1:8000").parse().unwrap(),
        jwks.clone(),
        hits.clone(),
    )
    .await;
    let mut mesh = InprocMesh::new(&config(b));
    http_app(format!("127.{b}.1.21:8080").parse().unwrap(), "api").await;
    let none: [&str; 0] = [];
    mesh.ztunnel("b", &none).await;
    mesh.waypoint("wp", "ns/wp", &["--jwks-refresh", "1s"])
        .await;
    mesh.ztunnel("a", &none).await;
    let client: std::net::IpAddr = format!("127.{b}.1.10").parse().unwrap();
    let vip: SocketAddr = format!("127.{b}.2.1:80").parse().unwrap();
    let mut s = tokio::io::BufReader::new(connect_from(client, vip).await.unwrap());
    let host = "api.ns.svc";
    let bearer = |t: &str| format!("Bearer {t}");
    let reached = |h: &[(String, String)]| h.iter().any(|(k, _)| k == "x-app");
    let got = |h: &[(String, String)]| {
        h.iter()
            .find(|(k, _)| k == "x-got")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut refused = 0;

    // No token: authentication passes, policy decides.
    let (status, _, _) = http_request(&mut s, "GET", "/public", host, &[]).await;
    assert_eq!(status, 200);
    let (status, h, body) = http_request(&mut s, "GET", "/private", host, &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert!(!reached(&h));

    // A valid token: principal allowed, claim copied to a header, token not forwarded.
    let alice = k1.sign(claims("alice", &["dev"]));
    let auth = bearer(&alice);
    let (status, h, body) =
        http_request(&mut s, "GET", "/private", host, &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "{body}");
    let seen = got(&h);
    assert!(seen.contains("x-jwt-sub=alice"), "{seen}");
    assert!(!seen.contains("authorization"), "token forwarded: {seen}");
    // A forged claim header is replaced, and removed without a token.
    let (_, h, _) = http_request(
        &mut s,
        "GET",
        "/public",
        host,
        &[("authorization", &auth), ("x-jwt-sub", "mallory")],
    )
    .await;
    assert!(got(&h).contains("x-jwt-sub=alice"), "{}", got(&h));
    let (_, h, _) = http_request(&mut s, "GET", "/public", host, &[("x-jwt-sub", "mallory")]).await;
    assert!(!got(&h).contains("x-jwt-sub"), "{}", got(&h));

    // Claim-based ALLOW.
    let (status, _, _) =
        http_request(&mut s, "GET", "/admin", host, &[("authorization", &auth)]).await;
    assert_eq!(status, 403, "groups [dev] is not admin");
    let admin = bearer(&k1.sign(claims("root", &["dev", "admin"])));
    let (status, _, _) =
        http_request(&mut s, "GET", "/admin", host, &[("authorization", &admin)]).await;
    assert_eq!(status, 200);

    // Invalid tokens get 401 with Envoy's reasons and never reach the app.
    let mut expired = claims("alice", &[]);
    expired["exp"] = json!(now() - 3600);
    let mut wrong_iss = claims("alice", &[]);
    wrong_iss["iss"] = json!("https://elsewhere.test");
    let mut wrong_aud = claims("alice", &[]);
    wrong_aud["aud"] = json!("other");
    let impostor = Key::new("k1"); // same key id, different key
    for (token, why) in [
        (k1.sign(expired), "Jwt is expired"),
        (k1.sign(wrong_iss), "Jwt issuer is not configured"),
        (
            impostor.sign(claims("alice", &[])),
            "Jwt verification fails",
        ),
        (k1.sign(wrong_aud), "Audiences in Jwt are not allowed"),
        (
            "not-a-jwt".to_owned(),
            "Jwt is not in the form of Header.Payload.Signature",
        ),
    ] {
        let a = bearer(&token);
        let (status, h, body) =
            http_request(&mut s, "GET", "/public", host, &[("authorization", &a)]).await;
        assert_eq!((status, body.as_str()), (401, why));
        assert!(!reached(&h), "{why}: reached the app");
        let www = h.iter().find(|(k, _)| k == "www-authenticate").unwrap();
        assert!(www.1.starts_with("Bearer realm="), "{www:?}");
        refused += 1;
    }
    mesh.expect_log("wp", "request refused by JWT authentication: 401");
    // A token in the default query parameter works and is not logged.
    let (status, _, _) = http_request(
        &mut s,
        "GET",
        &format!("/private?access_token={alice}&x=1"),
        host,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    mesh.expect_log("wp", r#""path":"/private?access_token=<redacted>&x=1""#);
    assert!(!mesh.logs("wp").contains(&alice), "token logged");

    // The keys are cached: a handful of fetches, not one per request.
    let fetched = hits.load(Ordering::SeqCst);
    assert!((1..=8).contains(&fetched), "{fetched} JWKS fetches");

    // Key rotation: the issuer publishes k2 only. A k2 token is accepted at once (its unknown
    // key id triggers a refetch), and k1 tokens stop working after the refresh.
    let k2 = Key::new("k2");
    *jwks.lock().unwrap() = json!({"keys": [k2.jwk]}).to_string();
    let bob = bearer(&k2.sign(claims("bob", &[])));
    let (status, h, body) =
        http_request(&mut s, "GET", "/private", host, &[("authorization", &bob)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(got(&h).contains("x-jwt-sub=bob"));
    let mut old_refused = false;
    for _ in 0..100 {
        let (status, _, body) =
            http_request(&mut s, "GET", "/private", host, &[("authorization", &auth)]).await;
        if status == 401 {
            assert_eq!(body, "Jwks doesn't have key to match kid or alg from Jwt");
            refused += 1;
            old_refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(old_refused, "k1 tokens still accepted after rotation");

    // The request metrics count the refusals as 401.
    let metrics: SocketAddr = format!("127.{b}.0.3:15020").parse().unwrap();
    let unauthorized = [("reporter", "waypoint"), ("response_code", "401")];
    scrape_until(metrics, "401 count", |t| {
        metric(t, "istio_requests_total", &unauthorized) == refused as f64
    })
    .await;
}

#[test]
fn request_authentication_errors_name_the_field() {
    let bad = config(72).replace(
        "    jwksUri: http://127.72.3.1:8000/jwks.json\n",
        "    jwksUri: ftp://127.72.3.1/jwks.json\n    fromHeaders: [{name: \"bad header\"}]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, bad).unwrap();
    let (ok, _, err) = meshctl(&["validate", path.to_str().unwrap()], dir.path());
    assert!(!ok);
    for needle in [
        "spec.jwtRules[0].jwksUri",
        "not an http or https URL",
        "spec.jwtRules[0].fromHeaders[0].name",
    ] {
        assert!(
            err.contains(&format!("(RequestAuthentication ns/jwt): {needle}"))
                || err.contains(needle),
            "{needle} missing: {err}"
        );
    }
}
