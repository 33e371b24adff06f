//! Validated JWT rules: where a rule's keys come from, where tokens are looked for and what
//! is written to headers after verification. Plain data; depends on the model's
//! [`Scope`](crate::Scope) and [`super::keys`].

use std::sync::Arc;
use std::time::Duration;

use super::keys::KeySet;
use crate::model::Scope;

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
