//! Secret material never leaves a validated resource through its dump: an inline JWKS with
//! a symmetric key (`kty: oct`, member `k`) or private-key members is redacted when
//! serialized (what `/config_dump` shows) and in debug output (what logs show).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_authz::jwt::RequestAuthenticationSpec;

const SECRET_K: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LWtleSE";
const PRIVATE_D: &str = "cHJpdmF0ZS1leHBvbmVudC1kLWRvLW5vdC1sZWFr";

#[test]
fn inline_symmetric_jwks_is_redacted_in_dumps() {
    let jwks = serde_json::json!({"keys": [
        {"kty": "oct", "kid": "hmac-1", "alg": "HS256", "k": SECRET_K},
        {"kty": "EC", "kid": "ec-1", "crv": "P-256", "d": PRIVATE_D,
         "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
    ]})
    .to_string();
    let spec: RequestAuthenticationSpec = serde_json::from_value(serde_json::json!({
        "targetRefs": [{"kind": "Service", "name": "api"}],
        "jwtRules": [{"issuer": "https://issuer.example", "jwks": jwks}]
    }))
    .unwrap();
    let ra = spec.to_authentication("ns", "jwt", "istio-system").unwrap();
    let dump = serde_json::to_string(&ra).unwrap();
    assert!(!dump.contains(SECRET_K), "{dump}");
    assert!(!dump.contains(PRIVATE_D), "{dump}");
    // Still useful: which keys, of which type.
    assert!(dump.contains("hmac-1") && dump.contains("ec-1"), "{dump}");
    let debug = format!("{ra:?}");
    assert!(!debug.contains(SECRET_K), "{debug}");
    assert!(!debug.contains(PRIVATE_D), "{debug}");
}
