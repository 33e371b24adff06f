//! JWT request authentication: Istio `RequestAuthentication` (security.istio.io/v1) with
//! Envoy's `jwt_authn` semantics as Istio configures it.
//!
//! - A request without a token passes authentication (it has no request principal, so a
//!   policy with `requestPrincipals: ["*"]` refuses it).
//! - A request with a token at one of the rules' locations must carry a valid one: right
//!   issuer (for that location), signature by a key of the issuer's JWKS, `exp`/`nbf` within
//!   60 s of clock skew, an allowed audience when `audiences` is set. Anything else is a
//!   [`JwtError`] (HTTP 401). More than one distinct token is refused too.
//! - A verified token gives a [`RequestAuth`]: principal `iss/sub`, audiences, presenter
//!   (`azp`) and the claims, for `requestPrincipals` and `request.auth.*` conditions.
//!
//! Signatures are checked by `jsonwebtoken` (aws-lc-rs); this module only chooses the key.
//! It does no I/O: remote key sets (`jwksUri`, or OpenID discovery from the issuer) are
//! fetched by the caller, which passes a lookup to [`Authenticator::verify`] and refetches
//! when the error says so ([`JwtError::refetch`]), e.g. on a key id the cached set lacks.
//!
//! ```
//! use mesh_authz::jwt::{Authenticator, KeySource, RequestAuthenticationSpec};
//! let spec: RequestAuthenticationSpec = serde_json::from_str(r#"{
//!   "jwtRules": [{"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks"}]
//! }"#).unwrap();
//! let ra = spec.to_authentication("shop", "jwt", "istio-system").unwrap();
//! let authn = Authenticator::new(ra.rules.clone());
//! let mut headers = http::HeaderMap::new();
//! assert!(authn.find_token(&headers, None).unwrap().is_none(), "no token: passes");
//! headers.insert("authorization", "Bearer not.a.jwt".parse().unwrap());
//! let token = authn.find_token(&headers, None).unwrap().unwrap();
//! assert!(authn.verify(&token, &|_: &KeySource| None).is_err(), "a bad token is refused");
//! ```
//!
//! Layout: `spec` (the `RequestAuthentication` serde types and their validation), `rule` (the
//! validated rules), `keys` (JWKS parsing), `authn` (per request: find, verify, rewrite) and
//! `redact` (how an inline JWKS shows in dumps). Everything public is re-exported here.

mod authn;
mod keys;
mod redact;
mod rule;
mod spec;
#[cfg(test)]
mod tests;

pub use authn::{Authenticator, FoundToken, JwtError, RequestAuth};
pub use keys::{Key, KeySet};
pub use rule::{ClaimToHeader, JwtRule, KeySource, RequestAuthentication, TokenLocation};
pub use spec::{
    ClaimToHeaderSpec, JwtHeaderSpec, JwtRuleSpec, RequestAuthenticationSpec, parse_duration,
};
