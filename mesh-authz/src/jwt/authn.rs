//! Per request: finding the token ([`Authenticator::find_token`]), verifying it
//! ([`Authenticator::verify`]) into a [`RequestAuth`], and rewriting headers. Depends on
//! [`super::rule`] and [`super::keys`].

use std::sync::Arc;

use jsonwebtoken::Validation;
use serde_json::Value;

use super::keys::{Key, KeySet};
use super::rule::{JwtRule, KeySource, TokenLocation};

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

/// The keys of `set` that may have signed a token with `header`: the same `kid` (any key
/// when the token names none), the algorithm's family, and the JWK's `alg` if it names one.
fn candidates<'k>(set: &'k KeySet, header: &jsonwebtoken::Header) -> Vec<&'k Key> {
    let family = header.alg.family();
    set.keys
        .iter()
        .filter(|k| match (&header.kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter(|k| k.key.family() == family && k.alg.is_none_or(|a| a == header.alg))
        .collect()
}

/// The claims of `token` verified by the first of `candidates` whose signature holds, with
/// `exp`/`nbf` checked (60 s leeway). A signature that holds with times that do not is
/// [`JwtError::Expired`] or [`JwtError::NotYetValid`] at once.
fn decode(
    token: &str,
    candidates: &[&Key],
    alg: jsonwebtoken::Algorithm,
) -> Result<serde_json::Map<String, Value>, JwtError> {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_aud = false;
    validation.validate_nbf = true;
    validation.leeway = 60;
    for k in candidates {
        match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &k.key, &validation) {
            Ok(d) => return Ok(d.claims),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    // The signature verified; the times did not.
                    K::ExpiredSignature => return Err(JwtError::Expired),
                    K::ImmatureSignature => return Err(JwtError::NotYetValid),
                    _ => {}
                }
            }
        }
    }
    Err(JwtError::BadSignature)
}

/// `aud`: one string or a list of them.
fn audiences(claims: &serde_json::Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(v)) => v
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
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
        let candidates = candidates(&set, &header);
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey(rule.keys.clone()));
        }
        let claims = decode(token, &candidates, header.alg)?;
        let audiences = audiences(&claims);
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
