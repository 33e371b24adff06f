//! Trace context: every request leaves with an `x-request-id` and a valid W3C `traceparent`,
//! generated when absent (an invalid `traceparent` is replaced; B3 and `tracestate` headers
//! pass through untouched). The ids come from the caller's [`TraceIds`], so every hop of the
//! mesh generates and validates them one way.

use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request};
use tower::{Layer, Service};

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Generates and validates trace ids (the mesh's HBONE headers module does).
pub trait TraceIds {
    /// A new `x-request-id`.
    fn request_id(&self) -> HeaderValue;
    /// A new `traceparent` (a new trace, sampled).
    fn traceparent(&self) -> HeaderValue;
    /// Whether `v` is a valid `traceparent` to propagate.
    fn valid_traceparent(&self, v: &str) -> bool;
}

/// Adds trace context to requests ([`TraceContext`]).
#[derive(Debug, Clone)]
pub struct TraceContextLayer<G> {
    ids: G,
}

impl<G> TraceContextLayer<G> {
    /// A layer generating ids with `ids`.
    pub fn new(ids: G) -> Self {
        TraceContextLayer { ids }
    }
}

impl<S, G: Clone> Layer<S> for TraceContextLayer<G> {
    type Service = TraceContext<S, G>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContext {
            inner,
            ids: self.ids.clone(),
        }
    }
}

/// Ensures `x-request-id` and a valid `traceparent`, then calls the inner service.
#[derive(Debug, Clone)]
pub struct TraceContext<S, G> {
    inner: S,
    ids: G,
}

/// The trace id of a valid `traceparent` value (its second field).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1)
}

impl<S, G, B> Service<Request<B>> for TraceContext<S, G>
where
    S: Service<Request<B>>,
    G: TraceIds,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let headers = req.headers_mut();
        if !headers.contains_key(X_REQUEST_ID) {
            headers.insert(X_REQUEST_ID, self.ids.request_id());
        }
        let valid = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| self.ids.valid_traceparent(v));
        if !valid {
            headers.insert(TRACEPARENT, self.ids.traceparent());
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
#[path = "trace_tests.rs"]
mod tests;
