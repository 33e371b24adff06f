//! Fuzzing JWT request authentication (`Authenticator::find_token`, `Authenticator::verify`,
//! `KeySet::parse`, `parse_duration`) over arbitrary token strings, tokens made of random
//! JSON headers and claims (random shapes and types, signed with the right key or not), and
//! valid tokens with mutations.
//!
//! Properties: no panic, every call within the time bound, and
//! - nothing is forged: a token without the right signature never verifies, and a mutated
//!   token that still verifies carries exactly the original claims and principal;
//! - a correctly signed token verifies exactly when Istio says it should (issuer, audience,
//!   `exp`/`nbf` with 60 s of skew, `kid`/`alg` of a key in the set), and then its principal
//!   is `iss/sub`;
//! - a token found is non-empty and trimmed, at a known location;
//! - a parsed key set has a usable key; a parsed duration is finite and non-negative.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/mutate.rs"]
mod mutate;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_authz::jwt::{
    Authenticator, FoundToken, JwtError, KeySet, RequestAuthenticationSpec, parse_duration,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// One HMAC key (`k1`, HS256) and one EC public key (`ec-1`, RFC 7515 A.3), so both key
/// families are looked up.
fn jwks() -> String {
    json!({"keys": [
        {"kty": "oct", "kid": "k1", "alg": "HS256", "k": B64.encode(SECRET)},
        {"kty": "EC", "kid": "ec-1", "crv": "P-256",
         "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
    ]})
    .to_string()
}

fn authn() -> Authenticator {
    let spec: RequestAuthenticationSpec = serde_json::from_value(json!({"jwtRules": [{
        "issuer": "iss-a",
        "jwks": jwks(),
        "audiences": ["api"],
        "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}, {"name": "x-jwt"}],
        "fromParams": ["access_token"],
        "fromCookies": ["jwt"],
    }]}))
    .unwrap();
    Authenticator::new(
        spec.to_authentication("ns", "ra", "istio-system")
            .unwrap()
            .rules,
    )
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn verify(a: &Authenticator, token: &str) -> Result<mesh_authz::jwt::RequestAuth, JwtError> {
    let found = FoundToken {
        token: token.to_owned(),
        location: 0,
    };
    mutate::timed("verify", token.len(), || a.verify(&found, &|_| None))
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{msg}.{sig}")
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "iss", "sub", "aud", "exp", "nbf", "iat", "azp", "alg", "kid", "typ", "crit", "jku",
            "b64",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

/// Any JSON value, biased to the names and values that matter here.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (-120i64..1200).prop_map(|d| Value::from(now() + d)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "iss-a", "api", "HS256", "k1", "ec-1", "ES256", "none", "JWT"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A claims object: `iss`, `sub`, `aud`, `exp`, `nbf` each absent, right, wrong or of
/// another type, plus random members.
fn claims() -> impl Strategy<Value = Map<String, Value>> {
    let iss = prop::option::of(prop_oneof![Just(Value::from("iss-a")), json_value()]);
    let aud = prop::option::of(prop_oneof![
        Just(Value::from("api")),
        Just(json!(["other", "api"])),
        json_value()
    ]);
    let time = || {
        prop::option::of(prop_oneof![
            (-600i64..600).prop_map(|d| Value::from(now() + d)),
            json_value()
        ])
    };
    (
        iss,
        prop::option::of(json_value()),
        aud,
        time(),
        time(),
        prop::collection::btree_map(key(), json_value(), 0..4),
    )
        .prop_map(|(iss, sub, aud, exp, nbf, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            for (k, v) in [
                ("iss", iss),
                ("sub", sub),
                ("aud", aud),
                ("exp", exp),
                ("nbf", nbf),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            m
        })
}

/// Our fixed headers, whose outcome [`should_verify`] predicts.
fn fixed_headers() -> [Value; 2] {
    [
        json!({"alg": "HS256", "kid": "k1", "typ": "JWT"}),
        json!({"alg": "HS256"}),
    ]
}

/// A header: usually one of [`fixed_headers`], else anything.
fn header() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(fixed_headers().to_vec()),
        1 => prop::collection::btree_map(key(), json_value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => json_value(),
    ]
}

/// Whether a time claim passes: absent or null (as `jsonwebtoken` reads it), or a number
/// that is a non-negative integer or finite float below `u64::MAX` (rounded) that `ok`
/// accepts.
fn time_ok(v: Option<&Value>, ok: impl Fn(u64) -> bool) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Number(n)) => match (n.as_u64(), n.is_i64(), n.as_f64()) {
            (Some(u), _, _) => ok(u),
            (None, true, _) => false,
            (None, false, Some(f)) => {
                f.is_finite() && f >= 0.0 && f < u64::MAX as f64 && ok(f.round() as u64)
            }
            _ => false,
        },
        Some(_) => false,
    }
}

/// Whether a correctly signed token with these claims and one of our fixed headers
/// (`alg: HS256`, `kid: k1` or none) verifies: issuer, audience, `exp`/`nbf` with 60 s of
/// skew, as Istio (Envoy `jwt_authn`) checks them.
fn should_verify(claims: &Map<String, Value>) -> bool {
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == "api",
        Some(Value::Array(v)) => v.iter().any(|a| a == "api"),
        _ => false,
    };
    let t = now() as u64;
    claims.get("iss") == Some(&json!("iss-a"))
        && aud_ok
        && time_ok(claims.get("exp"), |e| e >= t - 60)
        && time_ok(claims.get("nbf"), |n| n <= t + 60)
}

/// Whether the registered claims have the types Istio (Envoy) requires: `sub` a string,
/// `exp`/`nbf` numbers, `aud` a string or strings. Other tokens are refused, whatever
/// [`should_verify`] says (`jsonwebtoken` fails on some wrong types, not all).
fn well_typed(claims: &Map<String, Value>) -> bool {
    let sub = matches!(claims.get("sub"), None | Some(Value::String(_)));
    let times = ["exp", "nbf"]
        .iter()
        .all(|k| matches!(claims.get(*k), None | Some(Value::Number(_))));
    let aud = match claims.get("aud") {
        Some(Value::Array(v)) => v.iter().all(Value::is_string),
        _ => true,
    };
    sub && times && aud
}

/// Whether a time claim is within 2 s of a validity edge (clock skew of the test itself).
fn near_edge(claims: &Map<String, Value>) -> bool {
    let t = now() as f64;
    ["exp", "nbf"].iter().any(|k| {
        claims
            .get(*k)
            .and_then(Value::as_f64)
            .is_some_and(|v| ((v - (t - 60.0)).abs() < 3.0) || ((v - (t + 60.0)).abs() < 3.0))
    })
}

const DICT: &[&[u8]] = &[
    b".",
    b"..",
    b"=",
    b"+",
    b"/",
    b"-",
    b"_",
    b"eyJ",
    b"eyJhbGciOiJub25lIn0",
    b"e30",
    b"AAAA",
    b" ",
];

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn arbitrary_tokens_never_verify(b in mutate::bytes(600)) {
        let a = authn();
        let t = mutate::text(&b);
        let prefixed = format!("eyJ{t}");
        prop_assert!(verify(&a, &t).is_err());
        prop_assert!(verify(&a, &prefixed).is_err());
    }

    #[test]
    fn random_headers_and_claims(
        h in header(),
        c in prop_oneof![4 => claims().prop_map(Value::Object), 1 => json_value()],
        sig in prop_oneof![Just(None), mutate::bytes(80).prop_map(Some)],
    ) {
        let a = authn();
        let (hb, cb) = (h.to_string().into_bytes(), c.to_string().into_bytes());
        let token = match &sig {
            None => sign(&hb, &cb),
            Some(s) => format!("{}.{}.{}", B64.encode(&hb), B64.encode(&cb), B64.encode(s)),
        };
        let r = verify(&a, &token);
        match (&c, sig) {
            (Value::Object(m), None) => {
                let fixed = fixed_headers().contains(&h);
                if fixed && !near_edge(m) && well_typed(m) {
                    prop_assert_eq!(r.is_ok(), should_verify(m), "{} {} -> {:?}", h, c, r.as_ref().err());
                }
                if let Ok(auth) = r {
                    // Whatever the header, what verifies passes Istio's checks.
                    prop_assert!(near_edge(m) || should_verify(m), "{} {} verified", h, c);
                    let sub = m.get("sub").and_then(Value::as_str).unwrap_or("");
                    prop_assert_eq!(auth.principal, format!("iss-a/{sub}"));
                    // As serde_json reads the claims' text (its float parsing is not exact).
                    let read: Map<String, Value> = serde_json::from_str(&c.to_string()).unwrap();
                    prop_assert_eq!(&auth.claims, &read);
                }
            }
            (_, None) => prop_assert_eq!(r.err(), Some(JwtError::Malformed)),
            (_, Some(_)) => prop_assert!(r.is_err(), "a random signature verified: {}", token),
        }
    }

    #[test]
    fn mutated_valid_tokens_forge_nothing(
        c in claims().prop_map(|mut m| {
            m.insert("iss".into(), "iss-a".into());
            m.insert("aud".into(), "api".into());
            m.insert("exp".into(), (now() + 600).into());
            m.insert("sub".into(), "alice".into());
            m.remove("nbf");
            m
        }),
        muts in prop::collection::vec(mutate::mutation(DICT), 1..6),
    ) {
        let a = authn();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let token = jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(SECRET)).unwrap();
        let orig = verify(&a, &token).unwrap();
        let bad = mutate::text(&mutate::apply(token.clone().into_bytes(), &muts));
        if let Ok(auth) = verify(&a, &bad) {
            prop_assert_eq!(&auth.claims, &orig.claims, "forged claims from {}", bad);
            prop_assert_eq!(&auth.principal, &orig.principal);
            prop_assert_eq!(&auth.audiences, &orig.audiences);
        }
    }

    #[test]
    fn find_token_in_arbitrary_requests(
        values in prop::collection::vec((
            prop::sample::select(vec!["authorization", "x-jwt", "cookie", "x-other"]),
            prop_oneof![
                mutate::bytes(200),
                mutate::near(vec![
                    b"Bearer a.b.c".to_vec(),
                    b"jwt=\"a.b.c\"; other=1; jwt=a.b.c".to_vec(),
                    b"Bearer  ".to_vec(),
                ], DICT),
            ],
        ), 0..5),
        query in prop::option::of(mutate::bytes(200).prop_map(|b| mutate::text(&b))),
    ) {
        let a = authn();
        let mut headers = http::HeaderMap::new();
        for (n, v) in &values {
            if let Ok(v) = http::HeaderValue::from_bytes(v) {
                headers.append(*n, v);
            }
        }
        let n = values.iter().map(|v| v.1.len()).sum::<usize>() + query.as_ref().map_or(0, String::len);
        let r = mutate::timed("find_token", n, || a.find_token(&headers, query.as_deref()));
        if let Ok(Some(t)) = r {
            prop_assert!(!t.token.is_empty() && t.token.trim() == t.token);
            prop_assert!(t.location < a.locations().len());
            let r = mutate::timed("verify", t.token.len(), || a.verify(&t, &|_| None));
            prop_assert!(r.is_err());
        }
    }

    #[test]
    fn key_sets(b in prop_oneof![
        mutate::bytes(400),
        mutate::near(vec![jwks().into_bytes()], DICT),
        json_value().prop_map(|v| json!({"keys": [v]}).to_string().into_bytes()),
    ]) {
        let s = mutate::text(&b);
        if let Ok(set) = mutate::timed("KeySet::parse", s.len(), || KeySet::parse(&s)) {
            prop_assert!(!set.keys.is_empty());
            let _ = Arc::new(set);
        }
    }

    #[test]
    fn durations(b in prop_oneof![
        mutate::bytes(40),
        mutate::near(vec![b"5s".to_vec(), b"1.5m".to_vec(), b"500ms".to_vec()], DICT),
    ]) {
        let s = mutate::text(&b);
        if let Some(d) = mutate::timed("parse_duration", s.len(), || parse_duration(&s)) {
            prop_assert!(d.as_secs_f64().is_finite());
            prop_assert!(s.ends_with('s') || s.ends_with('m') || s.ends_with('h'));
        }
    }
}
