//! The L7 request path as tower layers, role-agnostic: what a waypoint or a sidecar does to
//! each HTTP request is a stack of these, outermost first:
//!
//! - [`trace`]: `x-request-id` and a valid W3C `traceparent` on every request;
//! - [`record`]: the request counted and recorded (metrics, access log) once, when its
//!   response body ends or is dropped;
//! - [`guard`]: the proxy's own checks of a request as it arrives (hygiene);
//! - [`jwt`]: `RequestAuthentication` (401 for a bad token);
//! - [`authz`]: path normalization and `AuthorizationPolicy` (403 when denied);
//! - [`routing`]: the route table's decision (direct responses, redirects, weighted
//!   destinations, rewrites, header operations) in front of the caller's upstream service.
//!
//! Each layer is a cloneable `FooLayer` building a `Foo<S>` service whose future is a concrete
//! type (no boxing per layer). What a request went through travels in extensions: the
//! verified JWT ([`Authenticated`]) in the request's, [`Meta`] (response flags, route,
//! upstream, audit) in the response's. The policy, key, route and recording sources are
//! traits the proxy implements; the crate does no I/O of its own.

pub mod authz;
mod body;
pub mod guard;
pub mod jwt;
pub mod record;
pub mod routing;
pub mod trace;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

pub use authz::{AuthzLayer, AuthzSource, Scope};
pub use body::Body;
pub use guard::{Guard, GuardLayer, Refusal};
pub use jwt::{Authenticated, JwtLayer, JwtSource};
pub use record::{CountedBody, Finished, RecordLayer, RecordedBody, Recorder};
pub use routing::{Lookup, Picked, RouteLayer, RouteSource, Target, UpstreamRequest};
/// tower, as the layers use it (proxies compose the stack with its `ServiceBuilder`).
pub use tower;
pub use trace::{TraceContextLayer, TraceIds};

/// What a request went through, for its metrics and access log line: kept in the response's
/// extensions by the layer that knows it, read by the recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Envoy-style response flags (`-`, `DPE`, `RBAC`, `NR`, `UH`, `UF`, `DR`).
    pub flags: &'static str,
    /// The route that matched, by name.
    pub route: Option<String>,
    /// The upstream address the request was sent to.
    pub upstream: Option<SocketAddr>,
    /// The `AUDIT` policy (`namespace/name`) that marked the request.
    pub audit: Option<String>,
    /// The path as logged, when it differs from the request's (a token in the query
    /// redacted).
    pub logged_path: Option<String>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            flags: "-",
            route: None,
            upstream: None,
            audit: None,
            logged_path: None,
        }
    }
}

impl Meta {
    /// The response's [`Meta`], inserted if it has none yet.
    pub fn of<B>(resp: &mut Response<B>) -> &mut Meta {
        resp.extensions_mut().get_or_insert_default::<Meta>()
    }
}

/// A `text/plain` response made by the proxy itself, marked with response `flags`.
pub fn local<B: From<Bytes>>(
    status: StatusCode,
    body: impl Into<Bytes>,
    flags: &'static str,
) -> Response<B> {
    let mut r = Response::new(B::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if flags != "-" {
        Meta::of(&mut r).flags = flags;
    }
    r
}

#[cfg(test)]
mod stack_tests;
#[cfg(test)]
pub(crate) mod testing;
