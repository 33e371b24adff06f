#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_authz::jwt::RequestAuthenticationSpec;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::layer::testing::echo;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const URI: &str = "https://issuer.example/jwks";

fn jwks(secret: &[u8]) -> String {
    json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": B64.encode(secret)}]})
        .to_string()
}

fn token(secret: &[u8], claims: Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn good_claims() -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({"iss": "iss-a", "sub": "alice", "exp": now + 600, "team": "core"})
}

/// Rules with remote keys (`jwksUri`), the `access_token` query parameter, and the `team`
/// claim written to `x-team`.
#[derive(Clone)]
struct Source {
    authn: Option<Arc<Authenticator>>,
    /// Keys the cache holds (none until fetched).
    cached: Arc<Mutex<Option<Arc<KeySet>>>>,
    fetches: Arc<AtomicUsize>,
}

impl Source {
    fn new(cached: bool) -> Source {
        let spec: RequestAuthenticationSpec = serde_json::from_value(json!({"jwtRules": [{
            "issuer": "iss-a", "jwksUri": URI,
            "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}],
            "fromParams": ["access_token"],
            "outputClaimToHeaders": [{"header": "x-team", "claim": "team"}]
        }]}))
        .unwrap();
        let rules = spec
            .to_authentication("ns", "ra", "istio-system")
            .unwrap()
            .rules;
        Source {
            authn: Some(Arc::new(Authenticator::new(rules))),
            cached: Arc::new(Mutex::new(
                cached.then(|| Arc::new(KeySet::parse(&jwks(SECRET)).unwrap())),
            )),
            fetches: Arc::default(),
        }
    }
}

impl JwtSource for Source {
    fn authenticator(&self) -> Option<Arc<Authenticator>> {
        self.authn.clone()
    }

    fn keys(&self, src: &KeySource) -> Option<Arc<KeySet>> {
        assert_eq!(src, &KeySource::Uri(URI.into()));
        self.cached.lock().unwrap().clone()
    }

    fn refetch(&self, _src: KeySource) -> impl Future<Output = ()> + Send + 'static {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let cached = self.cached.clone();
        async move {
            *cached.lock().unwrap() = Some(Arc::new(KeySet::parse(&jwks(SECRET)).unwrap()));
        }
    }
}

async fn call(src: &Source, req: Request<()>) -> Response<Bytes> {
    JwtLayer::new(src.clone())
        .layer(echo())
        .oneshot(req)
        .await
        .unwrap()
}

fn req(auth: Option<&str>, path: &str) -> Request<()> {
    let mut b = Request::get(path).header("host", "svc.ns:80");
    if let Some(t) = auth {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(()).unwrap()
}

#[tokio::test]
async fn no_token_passes_without_principal() {
    let src = Source::new(true);
    let mut r = req(None, "/");
    r.headers_mut().insert("x-team", "forged".parse().unwrap());
    let resp = call(&src, r).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers().get("x-team").is_none(),
        "forged claim header removed"
    );
}

#[tokio::test]
async fn valid_token_writes_claims_and_is_handed_on() {
    let src = Source::new(true);
    let svc = JwtLayer::new(src.clone()).layer(tower::service_fn(|req: Request<()>| async move {
        let auth = req
            .extensions()
            .get::<Authenticated>()
            .map(|a| a.0.principal.clone());
        let team = req.headers().get("x-team").cloned();
        let mut resp = Response::new(Bytes::new());
        *resp.headers_mut() = req.headers().clone();
        if let (Some(p), Some(t)) = (auth, team) {
            resp.headers_mut().insert("x-principal", p.parse().unwrap());
            resp.headers_mut().insert("x-seen-team", t);
        }
        Ok::<_, std::convert::Infallible>(resp)
    }));
    let resp = svc
        .oneshot(req(Some(&token(SECRET, good_claims())), "/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-principal"], "iss-a/alice");
    assert_eq!(resp.headers()["x-seen-team"], "core");
    assert!(
        resp.headers().get("authorization").is_none(),
        "token not forwarded"
    );
}

#[tokio::test]
async fn missing_keys_are_refetched_once() {
    let src = Source::new(false);
    let resp = call(&src, req(Some(&token(SECRET, good_claims())), "/")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(src.fetches.load(Ordering::Relaxed), 1);
}

/// Attacker: a token signed with another key, one with `alg: none`, and a garbage token are
/// refused with 401 and a challenge; the inner service never sees them.
#[tokio::test]
async fn forged_tokens_get_401() {
    let src = Source::new(true);
    let none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","kid":"k1"}"#),
        B64.encode(good_claims().to_string())
    );
    for t in [
        token(b"another-secret-another-secret-00", good_claims()),
        none,
        "garbage".to_owned(),
    ] {
        let resp = call(&src, req(Some(&t), "/admin")).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{t}");
        let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(
            challenge,
            "Bearer realm=\"http://svc.ns:80/admin\", error=\"invalid_token\""
        );
        let body = resp.into_body();
        assert!(
            body.starts_with(b"Jwt"),
            "Envoy's wording, not the inner service's: {body:?}"
        );
    }
    // A forged token with unknown keys is refetched, then still refused.
    let src = Source::new(false);
    let resp = call(
        &src,
        req(Some(&token(b"x".repeat(32).as_slice(), good_claims())), "/"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tokens_in_the_query_are_not_logged() {
    let src = Source::new(true);
    let t = token(SECRET, good_claims());
    let resp = call(&src, req(None, &format!("/p?a=1&access_token={t}&b=2"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.extensions()
            .get::<Meta>()
            .unwrap()
            .logged_path
            .as_deref(),
        Some("/p?a=1&access_token=<redacted>&b=2")
    );
    let resp = call(&src, req(None, "/p?access_token=garbage")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.extensions()
            .get::<Meta>()
            .unwrap()
            .logged_path
            .as_deref(),
        Some("/p?access_token=<redacted>")
    );
}

#[tokio::test]
async fn without_rules_nothing_changes() {
    let src = Source {
        authn: None,
        ..Source::new(true)
    };
    let mut r = req(Some("garbage"), "/");
    r.headers_mut().insert("x-team", "mine".parse().unwrap());
    let resp = call(&src, r).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-team"], "mine");
}
