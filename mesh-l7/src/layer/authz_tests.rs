#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use mesh_authz::istio::AuthorizationPolicySpec;
use serde_json::json;
use tower::ServiceExt;

use super::*;
use crate::layer::testing::echo;
use mesh_telemetry::metrics::ResponseFlags;

fn policy(name: &str, spec: serde_json::Value) -> Policy {
    let spec: AuthorizationPolicySpec = serde_json::from_value(spec).unwrap();
    spec.to_policy("ns", name, "istio-system").unwrap()
}

/// Policies checked for every request, refusals noted.
#[derive(Clone)]
struct Source {
    policies: Arc<Vec<Policy>>,
    deny: bool,
    open: bool,
    denied: Arc<Mutex<Vec<String>>>,
}

impl Source {
    fn new(policies: Vec<Policy>) -> Source {
        Source {
            policies: Arc::new(policies),
            deny: false,
            open: false,
            denied: Arc::default(),
        }
    }
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

impl AuthzSource for Source {
    fn with_scope<R>(&self, f: impl FnOnce(Scope<'_>) -> R) -> R {
        if self.open {
            return f(Scope::Open);
        }
        let policies: Vec<&Policy> = self.policies.iter().collect();
        f(Scope::Check(Check {
            normalization: PathNormalization::default(),
            deny: self.deny,
            policies: &policies,
            conn: Connection {
                source_ip: IP,
                remote_ip: Some(IP),
                source_principal: Some("cluster.local/ns/ns/sa/client"),
                source_namespace: Some("ns"),
                destination_ip: IP,
                destination_port: 80,
            },
        }))
    }

    fn denied<B>(&self, _req: &Request<B>, path: &str, reason: &str) {
        self.denied
            .lock()
            .unwrap()
            .push(format!("{path}: {reason}"));
    }
}

fn deny_admin() -> Policy {
    policy(
        "no-admin",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]}),
    )
}

async fn call(src: &Source, uri: &str) -> Response<Bytes> {
    let req = Request::get(uri)
        .header("host", "svc.ns:80")
        .body(())
        .unwrap();
    AuthzLayer::new(src.clone())
        .layer(echo())
        .oneshot(req)
        .await
        .unwrap()
}

#[tokio::test]
async fn allowed_requests_go_on_in_origin_form_with_the_evaluated_path() {
    let src = Source::new(vec![deny_admin()]);
    let resp = call(&src, "http://svc.ns:80/a/./b/../c?x=1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.into_body(), "/a/c?x=1");
}

#[tokio::test]
async fn deny_and_no_allow_get_403() {
    let src = Source::new(vec![deny_admin()]);
    let resp = call(&src, "/admin").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        resp.extensions().get::<Meta>().unwrap().flags,
        ResponseFlags::Rbac
    );
    assert_eq!(
        *src.denied.lock().unwrap(),
        ["/admin: denied by ns/no-admin"]
    );

    let allow = policy(
        "only-get-public",
        json!({"rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/public/*"]}}]}]}),
    );
    let src = Source::new(vec![allow]);
    assert_eq!(call(&src, "/public/x").await.status(), StatusCode::OK);
    assert_eq!(call(&src, "/private").await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn audit_is_noted_and_strict_refuses_everything() {
    let audit = policy(
        "audit-all",
        json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/*"]}}]}]}),
    );
    let src = Source::new(vec![audit]);
    let resp = call(&src, "/x").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.extensions().get::<Meta>().unwrap().audit.as_deref(),
        Some("ns/audit-all")
    );
    let src = Source {
        deny: true,
        ..Source::new(vec![])
    };
    assert_eq!(call(&src, "/x").await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn open_scope_passes_the_path_as_sent() {
    let src = Source {
        open: true,
        ..Source::new(vec![deny_admin()])
    };
    let resp = call(&src, "http://svc.ns:80/admin/../x?y").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.into_body(), "/admin/../x?y");
}

/// Attacker: encodings of `/admin` that a naive matcher misses (percent-encoded letters
/// and slashes, dot segments, doubled slashes, backslashes) are denied; malformed escapes
/// and NUL are refused as bad requests; nothing reaches the upstream.
#[tokio::test]
async fn path_encoding_cannot_bypass_a_deny() {
    let src = Source::new(vec![deny_admin()]);
    for p in [
        "/%61dmin",
        "/ADMIN/../admin",
        "/x/../admin",
        "/./admin/",
        "//admin",
        "/admin%2fsecret",
        "/admin%2Fsecret",
        "/public/..%2fadmin",
        "/%5cadmin",
        "/admin#frag",
    ] {
        let resp = call(&src, p).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{p}");
    }
    for p in ["/%zzadmin", "/admin%00"] {
        let resp = call(&src, p).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{p}");
        assert_eq!(
            resp.extensions().get::<Meta>().unwrap().flags,
            ResponseFlags::DownstreamProtocolError
        );
    }
}
