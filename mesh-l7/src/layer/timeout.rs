//! The route's request timeout (`VirtualService` `http[].timeout`, HTTPRoute
//! `timeouts.request`): a request whose response head has not come within it is answered
//! 504 `upstream request timeout` with flag `UT`, as Envoy does, and its tries (retries
//! included: the timeout spans them all) are cancelled. `0s` or none: no timeout (Istio's
//! default). A request without a route timeout costs no timer.
//!
//! The timeout runs from the end of the downstream request to the response head, as Envoy's
//! `RouteAction.timeout` does from the end of the request: a client trickling its body does
//! not eat into it (nor into the per-try timeout). A request whose body is still arriving
//! carries a [`BodyEnd`] in its extensions, signalled by the [`ReplayBody`] of the retry layer
//! below when the body has been read to its end; only such requests allocate it.
//!
//! [`ReplayBody`]: super::ReplayBody

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::replay::BodyEnd;
use super::{Body, Target, UpstreamRequest};
use mesh_telemetry::metrics::ResponseFlags;

/// Times requests out by their route ([`Timeout`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutLayer;

impl TimeoutLayer {
    /// The layer.
    pub fn new() -> Self {
        TimeoutLayer
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout { inner }
    }
}

/// The route's timeout in front of `S`.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
}

/// The timeout a request's route sets, if any (`0s` disables it, as in Istio).
pub fn route_timeout(target: &Target) -> Option<Duration> {
    match target {
        Target::Picked(p) => p.route()?.timeout.filter(|d| !d.is_zero()),
        _ => None,
    }
}

impl<S, B, U> Service<UpstreamRequest<B>> for Timeout<S>
where
    S: Service<UpstreamRequest<B>, Response = Response<Body<U>>>,
    B: http_body::Body,
{
    type Response = Response<Body<U>>;
    type Error = S::Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut u: UpstreamRequest<B>) -> Self::Future {
        let (sleep, wait) = match route_timeout(&u.target) {
            None => (None, None),
            Some(d) if u.request.body().is_end_stream() => (Some(tokio::time::sleep(d)), None),
            Some(d) => {
                // Armed when the body has arrived (the retry layer's body signals it).
                let end = BodyEnd::new();
                u.request.extensions_mut().insert(end.clone());
                (None, Some((end, d)))
            }
        };
        TimeoutFuture {
            fut: self.inner.call(u),
            sleep,
            wait,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Timeout`].
    pub struct TimeoutFuture<F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: Option<Sleep>,
        // The timeout waiting for the request body's end before it starts.
        wait: Option<(BodyEnd, Duration)>,
    }
}

impl<F, U, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<Body<U>>, E>>,
{
    type Output = Result<Response<Body<U>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(r) = this.fut.poll(cx) {
            return Poll::Ready(r);
        }
        if let Some((end, d)) = this.wait.as_ref() {
            if end.poll_ended(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep.set(Some(tokio::time::sleep(*d)));
            *this.wait = None;
        }
        match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(super::local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                ResponseFlags::UpstreamRequestTimeout,
            ))),
            _ => Poll::Pending,
        }
    }
}
