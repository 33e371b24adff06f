//! The types external authorization speaks in: a provider's settings, what it is asked,
//! its answer or why there is none, and the [`Authorizer`] the proxy implements. A leaf: the
//! core and the service build on it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};

/// A provider's settings (Istio's `extensionProviders[].envoyExtAuthzGrpc`, as the layer
/// needs them; where it is and how to reach it are the [`Authorizer`]'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// `extensionProviders[].name`.
    pub name: Arc<str>,
    /// How long a check may take (Istio's `timeout`); past it, the check failed.
    pub timeout: Duration,
    /// Let requests through when the check failed (Istio's `failOpen`).
    pub fail_open: bool,
    /// The status of a request refused because the check failed (Istio's `statusOnError`,
    /// default 403).
    pub status_on_error: StatusCode,
}

/// What the provider is asked about a request (Envoy's `AttributeContext.HttpRequest`; the
/// peers' attributes are the [`Authorizer`]'s, which knows the connection).
#[derive(Debug, Clone)]
pub struct CheckInput {
    /// Method.
    pub method: Method,
    /// The normalized path with the query, as the policies matched it.
    pub path: String,
    /// `Host` / `:authority`.
    pub host: String,
    /// `http` (the mesh carries plain HTTP inside mTLS tunnels).
    pub scheme: &'static str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The request's headers (bounded by the proxy's header limits).
    pub headers: HeaderMap,
}

/// How a header from the authorizer is applied (Envoy's `HeaderValueOption`; ext_authz reads
/// an unset `append` as "overwrite").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode {
    /// Replace every value the request had (the default).
    Overwrite,
    /// Add a value, keeping the request's.
    Append,
    /// Only if the request has none.
    AddIfAbsent,
    /// Only if the request has one.
    OverwriteIfExists,
}

/// A provider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// `OK`: the request goes on with these changes.
    Allow {
        /// Headers for the upstream request.
        upstream: Vec<(HeaderName, HeaderValue, HeaderMode)>,
        /// Headers removed from the upstream request (`host` never is).
        remove: Vec<HeaderName>,
        /// Headers added to the response to the client.
        downstream: Vec<(HeaderName, HeaderValue)>,
    },
    /// Denied: answered with this status (`None`: 403), headers and body.
    Deny {
        /// The authorizer's status, if it set a valid one.
        status: Option<StatusCode>,
        /// Headers of the response.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Body of the response.
        body: Bytes,
    },
}

/// Why a check failed (no answer to act on): `failOpen` / `statusOnError` apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// No answer within the provider's `timeout`.
    #[error("ext_authz provider {provider} timed out")]
    Timeout {
        /// The provider.
        provider: Arc<str>,
    },
    /// The provider could not be reached (no endpoint, connect failure, reset).
    #[error("ext_authz provider {provider} unavailable: {reason}")]
    Unavailable {
        /// The provider.
        provider: Arc<str>,
        /// What failed.
        reason: String,
    },
    /// The provider answered with a gRPC error or an answer that is not a `CheckResponse`.
    #[error("ext_authz provider {provider} failed: {reason}")]
    Failed {
        /// The provider.
        provider: Arc<str>,
        /// What it answered.
        reason: String,
    },
}

/// The external authorizers of a stream: which providers exist now and how to ask them.
pub trait Authorizer: Clone + Send + 'static {
    /// Whether any `CUSTOM` policy may apply (known at config time); `false`: the layer
    /// passes every request on untouched.
    fn active(&self) -> bool;
    /// The provider named `name` in the current config; `None`: unknown, so requests its
    /// policies match are denied (fail closed).
    fn provider(&self, name: &str) -> Option<Provider>;
    /// Asks `provider` about a request. The layer bounds it by the provider's timeout.
    fn check(
        &self,
        provider: &Provider,
        input: CheckInput,
    ) -> impl Future<Output = Result<CheckResult, CheckError>> + Send + 'static;
    /// Told of each request refused (denied, failed closed, or an unknown provider).
    fn refused<B>(&self, req: &Request<B>, provider: &str, reason: &str) {
        let _ = (req, provider, reason);
    }
}

/// `HTTP/1.1` or `HTTP/2`, as Envoy names the protocol in `AttributeContext`.
pub(crate) fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
