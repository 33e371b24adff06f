//! `RequestAuthentication` as users write it (serde types, unknown fields refused) and its
//! validation into [`RequestAuthentication`] and [`JwtRule`]s. Depends on the Istio spec
//! types shared with `AuthorizationPolicy` (selector, `targetRefs` and the scope they give),
//! the model's [`Scope`](crate::Scope), [`crate::error`] and this module's rule and key types.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::keys::KeySet;
use super::rule::{ClaimToHeader, JwtRule, KeySource, RequestAuthentication, TokenLocation};
use crate::error::FieldError;
use crate::istio::refs::scope;
use crate::istio::spec::{TargetRefSpec, WorkloadSelector};

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

impl RequestAuthenticationSpec {
    /// Validates into a [`RequestAuthentication`]; every problem is returned.
    pub fn to_authentication(
        &self,
        namespace: &str,
        name: &str,
        root_namespace: &str,
    ) -> Result<RequestAuthentication, Vec<FieldError>> {
        let mut errs = Vec::new();
        let scope = scope(
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

/// Records a problem at `field`.
fn push(errs: &mut Vec<FieldError>, field: String, reason: String) {
    errs.push(FieldError { field, reason });
}

impl JwtRuleSpec {
    fn to_rule(&self, f: &str, errs: &mut Vec<FieldError>) -> JwtRule {
        if self.issuer.is_empty() {
            push(errs, format!("{f}.issuer"), "required".into());
        }
        let keys = self.key_source(f, errs);
        let inline = match &keys {
            KeySource::Inline(j) => match KeySet::parse(j) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    push(errs, format!("{f}.jwks"), e.to_string());
                    None
                }
            },
            _ => None,
        };
        let locations = self.locations(f, errs);
        let claim_to_headers = self.claim_to_headers(f, errs);
        let payload_to_header = self.output_payload_to_header.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            if !valid_header_name(&h) {
                push(
                    errs,
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
                    push(
                        errs,
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

    /// `jwks`, `jwksUri`, or OpenID discovery from an http(s) issuer.
    fn key_source(&self, f: &str, errs: &mut Vec<FieldError>) -> KeySource {
        match (&self.jwks, &self.jwks_uri) {
            (Some(_), Some(_)) => {
                push(
                    errs,
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
                    _ => push(
                        errs,
                        format!("{f}.jwksUri"),
                        format!("{u:?} is not an http or https URL"),
                    ),
                }
                KeySource::Uri(u.clone())
            }
            (None, None) => {
                if !self.issuer.starts_with("http://") && !self.issuer.starts_with("https://") {
                    push(
                        errs,
                        format!("{f}.jwksUri"),
                        "required unless the issuer is an http(s) URL for OpenID discovery".into(),
                    );
                }
                KeySource::Discovery(self.issuer.clone())
            }
        }
    }

    /// `fromHeaders`, `fromParams`, `fromCookies`; none: `Authorization: Bearer` and
    /// `access_token`.
    fn locations(&self, f: &str, errs: &mut Vec<FieldError>) -> Vec<TokenLocation> {
        let mut locations = Vec::new();
        for (i, h) in self.from_headers.iter().enumerate() {
            let name = h.name.to_ascii_lowercase();
            if !valid_header_name(&name) {
                push(
                    errs,
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
                push(errs, format!("{f}.fromParams[{i}]"), "empty".into());
            }
            locations.push(TokenLocation::Param(p.clone()));
        }
        for (i, c) in self.from_cookies.iter().enumerate() {
            if c.is_empty() {
                push(errs, format!("{f}.fromCookies[{i}]"), "empty".into());
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
        locations
    }

    /// `outputClaimToHeaders`.
    fn claim_to_headers(&self, f: &str, errs: &mut Vec<FieldError>) -> Vec<ClaimToHeader> {
        let mut out = Vec::with_capacity(self.output_claim_to_headers.len());
        for (i, c) in self.output_claim_to_headers.iter().enumerate() {
            let header = c.header.to_ascii_lowercase();
            if !valid_header_name(&header) {
                push(
                    errs,
                    format!("{f}.outputClaimToHeaders[{i}].header"),
                    format!("{:?} is not a header name", c.header),
                );
            }
            if c.claim.is_empty() {
                push(
                    errs,
                    format!("{f}.outputClaimToHeaders[{i}].claim"),
                    "empty".into(),
                );
            }
            out.push(ClaimToHeader {
                header,
                claim: c.claim.split('.').map(str::to_owned).collect(),
            });
        }
        out
    }
}
