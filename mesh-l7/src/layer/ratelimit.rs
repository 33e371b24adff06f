//! Rate limiting, right below routing (so route-level limits know the route): the proxy's
//! [`RateLimitPolicy`] decides each request — the local token buckets answer 429 (`RL`) with
//! Envoy's headers; a global filter asks the rate limit service through the source
//! ([`RateLimitSource::check`]) and answers 429 (`RL`) when it says `OVER_LIMIT`, or 500
//! (`RLSE`) when it fails and `failure_mode_deny` is set (Envoy's `ratelimit` filter). A
//! proxy without a policy passes requests through untouched, with no allocation.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use mesh_telemetry::metrics::ResponseFlags;
use tower::{Layer, Service};

use super::{Body, Target, UpstreamRequest};
use crate::ratelimit::{
    Descriptor, GlobalFilter, LocalOutcome, RateLimitPolicy, RequestView, VhostFacts,
    x_ratelimit_headers,
};
use crate::resilience::ratelimit::Decision;

/// What the rate limit service answered (`envoy.service.ratelimit.v3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalAnswer {
    /// `OK`: go on; headers the service asks to add to the response.
    Ok(Vec<(HeaderName, HeaderValue)>),
    /// `OVER_LIMIT`: 429; headers to add to it.
    OverLimit(Vec<(HeaderName, HeaderValue)>),
}

/// Why the rate limit service gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GlobalError {
    /// No answer within the filter's `timeout`.
    #[error("rate limit service timed out")]
    Timeout,
    /// The call failed (connect, gRPC status, `UNKNOWN` code).
    #[error("rate limit service failed: {0}")]
    Failed(String),
}

/// The proxy's rate limiting for a stream, and its rate limit service client.
pub trait RateLimitSource: Clone + Send + 'static {
    /// A call to the rate limit service.
    type Check: Future<Output = Result<GlobalAnswer, GlobalError>> + Send;

    /// `f` with the stream's policy and virtual host; `None` (without calling `f`) when no
    /// rate limiting applies to the stream.
    fn with_policy<T>(&self, f: impl FnOnce(&RateLimitPolicy, VhostFacts<'_>) -> T) -> Option<T>;

    /// The client's address as the mesh asserts it (`remote_address`).
    fn client(&self) -> Option<IpAddr>;

    /// Asks the rate limit service of `filter` about `descriptors` (the timeout is the
    /// caller's: the layer bounds the call with `filter.timeout`).
    fn check(&self, filter: &GlobalFilter, descriptors: Vec<Descriptor>) -> Self::Check;

    /// A local limiter (its `stat_prefix`) refused a request with `status`.
    fn refused(&self, limiter: &str, status: StatusCode) {
        let _ = (limiter, status);
    }
}

/// Rate limits requests with a [`RateLimitSource`] ([`RateLimit`]).
#[derive(Debug, Clone)]
pub struct RateLimitLayer<R> {
    source: R,
}

impl<R> RateLimitLayer<R> {
    /// A layer limiting with `source`.
    pub fn new(source: R) -> Self {
        RateLimitLayer { source }
    }
}

impl<S, R: Clone> Layer<S> for RateLimitLayer<R> {
    type Service = RateLimit<S, R>;

    fn layer(&self, upstream: S) -> Self::Service {
        RateLimit {
            upstream,
            source: self.source.clone(),
        }
    }
}

/// Rate limiting in front of `S`.
#[derive(Debug, Clone)]
pub struct RateLimit<S, R> {
    upstream: S,
    source: R,
}

pin_project_lite::pin_project! {
    /// The future of [`RateLimit`].
    pub struct RateLimitFuture<S, F, C, B, U> {
        #[pin]
        state: State<S, F, C, B, U>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, F, C, B, U> {
        /// Asking the rate limit service, with the (ready) upstream and the request.
        Checking {
            #[pin] check: tokio::time::Timeout<C>,
            next: Option<(S, UpstreamRequest<B>)>,
            deny_on_error: bool,
            local: Option<Decision>,
        },
        /// Forwarded: headers to add to the upstream's response.
        Forward { #[pin] fut: F, add: Option<Box<Headers>> },
        /// Answered here.
        Local { resp: Option<Response<Body<U>>> },
    }
}

/// Headers for the response of a request that went on.
#[derive(Debug, Default)]
pub struct Headers {
    local: Option<Decision>,
    global: Vec<(HeaderName, HeaderValue)>,
}

impl<S, R, B, U> Service<UpstreamRequest<B>> for RateLimit<S, R>
where
    S: Service<UpstreamRequest<B>, Response = Response<Body<U>>> + Clone,
    R: RateLimitSource,
{
    type Response = Response<Body<U>>;
    type Error = S::Error;
    type Future = RateLimitFuture<S, S::Future, R::Check, B, U>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.upstream.poll_ready(cx)
    }

    fn call(&mut self, req: UpstreamRequest<B>) -> Self::Future {
        let verdict = self.source.with_policy(|p, vhost| {
            if !p.has_http() {
                return None;
            }
            let r = &req.request;
            let route = match &req.target {
                Target::Picked(p) => p.route().map(|r| r.name.as_str()),
                _ => None,
            };
            let view = RequestView {
                method: r.method().as_str(),
                path: r.uri().path_and_query().map_or("/", |p| p.as_str()),
                authority: authority(r),
                headers: r.headers(),
                client: self.source.client(),
            };
            let now = tokio::time::Instant::now();
            Some(p.decide(vhost, route, &view, now, &mut rand::random::<u32>))
        });
        let Some(v) = verdict.flatten() else {
            return forward(self.upstream.call(req), None);
        };
        let local = match v.local {
            LocalOutcome::Refuse {
                status,
                headers,
                name,
            } => {
                self.source.refused(&name, status);
                let flags = ResponseFlags::RateLimited;
                let state = local_state(status, "local_rate_limited", flags, headers);
                return RateLimitFuture { state };
            }
            LocalOutcome::Pass(d) => d,
        };
        let Some((filter, descriptors)) = v.global else {
            let add = local.map(|d| {
                Box::new(Headers {
                    local: Some(d),
                    global: Vec::new(),
                })
            });
            return forward(self.upstream.call(req), add);
        };
        let check = self.source.check(&filter, descriptors);
        // The ready service goes with the request; its clone waits for the next poll_ready.
        let clone = self.upstream.clone();
        let ready = std::mem::replace(&mut self.upstream, clone);
        RateLimitFuture {
            state: State::Checking {
                check: tokio::time::timeout(filter.timeout, check),
                next: Some((ready, req)),
                deny_on_error: filter.failure_mode_deny,
                local,
            },
        }
    }
}

fn forward<S, F, C, B, U>(fut: F, add: Option<Box<Headers>>) -> RateLimitFuture<S, F, C, B, U> {
    RateLimitFuture {
        state: State::Forward { fut, add },
    }
}

/// A response made here: `status`, flags, headers, and Envoy's `x-envoy-ratelimited` on 429.
fn local_state<S, F, C, B, U>(
    status: StatusCode,
    body: &'static str,
    flags: ResponseFlags,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> State<S, F, C, B, U> {
    let mut resp: Response<Body<U>> = super::local(status, body, flags);
    for (n, v) in headers {
        resp.headers_mut().append(n, v);
    }
    if flags == ResponseFlags::RateLimited {
        resp.headers_mut().insert(
            HeaderName::from_static("x-envoy-ratelimited"),
            HeaderValue::from_static("true"),
        );
    }
    State::Local { resp: Some(resp) }
}

impl<S, F, C, B, U, E> Future for RateLimitFuture<S, F, C, B, U>
where
    S: Service<UpstreamRequest<B>, Response = Response<Body<U>>, Future = F, Error = E>,
    F: Future<Output = Result<Response<Body<U>>, E>>,
    C: Future<Output = Result<GlobalAnswer, GlobalError>>,
{
    type Output = Result<Response<Body<U>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Checking {
                    check,
                    next,
                    deny_on_error,
                    local,
                } => {
                    let answer = ready!(check.poll(cx));
                    let Some((mut svc, req)) = next.take() else {
                        // Taken only here, and the state changes right after.
                        return Poll::Pending;
                    };
                    match answer {
                        Ok(Ok(GlobalAnswer::OverLimit(h))) => local_state(
                            StatusCode::TOO_MANY_REQUESTS,
                            "",
                            ResponseFlags::RateLimited,
                            h,
                        ),
                        // Envoy: the service failed; `failure_mode_deny` answers 500 (`RLSE`).
                        Ok(Err(_)) | Err(_) if *deny_on_error => local_state(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "",
                            ResponseFlags::RateLimitServiceError,
                            Vec::new(),
                        ),
                        other => {
                            let global = match other {
                                Ok(Ok(GlobalAnswer::Ok(h))) => h,
                                _ => Vec::new(),
                            };
                            let add = (local.is_some() || !global.is_empty()).then(|| {
                                Box::new(Headers {
                                    local: *local,
                                    global,
                                })
                            });
                            State::Forward {
                                fut: svc.call(req),
                                add,
                            }
                        }
                    }
                }
                StateProj::Forward { fut, add } => {
                    let mut resp = ready!(fut.poll(cx))?;
                    if let Some(h) = add.take() {
                        if let Some(d) = h.local {
                            for (n, v) in x_ratelimit_headers(&d) {
                                resp.headers_mut().insert(n, v);
                            }
                        }
                        for (n, v) in h.global {
                            resp.headers_mut().append(n, v);
                        }
                    }
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Local { resp } => {
                    return match resp.take() {
                        Some(r) => Poll::Ready(Ok(r)),
                        None => Poll::Pending,
                    };
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// The request's authority: `Host`, else the URI's.
fn authority<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "ratelimit_tests.rs"]
mod tests;
