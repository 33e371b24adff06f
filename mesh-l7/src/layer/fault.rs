//! Fault injection below routing ([`FaultLayer`]): a routed request whose route has a `fault`
//! is delayed and/or aborted as its [`FaultPolicy`](crate::resilience::fault::FaultPolicy)
//! decides from two rolls of the layer's [`Dice`]. As Envoy's fault filter: the delay comes
//! first (the response is then marked `DI`), an abort answers here with flag `FI` and the
//! request never reaches the upstream. Requests of routes without a fault pass straight
//! through: no roll, no allocation, the inner future as is.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use mesh_telemetry::metrics::ResponseFlags;
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::{Body, Meta, Target, UpstreamRequest};
use crate::resilience::fault::{Abort, FaultDecision};

/// A source of uniformly random `u32` rolls (seeded in tests).
pub trait Dice: Clone + Send + 'static {
    /// One roll.
    fn roll(&self) -> u32;
}

/// The thread-local random generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadDice;

impl Dice for ThreadDice {
    fn roll(&self) -> u32 {
        rand::random()
    }
}

/// Injects the routes' faults ([`Fault`]).
#[derive(Debug, Clone, Default)]
pub struct FaultLayer<D = ThreadDice> {
    dice: D,
}

impl<D> FaultLayer<D> {
    /// A layer rolling `dice`.
    pub fn new(dice: D) -> Self {
        FaultLayer { dice }
    }
}

impl<S, D: Clone> Layer<S> for FaultLayer<D> {
    type Service = Fault<S, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Fault {
            inner,
            dice: self.dice.clone(),
        }
    }
}

/// Fault injection in front of `S`.
#[derive(Debug, Clone)]
pub struct Fault<S, D> {
    inner: S,
    dice: D,
}

pin_project_lite::pin_project! {
    /// The future of [`Fault`].
    pub struct FaultFuture<S, F, B, U> {
        #[pin]
        state: State<S, F, B, U>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, F, B, U> {
        /// Forwarded (`delayed`: mark the response `DI`).
        Call { #[pin] fut: F, delayed: bool },
        /// Waiting out the delay, then `abort` or forward `req` with `svc` (made ready).
        Delay {
            #[pin] sleep: Sleep,
            svc: Option<S>,
            req: Option<UpstreamRequest<B>>,
            abort: Option<Abort>,
        },
        /// Aborted here.
        Local { resp: Option<Response<Body<U>>> },
    }
}

/// The answer of an abort (Envoy's local reply body `fault filter abort`); a gRPC abort is a
/// trailers-only response: 200 with `grpc-status` in the headers.
pub fn abort_response<U>(abort: Abort) -> Response<Body<U>> {
    const BODY: &str = "fault filter abort";
    match abort {
        Abort::Http(status) => super::local(status, BODY, ResponseFlags::FaultInjected),
        Abort::Grpc(code) => {
            let mut r = super::local(StatusCode::OK, Bytes::new(), ResponseFlags::FaultInjected);
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(u16::from(code)));
            h.insert("grpc-message", HeaderValue::from_static(BODY));
            r
        }
    }
}

impl<S, F, B, U, E> Future for FaultFuture<S, F, B, U>
where
    S: Service<UpstreamRequest<B>, Future = F, Error = E>,
    F: Future<Output = Result<Response<Body<U>>, E>>,
{
    type Output = Result<Response<Body<U>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Call { fut, delayed } => {
                    let mut resp = std::task::ready!(fut.poll(cx))?;
                    if *delayed {
                        let m = Meta::of(&mut resp);
                        if m.flags == ResponseFlags::None {
                            m.flags = ResponseFlags::DelayInjected;
                        }
                    }
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Delay {
                    sleep,
                    svc,
                    req,
                    abort,
                } => {
                    std::task::ready!(sleep.poll(cx));
                    if let Some(a) = abort.take() {
                        return Poll::Ready(Ok(abort_response(a)));
                    }
                    let (Some(mut svc), Some(req)) = (svc.take(), req.take()) else {
                        // Polled again after it finished.
                        return Poll::Pending;
                    };
                    let fut = svc.call(req);
                    state.set(State::Call { fut, delayed: true });
                }
                StateProj::Local { resp } => {
                    return match resp.take() {
                        Some(r) => Poll::Ready(Ok(r)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl<S, D, B, U> Service<UpstreamRequest<B>> for Fault<S, D>
where
    S: Service<UpstreamRequest<B>, Response = Response<Body<U>>> + Clone,
    D: Dice,
{
    type Response = Response<Body<U>>;
    type Error = S::Error;
    type Future = FaultFuture<S, S::Future, B, U>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: UpstreamRequest<B>) -> Self::Future {
        let decision = match &req.target {
            Target::Picked(p) => p
                .route()
                .and_then(|r| r.fault.as_ref())
                .map(|f| f.decide(self.dice.roll(), self.dice.roll()))
                .unwrap_or_default(),
            _ => FaultDecision::default(),
        };
        let state = match decision {
            FaultDecision {
                delay: None,
                abort: None,
            } => State::Call {
                fut: self.inner.call(req),
                delayed: false,
            },
            FaultDecision {
                delay: None,
                abort: Some(a),
            } => State::Local {
                resp: Some(abort_response(a)),
            },
            FaultDecision {
                delay: Some(d),
                abort,
            } => {
                // The ready service goes with the request; this one gets a fresh clone
                // (tower's contract: `call` only on a service that was polled ready).
                let fresh = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, fresh);
                State::Delay {
                    sleep: tokio::time::sleep(d),
                    svc: Some(ready),
                    req: Some(req),
                    abort,
                }
            }
        };
        FaultFuture { state }
    }
}

#[cfg(test)]
#[path = "fault_tests.rs"]
mod tests;
