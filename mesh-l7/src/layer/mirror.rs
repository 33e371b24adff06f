//! Traffic mirroring below the retry layer ([`MirrorLayer`]): on a request's first attempt,
//! each mirror of its route that takes it (its share, from a roll of the layer's [`Dice`])
//! gets a copy sent through the same upstream service (so it reaches mesh endpoints over
//! HBONE with the proxy's identity), fire and forget: the copy's response is dropped, and the
//! main request neither waits for it nor sees it fail. The copy's authority gets Envoy's
//! `-shadow` suffix.
//!
//! Bounded: at most [`MirrorLimits::max_in_flight`] copies in flight per layer (proxy), each
//! for at most [`MirrorLimits::timeout`]; past the cap a copy is dropped and counted. A body
//! is mirrored only when it is known to fit [`MirrorLimits::max_body`] (no body, or a
//! `content-length` within it) and the body below the retry layer was kept for replay: the
//! copy then streams the kept bytes alongside the main request, never buffering more than the
//! cap. Other requests are not mirrored (counted). Requests of routes without mirrors pass
//! straight through: no roll, no allocation, the inner future as is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body::Body as _;
use tower::{Layer, Service, ServiceExt};

use super::{Attempt, Dice, ReplayBody, Target, ThreadDice, UpstreamRequest};
use crate::resilience::mirror::shadow_authority;

/// A request body a copy can be made of for a mirror.
pub trait MirrorBody: Sized {
    /// A body that yields the same bytes, if the body is known to be at most `cap` bytes and
    /// can be read twice.
    fn mirror_copy(&self, cap: usize) -> Option<Self>;
}

impl<B> MirrorBody for ReplayBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    fn mirror_copy(&self, cap: usize) -> Option<Self> {
        if self.is_end_stream() {
            return Some(ReplayBody::full(Bytes::new()));
        }
        // A body of unknown length could outgrow the kept bytes while the copy reads ahead
        // of the main request, which would then fail: never mirrored.
        let upper = self.size_hint().upper()?;
        if upper > cap as u64 {
            return None;
        }
        self.replay()
    }
}

/// The bounds of a mirror layer.
#[derive(Debug, Clone, Copy)]
pub struct MirrorLimits {
    /// Copies in flight at most; past it copies are dropped.
    pub max_in_flight: usize,
    /// Largest body mirrored (bytes).
    pub max_body: usize,
    /// Longest a copy may take before it is abandoned.
    pub timeout: Duration,
}

impl Default for MirrorLimits {
    /// 256 copies in flight, bodies up to 64 KiB (the replay cap), 30 s per copy.
    fn default() -> Self {
        MirrorLimits {
            max_in_flight: 256,
            max_body: super::DEFAULT_REPLAY_CAP,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What a mirror layer did, for the proxy's metrics.
#[derive(Debug, Default)]
pub struct MirrorStats {
    in_flight: AtomicUsize,
    sent: AtomicU64,
    dropped_overflow: AtomicU64,
    dropped_body: AtomicU64,
    timed_out: AtomicU64,
}

impl MirrorStats {
    /// Copies sent (their responses dropped).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// Copies dropped because too many were in flight.
    pub fn dropped_overflow(&self) -> u64 {
        self.dropped_overflow.load(Ordering::Relaxed)
    }
    /// Copies not made because the body could not be copied (too large, unknown length, or
    /// not kept for replay).
    pub fn dropped_body(&self) -> u64 {
        self.dropped_body.load(Ordering::Relaxed)
    }
    /// Copies abandoned at the timeout.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }
    /// Copies in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Mirrors requests of routes with mirrors ([`Mirror`]).
#[derive(Debug, Clone)]
pub struct MirrorLayer<D = ThreadDice> {
    dice: D,
    limits: MirrorLimits,
    stats: Arc<MirrorStats>,
}

impl<D> MirrorLayer<D> {
    /// A layer rolling `dice`, bounded by `limits`, counting into `stats`.
    pub fn new(dice: D, limits: MirrorLimits, stats: Arc<MirrorStats>) -> Self {
        MirrorLayer {
            dice,
            limits,
            stats,
        }
    }
}

impl<S, D: Clone> Layer<S> for MirrorLayer<D> {
    type Service = Mirror<S, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Mirror {
            inner,
            dice: self.dice.clone(),
            limits: self.limits,
            stats: self.stats.clone(),
        }
    }
}

/// Mirroring in front of `S`.
#[derive(Debug, Clone)]
pub struct Mirror<S, D> {
    inner: S,
    dice: D,
    limits: MirrorLimits,
    stats: Arc<MirrorStats>,
}

/// A slot among the copies in flight, given back when the copy ends.
struct Slot(Arc<MirrorStats>);

impl Slot {
    fn take(stats: &Arc<MirrorStats>, max: usize) -> Option<Slot> {
        let before = stats.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            stats.in_flight.fetch_sub(1, Ordering::AcqRel);
            stats.dropped_overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(stats.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A copy of `req` (method, URI, version, headers; the authority with `-shadow`) with `body`.
fn copy_of<B, C>(req: &Request<B>, body: C) -> Request<C> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if let Some(a) = authority
        && let Ok(v) = HeaderValue::from_str(&shadow_authority(a))
    {
        copy.headers_mut().insert(header::HOST, v);
    }
    copy
}

impl<S, D> Mirror<S, D> {
    /// Sends a copy of `req` to mirror `i` of its route, unless the bounds say no.
    fn spawn_copy<B>(&self, picked: &super::Picked, i: usize, req: &Request<B>)
    where
        S: Service<UpstreamRequest<B>> + Clone + Send + 'static,
        S::Future: Send,
        S::Response: Send,
        B: MirrorBody + Send + 'static,
    {
        let Some(slot) = Slot::take(&self.stats, self.limits.max_in_flight) else {
            return;
        };
        let Some(body) = req.body().mirror_copy(self.limits.max_body) else {
            self.stats.dropped_body.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let copy = UpstreamRequest {
            target: Target::Picked(picked.mirror(i)),
            request: copy_of(req, body),
        };
        let svc = self.inner.clone();
        let timeout = self.limits.timeout;
        let stats = self.stats.clone();
        // Fire and forget: the copy's task owns its slot; its response (or error) is dropped.
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, svc.oneshot(copy)).await {
                Ok(_) => stats.sent.fetch_add(1, Ordering::Relaxed),
                Err(_) => stats.timed_out.fetch_add(1, Ordering::Relaxed),
            };
            drop(slot);
        });
    }
}

impl<S, D, B> Service<UpstreamRequest<B>> for Mirror<S, D>
where
    S: Service<UpstreamRequest<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    D: Dice,
    B: MirrorBody + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: UpstreamRequest<B>) -> Self::Future {
        if let Target::Picked(p) = &req.target
            && let Some(route) = p.route()
            && !route.mirrors.is_empty()
            // The first attempt only: a retry is not copied again.
            && req
                .request
                .extensions()
                .get::<Attempt>()
                .is_none_or(|a| a.number <= 1)
        {
            for (i, m) in route.mirrors.iter().enumerate() {
                if m.share.hits(self.dice.roll()) {
                    self.spawn_copy(p, i, &req.request);
                }
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
#[path = "mirror_tests.rs"]
mod tests;
