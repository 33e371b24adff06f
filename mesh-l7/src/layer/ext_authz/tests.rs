#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use mesh_authz::http::PathNormalization;
use mesh_authz::istio::AuthorizationPolicySpec;
use mesh_authz::{Connection, Policy};
use mesh_telemetry::metrics::ResponseFlags;
use serde_json::json;
use tower::{Layer, ServiceExt};

use super::*;
use crate::layer::authz::{AuthzSource, Check, Scope};
use crate::layer::meta::Meta;
use crate::layer::testing::echo;

fn policy(name: &str, spec: serde_json::Value) -> Policy {
    let spec: AuthorizationPolicySpec = serde_json::from_value(spec).unwrap();
    spec.to_policy("ns", name, "istio-system").unwrap()
}

fn custom(name: &str, provider: &str, paths: &[&str]) -> Policy {
    let rules = if paths.is_empty() {
        json!([{}])
    } else {
        json!([{"to": [{"operation": {"paths": paths}}]}])
    };
    policy(
        name,
        json!({"action": "CUSTOM", "provider": {"name": provider}, "rules": rules}),
    )
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

#[derive(Clone)]
struct Source(Arc<Vec<Policy>>);

impl AuthzSource for Source {
    fn with_scope<R>(&self, f: impl FnOnce(Scope<'_>) -> R) -> R {
        let policies: Vec<&Policy> = self.0.iter().collect();
        f(Scope::Check(Check {
            normalization: PathNormalization::default(),
            deny: false,
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
}

/// How the fake authorizer answers.
#[derive(Clone)]
enum Script {
    Answer(CheckResult),
    Fail,
    Hang,
}

/// What the fake was asked: (provider, path, the request's `x-user`).
type Asked = Vec<(String, String, Option<String>)>;

/// A scripted authorizer recording what it was asked.
#[derive(Clone)]
struct Fake {
    active: bool,
    providers: Vec<Provider>,
    script: Arc<Mutex<Script>>,
    asked: Arc<Mutex<Asked>>,
}

fn provider(name: &str) -> Provider {
    Provider {
        name: Arc::from(name),
        timeout: Duration::from_millis(200),
        fail_open: false,
        status_on_error: StatusCode::FORBIDDEN,
    }
}

impl Fake {
    fn new(script: Script) -> Fake {
        Fake {
            active: true,
            providers: vec![provider("opa"), provider("second")],
            script: Arc::new(Mutex::new(script)),
            asked: Arc::default(),
        }
    }

    fn asked(&self) -> Asked {
        self.asked.lock().unwrap().clone()
    }
}

impl Authorizer for Fake {
    fn active(&self) -> bool {
        self.active
    }

    fn provider(&self, name: &str) -> Option<Provider> {
        self.providers.iter().find(|p| &*p.name == name).cloned()
    }

    fn check(
        &self,
        provider: &Provider,
        input: CheckInput,
    ) -> impl Future<Output = Result<CheckResult, CheckError>> + Send + 'static {
        let spoof = input
            .headers
            .get("x-user")
            .map(|v| v.to_str().unwrap().to_owned());
        self.asked
            .lock()
            .unwrap()
            .push((provider.name.to_string(), input.path.clone(), spoof));
        let script = self.script.lock().unwrap().clone();
        let name = provider.name.clone();
        async move {
            match script {
                Script::Answer(a) => Ok(a),
                Script::Fail => Err(CheckError::Unavailable {
                    provider: name,
                    reason: "connection refused".into(),
                }),
                Script::Hang => std::future::pending().await,
            }
        }
    }
}

fn h(n: &'static str, v: &'static str) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static(n), HeaderValue::from_static(v))
}

fn allow_as(user: &'static str) -> CheckResult {
    CheckResult::Allow {
        upstream: vec![(
            HeaderName::from_static("x-user"),
            HeaderValue::from_static(user),
            HeaderMode::Overwrite,
        )],
        remove: vec![HeaderName::from_static("x-drop")],
        downstream: vec![h("x-authz", "checked")],
    }
}

async fn call(policies: Vec<Policy>, fake: &Fake, uri: &str) -> Response<Bytes> {
    let svc = ExtAuthzLayer::new(Source(Arc::new(policies)), fake.clone()).layer(echo());
    let req = Request::get(uri)
        .header("host", "svc.ns:80")
        .header("x-user", "mallory")
        .header("x-drop", "1")
        .body(())
        .unwrap();
    svc.oneshot(req).await.unwrap()
}

fn flags(resp: &Response<Bytes>) -> ResponseFlags {
    resp.extensions()
        .get::<Meta>()
        .map_or(ResponseFlags::None, |m| m.flags)
}

/// Envoy ext_authz (OkHttpResponse.headers): "the append field defaults to false", so a
/// header the authorizer sets replaces the client's: a spoofed `x-user` never goes upstream.
#[tokio::test(start_paused = true)]
async fn allow_sets_headers_over_spoofed_ones() {
    let fake = Fake::new(Script::Answer(allow_as("alice")));
    let resp = call(vec![custom("ext", "opa", &[])], &fake, "/api?q=1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let users: Vec<_> = resp.headers().get_all("x-user").iter().collect();
    assert_eq!(users, ["alice"], "spoofed header kept");
    assert!(
        resp.headers().get("x-drop").is_none(),
        "removal not applied"
    );
    assert_eq!(resp.headers()["x-authz"], "checked");
    assert_eq!(
        fake.asked(),
        [("opa".into(), "/api?q=1".into(), Some("mallory".into()))]
    );
}

/// Envoy ext_authz: a denied check answers with the authorizer's status, headers and body
/// (`DeniedHttpResponse`), 403 when it sets none; the access log flag is `UAEX`.
#[tokio::test(start_paused = true)]
async fn deny_answers_with_the_authorizers_response() {
    let fake = Fake::new(Script::Answer(CheckResult::Deny {
        status: Some(StatusCode::UNAUTHORIZED),
        headers: vec![
            h("www-authenticate", "Basic realm=\"opa\""),
            h("set-cookie", "a=1"),
            h("set-cookie", "b=2"),
            h("content-type", "application/json"),
        ],
        body: Bytes::from_static(b"denied by opa"),
    }));
    let resp = call(vec![custom("ext", "opa", &[])], &fake, "/").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"opa\"");
    assert_eq!(resp.headers().get_all("set-cookie").iter().count(), 2);
    let types: Vec<_> = resp.headers().get_all("content-type").iter().collect();
    assert_eq!(types, ["application/json"]);
    assert_eq!(resp.body(), "denied by opa");
    assert_eq!(flags(&resp), ResponseFlags::UnauthorizedExternalService);
    *fake.script.lock().unwrap() = Script::Answer(CheckResult::Deny {
        status: None,
        headers: vec![],
        body: Bytes::new(),
    });
    let resp = call(vec![custom("ext", "opa", &[])], &fake, "/").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

/// Istio `failOpen` / `statusOnError` (Envoy `failure_mode_allow` / `status_on_error`): a
/// check that times out or fails lets the request through only with failOpen.
#[tokio::test(start_paused = true)]
async fn timeout_and_errors_fail_closed_unless_fail_open() {
    for script in [Script::Hang, Script::Fail] {
        let mut fake = Fake::new(script.clone());
        let resp = call(vec![custom("ext", "opa", &[])], &fake, "/").await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(flags(&resp), ResponseFlags::UnauthorizedExternalService);
        fake.providers[0].status_on_error = StatusCode::SERVICE_UNAVAILABLE;
        let resp = call(vec![custom("ext", "opa", &[])], &fake, "/").await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        fake.providers[0].fail_open = true;
        let resp = call(vec![custom("ext", "opa", &[])], &fake, "/").await;
        assert_eq!(resp.status(), StatusCode::OK);
        // Failed open: nothing from the authorizer, the client's header stays as sent.
        assert_eq!(resp.headers()["x-user"], "mallory");
    }
}

/// Istio: a CUSTOM policy's rules say which requests go to the provider; the others skip
/// the check. The rules see the normalized path, so `//admin/x` is checked as `/admin/x`.
#[tokio::test(start_paused = true)]
async fn only_matching_requests_are_checked() {
    let fake = Fake::new(Script::Answer(CheckResult::Deny {
        status: None,
        headers: vec![],
        body: Bytes::new(),
    }));
    let p = || vec![custom("ext", "opa", &["/admin/*"])];
    assert_eq!(call(p(), &fake, "/public").await.status(), StatusCode::OK);
    assert!(fake.asked().is_empty());
    for attack in ["/admin/x", "//admin/x", "/public/../admin/x", "/%61dmin/x"] {
        let resp = call(p(), &fake, attack).await;
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{attack} skipped the check"
        );
    }
    assert_eq!(fake.asked().len(), 4);
    assert!(fake.asked().iter().all(|(_, path, _)| path == "/admin/x"));
}

/// Several providers (istio/istio#58082, Istio 1.30: one ext_authz filter per provider, each
/// triggered by its own policies): each matching provider is asked once, in order; a header set
/// by the first is what the second sees. An unknown provider denies (fail closed) without a
/// call.
#[tokio::test(start_paused = true)]
async fn several_providers_and_unknown_ones() {
    let fake = Fake::new(Script::Answer(allow_as("alice")));
    let policies = vec![
        custom("a", "opa", &[]),
        custom("b", "second", &[]),
        custom("c", "opa", &[]),
    ];
    let resp = call(policies, &fake, "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let asked = fake.asked();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(
        (asked[0].0.as_str(), asked[1].0.as_str()),
        ("opa", "second")
    );
    assert_eq!(asked[1].2.as_deref(), Some("alice"));
    assert_eq!(resp.headers().get_all("x-authz").iter().count(), 2);

    let fake = Fake::new(Script::Answer(allow_as("alice")));
    let resp = call(vec![custom("x", "nowhere", &[])], &fake, "/").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(flags(&resp), ResponseFlags::UnauthorizedExternalService);
    assert!(fake.asked().is_empty());
}

/// An attacker holding many requests against a hanging authorizer: each is answered at the
/// provider's timeout (fail closed), none waits longer, and none reaches the upstream.
#[tokio::test(start_paused = true)]
async fn a_hanging_authorizer_holds_no_request_past_its_timeout() {
    let fake = Fake::new(Script::Hang);
    let start = tokio::time::Instant::now();
    let calls = (0..200).map(|_| {
        let fake = fake.clone();
        async move { call(vec![custom("ext", "opa", &[])], &fake, "/").await }
    });
    let answers = futures_join_all(calls).await;
    assert!(answers.iter().all(|r| r.status() == StatusCode::FORBIDDEN));
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(fake.asked().len(), 200);
}

/// Joins futures without a futures crate: each spawned, awaited in order.
async fn futures_join_all<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Not configured: the layer never asks the source nor the authorizer.
#[tokio::test(start_paused = true)]
async fn inactive_does_nothing() {
    let mut fake = Fake::new(Script::Fail);
    fake.active = false;
    let resp = call(vec![custom("ext", "opa", &[])], &fake, "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(fake.asked().is_empty());
}

mod props {
    use proptest::prelude::*;

    use super::*;

    fn mode() -> impl Strategy<Value = HeaderMode> {
        prop_oneof![
            Just(HeaderMode::Overwrite),
            Just(HeaderMode::Append),
            Just(HeaderMode::AddIfAbsent),
            Just(HeaderMode::OverwriteIfExists),
        ]
    }

    proptest! {
        /// Whatever the client sent, an overwritten header holds exactly the authorizer's
        /// value, and the other modes keep their contract.
        #[test]
        fn applied_headers_follow_their_mode(
            client in proptest::collection::vec("[a-z]{0,8}", 0..4),
            value in "[a-z]{1,8}",
            mode in mode(),
        ) {
            let name = HeaderName::from_static("x-user");
            let mut headers = http::HeaderMap::new();
            for c in &client {
                headers.append(name.clone(), HeaderValue::from_str(c).unwrap());
            }
            let v = HeaderValue::from_str(&value).unwrap();
            apply_upstream(&mut headers, &[(name.clone(), v.clone(), mode)], &[]);
            let got: Vec<_> = headers.get_all(&name).iter().cloned().collect();
            match (mode, client.is_empty()) {
                (HeaderMode::Overwrite, _) | (HeaderMode::AddIfAbsent, true)
                | (HeaderMode::OverwriteIfExists, false) => prop_assert_eq!(got, vec![v]),
                (HeaderMode::Append, _) => {
                    prop_assert_eq!(got.len(), client.len() + 1);
                    prop_assert_eq!(got.last(), Some(&v));
                }
                (HeaderMode::AddIfAbsent, false) => prop_assert_eq!(got.len(), client.len()),
                (HeaderMode::OverwriteIfExists, true) => prop_assert!(got.is_empty()),
            }
        }

        /// A failed check never allows unless failOpen, and a refusal's status is never
        /// informational.
        #[test]
        fn errors_follow_fail_open(
            fail_open in any::<bool>(),
            on_error in 400u16..600,
            denied in proptest::option::of(100u16..600),
        ) {
            let p = Provider {
                name: Arc::from("p"),
                timeout: Duration::from_secs(1),
                fail_open,
                status_on_error: StatusCode::from_u16(on_error).unwrap(),
            };
            let err = CheckError::Timeout { provider: p.name.clone() };
            match decide(&p, Err(err)) {
                Verdict::Allow { upstream, remove, downstream } => {
                    prop_assert!(fail_open);
                    prop_assert!(upstream.is_empty() && remove.is_empty() && downstream.is_empty());
                }
                Verdict::Refuse { status, .. } => {
                    prop_assert!(!fail_open);
                    prop_assert_eq!(status.as_u16(), on_error);
                }
            }
            let deny = CheckResult::Deny {
                status: denied.map(|s| StatusCode::from_u16(s).unwrap()),
                headers: vec![],
                body: Bytes::new(),
            };
            match decide(&p, Ok(deny)) {
                Verdict::Refuse { status, .. } => prop_assert!(!status.is_informational()),
                Verdict::Allow { .. } => prop_assert!(false, "a denial allowed"),
            }
        }
    }
}
