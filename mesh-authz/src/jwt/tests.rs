//! Unit tests of JWT authentication (sign, find, verify, rewrite, validate).

#![allow(clippy::unwrap_used)]
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn jwks(kid: &str, secret: &[u8]) -> String {
    json!({"keys": [{"kty": "oct", "kid": kid, "alg": "HS256", "k": B64.encode(secret)}]})
        .to_string()
}

fn token(kid: &str, secret: &[u8], claims: Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn authn(extra: Value) -> Authenticator {
    let mut rule = json!({"issuer": "iss-a", "jwks": jwks("k1", SECRET), "audiences": ["api"]});
    rule.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let spec: RequestAuthenticationSpec =
        serde_json::from_value(json!({"jwtRules": [rule]})).unwrap();
    Authenticator::new(
        spec.to_authentication("ns", "ra", "istio-system")
            .unwrap()
            .rules,
    )
}

fn check(
    a: &Authenticator,
    headers: &http::HeaderMap,
    q: Option<&str>,
) -> Result<Option<RequestAuth>, JwtError> {
    match a.find_token(headers, q)? {
        None => Ok(None),
        Some(t) => a.verify(&t, &|_| None).map(Some),
    }
}

fn bearer(t: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("authorization", format!("Bearer {t}").parse().unwrap());
    h
}

#[test]
fn valid_expired_wrong_issuer_signature_audience() {
    let a = authn(json!({}));
    let good = json!({"iss": "iss-a", "sub": "alice", "aud": "api", "exp": now() + 600, "azp": "web", "groups": ["dev"], "org": {"team": "core"}});
    let r = check(&a, &bearer(&token("k1", SECRET, good.clone())), None)
        .unwrap()
        .unwrap();
    assert_eq!(r.principal, "iss-a/alice");
    assert_eq!(r.audiences, ["api"]);
    assert_eq!(r.presenter.as_deref(), Some("web"));
    assert_eq!(
        r.claim(&["org".into(), "team".into()]),
        Some(&json!("core"))
    );
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    assert_eq!(
        check(&a, &bearer(&token("k1", SECRET, expired)), None).unwrap_err(),
        JwtError::Expired
    );
    let mut iss = good.clone();
    iss["iss"] = json!("iss-b");
    assert_eq!(
        check(&a, &bearer(&token("k1", SECRET, iss)), None).unwrap_err(),
        JwtError::IssuerNotConfigured
    );
    assert_eq!(
        check(
            &a,
            &bearer(&token(
                "k1",
                b"another secret, 32 bytes long!!",
                good.clone()
            )),
            None
        )
        .unwrap_err(),
        JwtError::BadSignature
    );
    assert_eq!(
        check(&a, &bearer(&token("k9", SECRET, good.clone())), None).unwrap_err(),
        JwtError::UnknownKey(a.rules()[0].keys.clone())
    );
    let mut aud = good.clone();
    aud["aud"] = json!(["other"]);
    assert_eq!(
        check(&a, &bearer(&token("k1", SECRET, aud)), None).unwrap_err(),
        JwtError::Audience
    );
    let mut nbf = good.clone();
    nbf["nbf"] = json!(now() + 3600);
    assert_eq!(
        check(&a, &bearer(&token("k1", SECRET, nbf)), None).unwrap_err(),
        JwtError::NotYetValid
    );
    assert_eq!(
        check(&a, &bearer("abc.def"), None).unwrap_err(),
        JwtError::Malformed
    );
    // No token, or a header without the prefix: no principal, no error.
    assert!(check(&a, &http::HeaderMap::new(), None).unwrap().is_none());
    let mut basic = http::HeaderMap::new();
    basic.insert("authorization", "Basic eDp5".parse().unwrap());
    assert!(check(&a, &basic, None).unwrap().is_none());
    // The default query parameter.
    let t = token("k1", SECRET, good.clone());
    assert!(
        check(
            &a,
            &http::HeaderMap::new(),
            Some(&format!("x=1&access_token={t}"))
        )
        .unwrap()
        .is_some()
    );
    // Two different tokens.
    let t2 = token(
        "k1",
        SECRET,
        json!({"iss": "iss-a", "sub": "bob", "aud": "api"}),
    );
    assert_eq!(
        check(&a, &bearer(&t), Some(&format!("access_token={t2}"))).unwrap_err(),
        JwtError::Multiple
    );
}

#[test]
fn locations_and_header_rewrites() {
    let a = authn(json!({
        "fromHeaders": [{"name": "X-Jwt"}],
        "fromCookies": ["session"],
        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "x-team", "claim": "org.team"}],
        "outputPayloadToHeader": "x-payload"
    }));
    let t = token(
        "k1",
        SECRET,
        json!({"iss": "iss-a", "sub": "alice", "aud": "api", "org": {"team": "core"}}),
    );
    let mut h = http::HeaderMap::new();
    h.insert("x-jwt", t.parse().unwrap());
    h.insert("x-sub", "forged".parse().unwrap());
    let found = a.find_token(&h, None).unwrap().unwrap();
    let auth = a.verify(&found, &|_| None).unwrap();
    a.rewrite_headers(&mut h, Some((&found, &auth)));
    assert!(h.get("x-jwt").is_none(), "token removed");
    assert_eq!(h["x-sub"], "alice");
    assert_eq!(h["x-team"], "core");
    assert_eq!(h["x-payload"], t.split('.').nth(1).unwrap());
    // The default Authorization location is not used once locations are given.
    assert!(a.find_token(&bearer(&t), None).unwrap().is_none());
    let mut c = http::HeaderMap::new();
    c.insert("cookie", format!("a=b; session={t}").parse().unwrap());
    assert!(a.find_token(&c, None).unwrap().is_some());
    // Without a token, forged output headers are still removed.
    let mut f = http::HeaderMap::new();
    f.insert("x-sub", "forged".parse().unwrap());
    a.rewrite_headers(&mut f, None);
    assert!(f.get("x-sub").is_none());
    let fwd = authn(json!({"forwardOriginalToken": true}));
    let mut h = bearer(&t);
    let found = fwd.find_token(&h, None).unwrap().unwrap();
    let auth = fwd.verify(&found, &|_| None).unwrap();
    fwd.rewrite_headers(&mut h, Some((&found, &auth)));
    assert!(h.get("authorization").is_some(), "forwarded");
}

#[test]
fn remote_keys_and_refetch() {
    let spec: RequestAuthenticationSpec = serde_json::from_value(json!({"jwtRules": [
        {"issuer": "https://idp.example", "jwksUri": "https://idp.example/keys"}
    ]}))
    .unwrap();
    let a = Authenticator::new(
        spec.to_authentication("ns", "ra", "istio-system")
            .unwrap()
            .rules,
    );
    let t = token(
        "k2",
        SECRET,
        json!({"iss": "https://idp.example", "sub": "x"}),
    );
    let found = a.find_token(&bearer(&t), None).unwrap().unwrap();
    let src = KeySource::Uri("https://idp.example/keys".into());
    let e = a.verify(&found, &|_| None).unwrap_err();
    assert_eq!(e.refetch(), Some(&src));
    let old = Arc::new(KeySet::parse(&jwks("k1", SECRET)).unwrap());
    let e = a.verify(&found, &|_| Some(old.clone())).unwrap_err();
    assert_eq!(e, JwtError::UnknownKey(src.clone()));
    let new = Arc::new(KeySet::parse(&jwks("k2", SECRET)).unwrap());
    assert!(a.verify(&found, &|_| Some(new.clone())).is_ok());
}

#[test]
fn validation_errors_name_fields() {
    let bad: RequestAuthenticationSpec = serde_json::from_value(json!({"jwtRules": [
        {"issuer": "", "jwks": "{}"},
        {"issuer": "a", "jwksUri": "ftp://x"},
        {"issuer": "a", "fromHeaders": [{"name": "bad header"}], "timeout": "soon"},
        {"issuer": "b", "jwks": "{\"keys\":[]}", "jwksUri": "https://x/k"}
    ]}))
    .unwrap();
    let errs = bad
        .to_authentication("ns", "ra", "istio-system")
        .unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "spec.jwtRules[0].issuer",
        "spec.jwtRules[0].jwks",
        "spec.jwtRules[1].jwksUri",
        "spec.jwtRules[2].issuer",
        "spec.jwtRules[2].fromHeaders[0].name",
        "spec.jwtRules[2].timeout",
        "spec.jwtRules[3].jwksUri",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    assert!(
        serde_json::from_value::<RequestAuthenticationSpec>(
            json!({"jwtRules": [{"issuer": "a", "jwksUrl": "x"}]})
        )
        .is_err(),
        "unknown fields rejected"
    );
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("99999999999999999999h"), None);
}
