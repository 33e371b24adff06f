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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::istio::{FieldError, TargetRefSpec, WorkloadSelector};
use crate::model::Scope;

/// `RequestAuthentication.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// Workload selector (sidecars); absent means namespace or mesh scope.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Waypoint attachment: the Services or Gateways whose waypoint authenticates.
    #[serde(default)]
    pub target_refs: Vec<TargetRefSpec>,
    /// The single-target form of `targetRefs`.
    #[serde(default)]
    pub target_ref: Option<TargetRefSpec>,
    /// The JWT issuers accepted.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRuleSpec>,
}

/// `jwtRules[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRuleSpec {
    /// `iss` of the tokens this rule accepts.
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values (any one); empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the JWKS is fetched (http or https).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The JWKS inline, as JSON.
    #[serde(default)]
    pub jwks: Option<String>,
    /// Headers carrying the token (default `Authorization: Bearer`).
    #[serde(default)]
    pub from_headers: Vec<JwtHeaderSpec>,
    /// Query parameters carrying the token (default `access_token`).
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies carrying the token.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Header that receives the verified payload (base64url).
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request sent upstream (default: removed).
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
    /// JWKS fetch timeout (default 5s).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `fromHeaders[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeaderSpec {
    /// Header name.
    pub name: String,
    /// Prefix before the token, e.g. `Bearer `.
    #[serde(default)]
    pub prefix: String,
}

/// `outputClaimToHeaders[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    /// Header name.
    pub header: String,
    /// Claim name; `a.b` for a nested claim.
    pub claim: String,
}

/// A validated `RequestAuthentication`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestAuthentication {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Where it applies.
    pub scope: Scope,
    /// Its rules.
    pub rules: Vec<Arc<JwtRule>>,
}

/// Where a rule's keys come from. Serialized and debug-printed with an inline JWKS's secret
/// members redacted (see `redact.rs`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeySource {
    /// `jwks` inline (the JSON text).
    Inline(String),
    /// `jwksUri`.
    Uri(String),
    /// Neither set: OpenID discovery (`{issuer}/.well-known/openid-configuration`).
    Discovery(String),
}

impl KeySource {
    /// The URL to fetch first: the JWKS itself, or the discovery document.
    pub fn url(&self) -> Option<String> {
        match self {
            KeySource::Inline(_) => None,
            KeySource::Uri(u) => Some(u.clone()),
            KeySource::Discovery(iss) => Some(format!(
                "{}/.well-known/openid-configuration",
                iss.trim_end_matches('/')
            )),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Inline(_) => f.write_str("inline jwks"),
            KeySource::Uri(u) => f.write_str(u),
            KeySource::Discovery(i) => write!(f, "discovery of {i}"),
        }
    }
}

/// Where a token is looked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenLocation {
    /// A header (lower-case name) and the prefix before the token.
    Header {
        /// Lower-case header name.
        name: String,
        /// Prefix, e.g. `Bearer `.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// A claim copied into a header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClaimToHeader {
    /// Lower-case header name.
    pub header: String,
    /// Claim path (`a.b` split).
    pub claim: Vec<String>,
}

/// A validated `jwtRules[]` entry.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtRule {
    /// `iss`.
    pub issuer: String,
    /// Accepted audiences (empty: any).
    pub audiences: Vec<String>,
    /// Key source.
    pub keys: KeySource,
    /// Parsed inline keys.
    #[serde(skip)]
    pub inline: Option<Arc<KeySet>>,
    /// Token locations.
    pub locations: Vec<TokenLocation>,
    /// Keep the token upstream.
    pub forward_original_token: bool,
    /// Claims to headers.
    pub claim_to_headers: Vec<ClaimToHeader>,
    /// Header for the payload.
    pub payload_to_header: Option<String>,
    /// Fetch timeout.
    pub timeout: Duration,
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    /// `kid`.
    pub kid: Option<String>,
    /// `alg`, when the JWK names one.
    pub alg: Option<Algorithm>,
    key: DecodingKey,
}

/// A parsed JWKS.
#[derive(Clone, Default)]
pub struct KeySet {
    /// Its usable keys.
    pub keys: Vec<Key>,
    /// Keys skipped (unsupported type, `use: enc`, malformed).
    pub skipped: usize,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        write!(f, "KeySet{{kids: {kids:?}, skipped: {}}}", self.skipped)
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys that cannot verify signatures are
    /// skipped and counted; a set with no usable key is an error.
    pub fn parse(json: &str) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc = serde_json::from_str(json).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut set = KeySet::default();
        for k in doc.keys {
            let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(k) else {
                set.skipped += 1;
                continue;
            };
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                set.skipped += 1;
                continue;
            }
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::try_from(a).ok());
            match DecodingKey::from_jwk(&jwk) {
                Ok(key) => set.keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                }),
                Err(_) => set.skipped += 1,
            }
        }
        if set.keys.is_empty() {
            return Err(format!(
                "no usable key in the JWKS ({} skipped)",
                set.skipped
            ));
        }
        Ok(set)
    }

    /// The key ids, for logs and config dumps.
    pub fn kids(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.kid.clone().unwrap_or_else(|| "-".into()))
            .collect()
    }
}

/// Why a token was refused (HTTP 401). `Display` gives Envoy's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header and payload.
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    /// More than one distinct token in the request.
    #[error("Jwt: more than one token in the request")]
    Multiple,
    /// No rule accepts this issuer at the location the token was found.
    #[error("Jwt issuer is not configured")]
    IssuerNotConfigured,
    /// The issuer's keys are not available (not fetched yet, or the fetch failed).
    #[error("Jwks remote fetch is failed")]
    KeysUnavailable(KeySource),
    /// No key of the set matches the token's `kid` / `alg`.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    UnknownKey(KeySource),
    /// The signature does not verify.
    #[error("Jwt verification fails")]
    BadSignature,
    /// `exp` passed.
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` not reached.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// `aud` has none of the rule's audiences.
    #[error("Audiences in Jwt are not allowed")]
    Audience,
}

impl JwtError {
    /// The remote key source worth refetching before giving up: keys missing, or a key id
    /// the cached set does not have (keys rotated at the issuer).
    pub fn refetch(&self) -> Option<&KeySource> {
        match self {
            JwtError::KeysUnavailable(s) | JwtError::UnknownKey(s)
                if !matches!(s, KeySource::Inline(_)) =>
            {
                Some(s)
            }
            _ => None,
        }
    }
}

/// A token found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    /// The token.
    pub token: String,
    /// Index of its location in [`Authenticator::locations`].
    pub location: usize,
}

/// The verified identity of a request.
#[derive(Debug, Clone)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
    /// `aud` values.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// All claims.
    pub claims: serde_json::Map<String, Value>,
    /// The base64url payload, as in the token.
    pub payload: String,
    /// The rule that verified it.
    pub rule: Arc<JwtRule>,
}

impl RequestAuth {
    /// A claim by path (`["a", "b"]` is `claims.a.b`).
    pub fn claim(&self, path: &[String]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.claims.get(first)?;
        for p in rest {
            v = v.as_object()?.get(p)?;
        }
        Some(v)
    }
}

/// The rules that apply to one target, with their token locations merged, ready per request.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    rules: Vec<Arc<JwtRule>>,
    locations: Vec<TokenLocation>,
    /// Output header names, removed from client requests so they cannot be forged.
    output_headers: Vec<String>,
}

fn header_value<'h>(headers: &'h http::HeaderMap, name: &str) -> impl Iterator<Item = &'h str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

impl Authenticator {
    /// Merges rules (of every `RequestAuthentication` applying to a target).
    pub fn new(rules: Vec<Arc<JwtRule>>) -> Authenticator {
        let mut locations: Vec<TokenLocation> = Vec::new();
        let mut output_headers = Vec::new();
        for r in &rules {
            for l in &r.locations {
                if !locations.contains(l) {
                    locations.push(l.clone());
                }
            }
            output_headers.extend(r.claim_to_headers.iter().map(|c| c.header.clone()));
            output_headers.extend(r.payload_to_header.clone());
        }
        output_headers.sort();
        output_headers.dedup();
        Authenticator {
            rules,
            locations,
            output_headers,
        }
    }

    /// No rules: nothing to authenticate.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules.
    pub fn rules(&self) -> &[Arc<JwtRule>] {
        &self.rules
    }

    /// The merged token locations.
    pub fn locations(&self) -> &[TokenLocation] {
        &self.locations
    }

    /// Finds the request's token. `Ok(None)`: no token at any location (the request passes
    /// authentication without a principal); two different tokens are an error.
    pub fn find_token(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<FoundToken>, JwtError> {
        let mut found: Option<FoundToken> = None;
        let mut take = |token: &str, location: usize| -> Result<(), JwtError> {
            let token = token.trim();
            if token.is_empty() {
                return Ok(());
            }
            match &found {
                Some(f) if f.token != token => Err(JwtError::Multiple),
                Some(_) => Ok(()),
                None => {
                    found = Some(FoundToken {
                        token: token.to_owned(),
                        location,
                    });
                    Ok(())
                }
            }
        };
        for (i, loc) in self.locations.iter().enumerate() {
            match loc {
                TokenLocation::Header { name, prefix } => {
                    for v in header_value(headers, name) {
                        if let Some(t) = v.strip_prefix(prefix.as_str()) {
                            take(t, i)?;
                        }
                    }
                }
                TokenLocation::Param(p) => {
                    for kv in query.unwrap_or_default().split('&') {
                        if let Some((k, v)) = kv.split_once('=')
                            && k == p
                        {
                            take(v, i)?;
                        }
                    }
                }
                TokenLocation::Cookie(c) => {
                    for v in header_value(headers, "cookie") {
                        for kv in v.split(';') {
                            if let Some((k, v)) = kv.trim().split_once('=')
                                && k == c
                            {
                                take(v.trim_matches('"'), i)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// Verifies a token with the keys `keys` returns for a rule's source (`None`: not
    /// available).
    pub fn verify(
        &self,
        found: &FoundToken,
        keys: &dyn Fn(&KeySource) -> Option<Arc<KeySet>>,
    ) -> Result<RequestAuth, JwtError> {
        let token = found.token.as_str();
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let unverified: serde_json::Map<String, Value> =
            jsonwebtoken::dangerous::insecure_decode_claims(token)
                .map_err(|_| JwtError::Malformed)?;
        let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
        let location = self.locations.get(found.location);
        let rule = self
            .rules
            .iter()
            .find(|r| r.issuer == iss && location.is_some_and(|l| r.locations.contains(l)))
            .ok_or(JwtError::IssuerNotConfigured)?;
        let set = match &rule.inline {
            Some(s) => s.clone(),
            None => keys(&rule.keys).ok_or_else(|| JwtError::KeysUnavailable(rule.keys.clone()))?,
        };
        let family = header.alg.family();
        let candidates: Vec<&Key> = set
            .keys
            .iter()
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            })
            .filter(|k| k.key.family() == family && k.alg.is_none_or(|a| a == header.alg))
            .collect();
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey(rule.keys.clone()));
        }
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = 60;
        let mut last = JwtError::BadSignature;
        let mut claims = None;
        for k in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &k.key, &validation)
            {
                Ok(d) => {
                    claims = Some(d.claims);
                    break;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => JwtError::Expired,
                        K::ImmatureSignature => JwtError::NotYetValid,
                        _ => JwtError::BadSignature,
                    };
                    if last != JwtError::BadSignature {
                        // The signature verified; the times did not.
                        return Err(last);
                    }
                }
            }
        }
        let claims = claims.ok_or(last)?;
        let audiences: Vec<String> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(v)) => v
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if !rule.audiences.is_empty() && !audiences.iter().any(|a| rule.audiences.contains(a)) {
            return Err(JwtError::Audience);
        }
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        Ok(RequestAuth {
            principal: format!("{iss}/{sub}"),
            audiences,
            presenter: claims.get("azp").and_then(Value::as_str).map(str::to_owned),
            payload: payload.to_owned(),
            claims,
            rule: rule.clone(),
        })
    }

    /// Rewrites request headers after authentication: output headers the client sent are
    /// removed (they would otherwise pass as verified claims); for a verified token, its
    /// header is removed unless `forwardOriginalToken`, and claims and payload are written.
    pub fn rewrite_headers(
        &self,
        headers: &mut http::HeaderMap,
        token: Option<(&FoundToken, &RequestAuth)>,
    ) {
        for h in &self.output_headers {
            headers.remove(h.as_str());
        }
        let Some((found, auth)) = token else {
            return;
        };
        let rule = &auth.rule;
        if !rule.forward_original_token
            && let Some(TokenLocation::Header { name, .. }) = self.locations.get(found.location)
        {
            headers.remove(name.as_str());
        }
        for c in &rule.claim_to_headers {
            let v = match auth.claim(&c.claim) {
                Some(Value::String(s)) => s.clone(),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                _ => continue,
            };
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(c.header.as_bytes()),
                http::HeaderValue::from_str(&v),
            ) {
                headers.insert(n, v);
            }
        }
        if let Some(h) = &rule.payload_to_header
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(h.as_bytes()),
                http::HeaderValue::from_str(&auth.payload),
            )
        {
            headers.insert(n, v);
        }
    }
}

/// Parses a duration as Istio writes them: `5s`, `1.5s`, `500ms`, `1m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    // `try_`: `from_secs_f64` panics past `u64::MAX` seconds (`timeout: 99999999999999999999h`).
    Duration::try_from_secs_f64(secs).ok()
}

fn valid_header_name(h: &str) -> bool {
    !h.is_empty() && http::HeaderName::from_bytes(h.as_bytes()).is_ok() && !h.starts_with(':')
}

impl JwtRuleSpec {
    fn to_rule(&self, f: &str, errs: &mut Vec<FieldError>) -> JwtRule {
        let mut err = |field: String, reason: String| errs.push(FieldError { field, reason });
        if self.issuer.is_empty() {
            err(format!("{f}.issuer"), "required".into());
        }
        let keys = match (&self.jwks, &self.jwks_uri) {
            (Some(_), Some(_)) => {
                err(
                    format!("{f}.jwksUri"),
                    "set one of jwks and jwksUri, not both".into(),
                );
                KeySource::Discovery(self.issuer.clone())
            }
            (Some(j), None) => KeySource::Inline(j.clone()),
            (None, Some(u)) => {
                match u.parse::<http::Uri>() {
                    Ok(uri)
                        if matches!(uri.scheme_str(), Some("http" | "https"))
                            && uri.host().is_some() => {}
                    _ => err(
                        format!("{f}.jwksUri"),
                        format!("{u:?} is not an http or https URL"),
                    ),
                }
                KeySource::Uri(u.clone())
            }
            (None, None) => {
                if !self.issuer.starts_with("http://") && !self.issuer.starts_with("https://") {
                    err(
                        format!("{f}.jwksUri"),
                        "required unless the issuer is an http(s) URL for OpenID discovery".into(),
                    );
                }
                KeySource::Discovery(self.issuer.clone())
            }
        };
        let inline = match &keys {
            KeySource::Inline(j) => match KeySet::parse(j) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    err(format!("{f}.jwks"), e);
                    None
                }
            },
            _ => None,
        };
        let mut locations = Vec::new();
        for (i, h) in self.from_headers.iter().enumerate() {
            let name = h.name.to_ascii_lowercase();
            if !valid_header_name(&name) {
                err(
                    format!("{f}.fromHeaders[{i}].name"),
                    format!("{:?} is not a header name", h.name),
                );
            }
            locations.push(TokenLocation::Header {
                name,
                prefix: h.prefix.clone(),
            });
        }
        for (i, p) in self.from_params.iter().enumerate() {
            if p.is_empty() {
                err(format!("{f}.fromParams[{i}]"), "empty".into());
            }
            locations.push(TokenLocation::Param(p.clone()));
        }
        for (i, c) in self.from_cookies.iter().enumerate() {
            if c.is_empty() {
                err(format!("{f}.fromCookies[{i}]"), "empty".into());
            }
            locations.push(TokenLocation::Cookie(c.clone()));
        }
        if locations.is_empty() {
            locations = vec![
                TokenLocation::Header {
                    name: "authorization".into(),
                    prefix: "Bearer ".into(),
                },
                TokenLocation::Param("access_token".into()),
            ];
        }
        let mut claim_to_headers = Vec::new();
        for (i, c) in self.output_claim_to_headers.iter().enumerate() {
            let header = c.header.to_ascii_lowercase();
            if !valid_header_name(&header) {
                err(
                    format!("{f}.outputClaimToHeaders[{i}].header"),
                    format!("{:?} is not a header name", c.header),
                );
            }
            if c.claim.is_empty() {
                err(
                    format!("{f}.outputClaimToHeaders[{i}].claim"),
                    "empty".into(),
                );
            }
            claim_to_headers.push(ClaimToHeader {
                header,
                claim: c.claim.split('.').map(str::to_owned).collect(),
            });
        }
        let payload_to_header = self.output_payload_to_header.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            if !valid_header_name(&h) {
                err(
                    format!("{f}.outputPayloadToHeader"),
                    format!("{h:?} is not a header name"),
                );
            }
            h
        });
        let timeout = match &self.timeout {
            None => Duration::from_secs(5),
            Some(t) => match parse_duration(t) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    err(
                        format!("{f}.timeout"),
                        format!("{t:?} is not a positive duration like 5s"),
                    );
                    Duration::from_secs(5)
                }
            },
        };
        JwtRule {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            keys,
            inline,
            locations,
            forward_original_token: self.forward_original_token,
            claim_to_headers,
            payload_to_header,
            timeout,
        }
    }
}

impl RequestAuthenticationSpec {
    /// Validates into a [`RequestAuthentication`]; every problem is returned.
    pub fn to_authentication(
        &self,
        namespace: &str,
        name: &str,
        root_namespace: &str,
    ) -> Result<RequestAuthentication, Vec<FieldError>> {
        let mut errs = Vec::new();
        let scope = crate::istio::scope(
            self.selector.as_ref(),
            self.target_refs.iter().chain(self.target_ref.as_ref()),
            namespace,
            root_namespace,
            &mut errs,
        );
        let mut issuers: BTreeMap<&str, usize> = BTreeMap::new();
        let mut rules = Vec::with_capacity(self.jwt_rules.len());
        for (i, r) in self.jwt_rules.iter().enumerate() {
            let f = format!("spec.jwtRules[{i}]");
            if let Some(j) = issuers.insert(&r.issuer, i) {
                errs.push(FieldError {
                    field: format!("{f}.issuer"),
                    reason: format!("{:?} is already the issuer of jwtRules[{j}]", r.issuer),
                });
            }
            rules.push(Arc::new(r.to_rule(&f, &mut errs)));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(RequestAuthentication {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            scope,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

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
}
