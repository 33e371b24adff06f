//! Retries below routing: a request whose route (or the mesh default) has a
//! [`RetryPolicy`] is tried again when its outcome is
//! retriable, after Envoy's jittered backoff, with a per-try timeout, while its body can be
//! replayed ([`ReplayBody`], up to the layer's cap) and while the destination's retry budget
//! allows. Each retry carries an [`Attempt`] (its number and the upstream addresses tried) so
//! the endpoint choice can avoid them. The request body below this layer is always a
//! [`ReplayBody`]; a request with no policy passes through it (no allocation).
//!
//! What the client sends has no say: `x-envoy-retry-on`, `x-envoy-max-retries` and the like
//! are never read here (the proxy's hygiene strips `x-envoy-*` before routing anyway).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::replay::BodyEnd;
use super::{Attempt, Body, Meta, ReplayBody, Target, UpstreamRequest};
use crate::resilience::budget::{ActiveGuard, BudgetCounters, RetryBudgetPolicy};
use crate::resilience::pool::{Overflow, Permit};
use crate::resilience::retry::{Outcome, RetryPolicy, RetrySetting};
use mesh_telemetry::metrics::ResponseFlags;

/// `x-envoy-attempt-count`: the try number, sent upstream (Istio sets Envoy's
/// `include_request_attempt_count` on its virtual hosts).
pub const ATTEMPT_COUNT: &str = "x-envoy-attempt-count";

/// Where the retry layer finds what the route does not say: the mesh's default policy and
/// the destinations' retry budgets.
pub trait RetrySource: Clone + Send + 'static {
    /// The mesh's default policy (MeshConfig `defaultHttpRetryPolicy`, else Istio's), for
    /// routes without `retries` and requests to the addressed service.
    fn default_policy(&self) -> Option<Arc<RetryPolicy>>;

    /// The retry budget of the request's destination and its counters, if it has one.
    fn budget(&self, target: &Target) -> Option<(RetryBudgetPolicy, Arc<BudgetCounters>)>;

    /// A retry's slot under the destination's other limit on concurrent retries
    /// (`connectionPool.http.maxRetries`): `Err` refuses the retry, an `Ok` permit is held
    /// while the retry is active. None by default.
    fn admit_retry(&self, target: &Target) -> Result<Option<Permit>, Overflow> {
        let _ = target;
        Ok(None)
    }
}

/// Retries requests ([`Retry`]); bodies up to `cap` bytes are kept for replay.
#[derive(Debug, Clone)]
pub struct RetryLayer<R> {
    source: R,
    cap: usize,
}

impl<R> RetryLayer<R> {
    /// A layer with `source`, keeping request bodies up to `cap` bytes for replay.
    pub fn new(source: R, cap: usize) -> Self {
        RetryLayer { source, cap }
    }
}

impl<S, R: Clone> Layer<S> for RetryLayer<R> {
    type Service = Retry<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            source: self.source.clone(),
            cap: self.cap,
        }
    }
}

/// Retries in front of `S`.
#[derive(Debug, Clone)]
pub struct Retry<S, R> {
    inner: S,
    source: R,
    cap: usize,
}

/// The policy a request is retried under.
fn policy_for<R: RetrySource>(source: &R, target: &Target) -> Option<Arc<RetryPolicy>> {
    match target {
        // Unrouted (a server-side proxy's local app): Istio's inbound routes do not retry.
        Target::Direct => None,
        Target::Addressed => source.default_policy(),
        Target::Picked(p) => match &p.route()?.retries {
            RetrySetting::MeshDefault => source.default_policy(),
            RetrySetting::Off => None,
            RetrySetting::Policy(p) => Some(p.clone()),
        },
    }
}

/// Whether the request's route mirrors it (its body must then be kept for the copies).
fn mirrors(target: &Target) -> bool {
    match target {
        Target::Picked(p) => p.route().is_some_and(|r| !r.mirrors.is_empty()),
        _ => false,
    }
}

impl<S, R, B, U> Service<UpstreamRequest<B>> for Retry<S, R>
where
    S: Service<UpstreamRequest<ReplayBody<B>>, Response = Response<Body<U>>> + Clone,
    R: RetrySource,
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Response = Response<Body<U>>;
    type Error = S::Error;
    type Future = RetryFuture<S, B, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut u: UpstreamRequest<B>) -> Self::Future {
        // The route timeout above waits for the body's end (only a body still arriving).
        let end = u.request.extensions_mut().remove::<BodyEnd>();
        let Some(policy) = policy_for(&self.source, &u.target) else {
            // Not retried, but still an active request of its destination's budget (Envoy
            // counts every active request of the cluster).
            let active = match &u.target {
                Target::Direct => None,
                t => self.source.budget(t).map(|(_, c)| c.request()),
            };
            let UpstreamRequest { target, request } = u;
            // A mirrored route's body is kept (up to the cap) so the mirror layer below can
            // copy it, retried or not; others pass through without allocation.
            let mut request = if mirrors(&target) {
                request.map(|b| ReplayBody::new(b, self.cap))
            } else {
                request.map(ReplayBody::pass)
            };
            if let Some(e) = end {
                request.body_mut().notify_end(e);
            }
            return RetryFuture {
                fut: Some(self.inner.call(UpstreamRequest { target, request })),
                state: None,
                active,
            };
        };
        let budget = self.source.budget(&u.target);
        let UpstreamRequest { target, request } = u;
        let (mut parts, body) = request.into_parts();
        let mut body = ReplayBody::new(body, self.cap);
        // The per-try timeout starts when the body has arrived, as the route's does.
        let end = match end {
            Some(e) => Some(e),
            None if policy.per_try_timeout.is_some() && !body.is_end_stream() => {
                Some(BodyEnd::new())
            }
            None => None,
        };
        if let Some(e) = &end {
            body.notify_end(e.clone());
        }
        let replay = body.replay();
        let template = Parts::clone(&parts);
        parts
            .headers
            .insert(ATTEMPT_COUNT, HeaderValue::from_static("1"));
        let active = budget.as_ref().map(|(_, c)| c.request());
        let mut state = Box::pin(RetryState {
            source: self.source.clone(),
            permit: None,
            svc: self.inner.clone(),
            target: target.clone(),
            template,
            replay,
            attempt: Attempt {
                number: 1,
                tried: Vec::new(),
            },
            budget,
            active,
            retry_guard: None,
            timer: None,
            timer_armed: false,
            end,
            await_end: false,
            backing_off: false,
            policy,
        });
        state.as_mut().arm_per_try();
        let request = Request::from_parts(parts, body);
        RetryFuture {
            fut: Some(self.inner.call(UpstreamRequest { target, request })),
            state: Some(state),
            active: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// What a retried request keeps between tries (boxed: only requests with a policy have
    /// one).
    pub struct RetryState<S, B, R> {
        source: R,
        permit: Option<Permit>,
        svc: S,
        target: Target,
        template: Parts,
        replay: Option<ReplayBody<B>>,
        attempt: Attempt,
        budget: Option<(RetryBudgetPolicy, Arc<BudgetCounters>)>,
        active: Option<ActiveGuard>,
        retry_guard: Option<ActiveGuard>,
        #[pin]
        timer: Option<Sleep>,
        timer_armed: bool,
        // The request body's end, when it had not arrived at the first try.
        end: Option<BodyEnd>,
        // The per-try timer waits for `end` before it starts.
        await_end: bool,
        backing_off: bool,
        policy: Arc<RetryPolicy>,
    }
}

impl<S, B, R> RetryState<S, B, R> {
    fn arm_per_try(mut self: Pin<&mut Self>) {
        *self.as_mut().project().timer_armed = false;
        if self.policy.per_try_timeout.is_none() {
            return;
        }
        if self.end.as_ref().is_some_and(|e| !e.is_ended()) {
            // Envoy's per-try timeout runs from the end of the downstream request.
            *self.as_mut().project().await_end = true;
        } else if let Some(t) = self.policy.per_try_timeout {
            self.arm(Instant::now() + t);
        }
    }

    /// Sets the timer to `deadline` (made on first use: a request that never waits has none).
    fn arm(self: Pin<&mut Self>, deadline: Instant) {
        let mut this = self.project();
        match this.timer.as_mut().as_pin_mut() {
            Some(t) => t.reset(deadline),
            None => this.timer.set(Some(tokio::time::sleep_until(deadline))),
        }
        *this.timer_armed = true;
        *this.await_end = false;
    }

    /// Whether the armed timer fired.
    fn fired(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        if self.await_end {
            let ended = self
                .end
                .as_ref()
                .is_none_or(|e| e.poll_ended(cx).is_ready());
            match self.policy.per_try_timeout {
                Some(t) if ended => self.as_mut().arm(Instant::now() + t),
                _ => return false,
            }
        }
        let this = self.project();
        *this.timer_armed
            && this
                .timer
                .as_pin_mut()
                .is_some_and(|t| t.poll(cx).is_ready())
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Retry`].
    pub struct RetryFuture<S: Service<UpstreamRequest<ReplayBody<B>>>, B, R> {
        #[pin]
        fut: Option<S::Future>,
        state: Option<Pin<Box<RetryState<S, B, R>>>>,
        // A request without a policy, counted in its destination's budget.
        active: Option<ActiveGuard>,
    }
}

/// What a try came to, read from its response.
fn outcome<U>(resp: &Response<Body<U>>) -> Option<Outcome> {
    if !resp.body().is_upstream() {
        // The proxy's own answer: retriable only when the upstream failed (no route, no
        // healthy upstream, overflow are not retried, as in Envoy).
        return resp
            .extensions()
            .get::<Meta>()
            .and_then(|m| m.failure)
            .map(Outcome::Failed);
    }
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Some(Outcome::Response {
        status: resp.status().as_u16(),
        grpc_status,
        ratelimited: resp.headers().contains_key("x-envoy-ratelimited"),
    })
}

/// What to do after a try.
enum Next<U> {
    /// Answer with this response.
    Answer(Response<Body<U>>),
    /// Retry after the timer.
    Backoff,
}

impl<S, B, R> RetryState<S, B, R>
where
    R: RetrySource,
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    /// Decides after a try that came to `resp` (`timed_out`: the per-try timeout fired).
    fn decide<U>(
        mut self: Pin<&mut Self>,
        mut resp: Response<Body<U>>,
        timed_out: bool,
    ) -> Next<U> {
        let this = self.as_mut().project();
        // The retry that led here, if any, is decided: it no longer counts as active.
        *this.retry_guard = None;
        *this.permit = None;
        let outcome = if timed_out {
            Some(Outcome::PerTryTimeout)
        } else {
            outcome(&resp)
        };
        if !outcome.is_some_and(|o| this.policy.retriable(o)) {
            return Next::Answer(resp);
        };
        if let Some(addr) = resp.extensions().get::<Meta>().and_then(|m| m.upstream)
            && this.policy.avoid_previous_hosts
        {
            this.attempt.note(addr);
        }
        let retries_done = this.attempt.number - 1;
        if retries_done >= this.policy.retries {
            // Envoy: retries exhausted on a retriable outcome (URX).
            Meta::of(&mut resp).flags = ResponseFlags::UpstreamRetryLimitExceeded;
            return Next::Answer(resp);
        }
        let Some(replay) = this.replay.as_ref().and_then(ReplayBody::replay) else {
            // The body went past the replay cap: sent once, never retried.
            return Next::Answer(resp);
        };
        if let Some((policy, counters)) = this.budget.as_ref() {
            let Some(g) = counters.retry(policy) else {
                // The retry budget refuses: Envoy's router marks a retry overflow
                // (RetryStatus::NoOverflow) UO, and answers with this try's response.
                Meta::of(&mut resp).flags = ResponseFlags::UpstreamOverflow;
                return Next::Answer(resp);
            };
            *this.retry_guard = Some(g);
        }
        match this.source.admit_retry(this.target) {
            Ok(p) => *this.permit = p,
            Err(_) => {
                // `maxRetries` overflow: the same as the budget's (UO).
                *this.retry_guard = None;
                Meta::of(&mut resp).flags = ResponseFlags::UpstreamOverflow;
                return Next::Answer(resp);
            }
        }
        *this.replay = Some(replay);
        this.attempt.number += 1;
        let delay = this.policy.backoff.delay(retries_done + 1, rand::random());
        *this.backing_off = true;
        self.arm(Instant::now() + delay);
        Next::Backoff
    }

    /// The next try's request (its body the kept replay, or empty if none).
    fn next_request(self: Pin<&mut Self>) -> UpstreamRequest<ReplayBody<B>> {
        let this = self.project();
        let mut parts = Parts::clone(this.template);
        if let Ok(v) = HeaderValue::from_str(&this.attempt.number.to_string()) {
            parts.headers.insert(ATTEMPT_COUNT, v);
        }
        parts.extensions.insert(this.attempt.clone());
        let body = this
            .replay
            .as_ref()
            .and_then(ReplayBody::replay)
            .unwrap_or_else(|| ReplayBody::full(bytes::Bytes::new()));
        UpstreamRequest {
            target: this.target.clone(),
            request: Request::from_parts(parts, body),
        }
    }
}

/// The 504 answered when a try's own timeout fires and it is not retried (Envoy's body).
fn per_try_timeout<U>() -> Response<Body<U>> {
    super::local(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream request timeout",
        ResponseFlags::UpstreamRequestTimeout,
    )
}

impl<S, B, U, R> Future for RetryFuture<S, B, R>
where
    R: RetrySource,
    S: Service<UpstreamRequest<ReplayBody<B>>, Response = Response<Body<U>>>,
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Output = Result<Response<Body<U>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(state) = this.state.as_mut() else {
            return match this.fut.as_pin_mut() {
                Some(f) => f.poll(cx),
                None => Poll::Pending,
            };
        };
        loop {
            if state.backing_off {
                if !state.as_mut().fired(cx) {
                    return Poll::Pending;
                }
                ready!(state.as_mut().project().svc.poll_ready(cx))?;
                let req = state.as_mut().next_request();
                let fut = state.as_mut().project().svc.call(req);
                this.fut.set(Some(fut));
                let s = state.as_mut().project();
                *s.backing_off = false;
                state.as_mut().arm_per_try();
                // The new try's active request (the previous one's guard is replaced).
                let s = state.as_mut().project();
                if let Some((_, c)) = s.budget.as_ref() {
                    *s.active = Some(c.request());
                }
            }
            let Some(fut) = this.fut.as_mut().as_pin_mut() else {
                return Poll::Pending;
            };
            let (resp, timed_out) = match fut.poll(cx) {
                Poll::Ready(r) => {
                    this.fut.set(None);
                    (r?, false)
                }
                Poll::Pending => {
                    if !state.as_mut().fired(cx) {
                        return Poll::Pending;
                    }
                    // The timed-out try is cancelled (its upstream stream reset).
                    this.fut.set(None);
                    (per_try_timeout(), true)
                }
            };
            match state.as_mut().decide(resp, timed_out) {
                Next::Answer(r) => return Poll::Ready(Ok(r)),
                Next::Backoff => continue,
            }
        }
    }
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "retry_timer_tests.rs"]
mod timer_tests;

#[cfg(test)]
#[path = "retry_mirror_tests.rs"]
mod mirror_tests;
