//! A request body that can be sent again ([`ReplayBody`]): the body type below the retry
//! layer, and what the mirror layer copies. The first reader streams the inner body as it
//! arrives (the first attempt is never delayed) while its chunks are kept, up to a cap;
//! [`ReplayBody::replay`] then gives a body that yields the same bytes from the start, the
//! kept ones first, then the rest of the inner body as it arrives. A body that grows past the
//! cap stops being kept (its kept chunks are freed at once) and can no longer be replayed: a
//! client cannot make the proxy hold more than the cap for one request.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

#[path = "replay_end.rs"]
mod end;
pub use end::BodyEnd;

/// The default cap on a body kept for replay: 64 KiB, Envoy's default per-request retry
/// buffer (`per_request_buffer_limit_bytes` falls back to the listener's 1 MiB, Istio does not
/// raise it; linkerd2-proxy keeps 64 KiB). Bodies above it are sent once, never retried.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// Why a replayed body could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError<E> {
    /// The inner body failed.
    #[error(transparent)]
    Inner(E),
    /// The body grew past the replay cap after this replay was made: its start is gone.
    #[error("request body grew past the replay cap")]
    Capped,
}

/// A request body that can be replayed once captured: `new(inner, cap)` keeps up to `cap`
/// bytes as they stream, [`full`](Self::full) is a complete body, [`pass`](Self::pass) keeps
/// nothing (no allocation: the mechanism is off).
#[derive(Debug)]
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

#[derive(Debug)]
enum Kind<B> {
    /// Not kept: streamed once; `end` is signalled when it ends.
    Pass { inner: B, end: Option<BodyEnd> },
    /// A complete body (`None` once sent).
    Full { data: Bytes, sent: bool },
    /// Kept as it streams; `pos` is how many chunks this reader has yielded.
    Shared {
        shared: Arc<Mutex<Shared<B>>>,
        pos: usize,
        trailers_sent: bool,
    },
}

/// The state all replays of one body share.
#[derive(Debug)]
struct Shared<B> {
    /// The inner body, until it ended.
    inner: Option<B>,
    /// Chunks read from the inner body and kept (empty once capped).
    kept: Vec<Bytes>,
    /// Chunks read from the inner body in all.
    read: usize,
    /// Bytes kept.
    len: usize,
    /// The cap on `len`.
    cap: usize,
    /// Past the cap: nothing more is kept, no replay can be made.
    capped: bool,
    /// The inner body's trailers, if it ended with some.
    trailers: Option<HeaderMap>,
    /// The inner body ended.
    ended: bool,
    /// Signalled when the inner body ends (a timer waits for it).
    end_signal: Option<BodyEnd>,
    /// Readers waiting for the inner body (one per live reader at most: deduplicated).
    waiters: Vec<Waker>,
}

impl<B: http_body::Body<Data = Bytes>> ReplayBody<B> {
    /// `inner`, keeping up to `cap` bytes for replay as it streams. A body that announces
    /// more than `cap` (its size hint) is not kept at all.
    pub fn new(inner: B, cap: usize) -> Self {
        if inner.size_hint().lower() > cap as u64 {
            return ReplayBody::pass(inner);
        }
        if inner.is_end_stream() {
            // Nothing to keep (a GET): replayable at no cost, no shared state allocated.
            return ReplayBody::full(Bytes::new());
        }
        let shared = Shared {
            inner: Some(inner),
            kept: Vec::new(),
            read: 0,
            len: 0,
            cap,
            capped: false,
            trailers: None,
            ended: false,
            end_signal: None,
            waiters: Vec::new(),
        };
        ReplayBody {
            kind: Kind::Shared {
                shared: Arc::new(Mutex::new(shared)),
                pos: 0,
                trailers_sent: false,
            },
        }
    }
}

impl<B> ReplayBody<B> {
    /// `inner`, streamed once and never kept ([`replay`](Self::replay) gives `None`).
    pub fn pass(inner: B) -> Self {
        ReplayBody {
            kind: Kind::Pass { inner, end: None },
        }
    }

    /// A complete body, replayable at no cost.
    pub fn full(data: Bytes) -> Self {
        ReplayBody {
            kind: Kind::Full { data, sent: false },
        }
    }

    /// The same body again from its start, if it can still be replayed (kept and not past
    /// the cap). The replay reads the kept chunks, then the rest of the inner body as it
    /// arrives; read it after the body it replays is done with (one reader at a time).
    pub fn replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Pass { .. } => None,
            Kind::Full { data, .. } => Some(ReplayBody::full(data.clone())),
            Kind::Shared { shared, .. } => {
                let capped = lock(shared).capped;
                (!capped).then(|| ReplayBody {
                    kind: Kind::Shared {
                        shared: shared.clone(),
                        pos: 0,
                        trailers_sent: false,
                    },
                })
            }
        }
    }

    /// Whether [`replay`](Self::replay) would give a body now.
    pub fn is_replayable(&self) -> bool {
        match &self.kind {
            Kind::Pass { .. } => false,
            Kind::Full { .. } => true,
            Kind::Shared { shared, .. } => !lock(shared).capped,
        }
    }

    /// Signals `end` once the inner body has been read to its end (at once if it already
    /// was): the request has fully arrived from the downstream.
    pub fn notify_end(&mut self, end: BodyEnd)
    where
        B: http_body::Body,
    {
        match &mut self.kind {
            Kind::Pass { inner, end: slot } => {
                if inner.is_end_stream() {
                    end.signal();
                } else {
                    *slot = Some(end);
                }
            }
            Kind::Full { .. } => end.signal(),
            Kind::Shared { shared, .. } => {
                let mut s = lock(shared);
                if s.ended || s.inner.as_ref().is_none_or(|b| b.is_end_stream()) {
                    end.signal();
                } else {
                    s.end_signal = Some(end);
                }
            }
        }
    }

    /// Bytes kept for replay now (0 for a pass-through or complete body).
    pub fn kept_bytes(&self) -> usize {
        match &self.kind {
            Kind::Shared { shared, .. } => lock(shared).len,
            _ => 0,
        }
    }
}

/// The shared state; a poisoned lock still holds consistent data (every update is a plain
/// field write), so it is used as is.
fn lock<B>(m: &Mutex<Shared<B>>) -> std::sync::MutexGuard<'_, Shared<B>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Polled<E> = Poll<Option<Result<Frame<Bytes>, ReplayError<E>>>>;

impl<B> Shared<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    /// The next frame for a reader at `pos`.
    fn poll_at(
        &mut self,
        cx: &mut Context<'_>,
        pos: &mut usize,
        trailers_sent: &mut bool,
    ) -> Polled<B::Error> {
        if let Some(chunk) = self.kept.get(*pos) {
            *pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if *pos < self.read {
            // Its chunks were freed when the body went past the cap.
            return Poll::Ready(Some(Err(ReplayError::Capped)));
        }
        if self.ended {
            if *trailers_sent {
                return Poll::Ready(None);
            }
            *trailers_sent = true;
            return Poll::Ready(self.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let Poll::Ready(polled) = polled else {
            // Another reader may take the next frame: each waiting reader is woken by it.
            if !self.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                self.waiters.push(cx.waker().clone());
            }
            return Poll::Pending;
        };
        self.wake_all();
        let frame = match polled {
            None => {
                self.end();
                *trailers_sent = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(ReplayError::Inner(e)))),
            Some(Ok(f)) => f,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                self.keep(&data);
                *pos += 1;
                // hyper stops reading at `is_end_stream` (a `content-length` body): its
                // last chunk is the end, without a final poll.
                if self.inner.as_ref().is_some_and(|b| b.is_end_stream())
                    && let Some(e) = &self.end_signal
                {
                    e.signal();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Err(f) => f,
        };
        if let Some(t) = frame.trailers_ref() {
            if !self.capped {
                self.trailers = Some(t.clone());
            }
            self.end();
            *trailers_sent = true;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn keep(&mut self, data: &Bytes) {
        self.read += 1;
        if self.capped {
            return;
        }
        if self.len + data.len() > self.cap {
            self.capped = true;
            self.len = 0;
            self.kept = Vec::new();
            return;
        }
        self.len += data.len();
        self.kept.push(data.clone());
    }

    fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    fn end(&mut self) {
        self.ended = true;
        self.inner = None;
        if let Some(e) = self.end_signal.take() {
            e.signal();
        }
    }
}

impl<B> Drop for ReplayBody<B> {
    /// A reader that goes away may have been the one the inner body would wake: the others
    /// are woken to poll it themselves.
    fn drop(&mut self) {
        if let Kind::Shared { shared, .. } = &self.kind {
            let waiters = std::mem::take(&mut lock(shared).waiters);
            for w in waiters {
                w.wake();
            }
        }
    }
}

impl<B> http_body::Body for ReplayBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = ReplayError<B::Error>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Pass { inner, end } => {
                let polled = ready!(Pin::new(&mut *inner).poll_frame(cx));
                if let Some(e) = end
                    && (polled.is_none() || inner.is_end_stream())
                {
                    e.signal();
                }
                Poll::Ready(polled.map(|r| r.map_err(ReplayError::Inner)))
            }
            Kind::Full { data, sent } => {
                if *sent || data.is_empty() {
                    *sent = true;
                    return Poll::Ready(None);
                }
                *sent = true;
                Poll::Ready(Some(Ok(Frame::data(data.clone()))))
            }
            Kind::Shared {
                shared,
                pos,
                trailers_sent,
            } => lock(shared).poll_at(cx, pos, trailers_sent),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Pass { inner: b, .. } => b.is_end_stream(),
            Kind::Full { data, sent } => *sent || data.is_empty(),
            Kind::Shared {
                shared,
                pos,
                trailers_sent,
            } => {
                let s = lock(shared);
                match &s.inner {
                    _ if *pos < s.read => false,
                    None => *trailers_sent || s.trailers.is_none(),
                    Some(b) => b.is_end_stream(),
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Pass { inner: b, .. } => b.size_hint(),
            Kind::Full { data, sent } => {
                SizeHint::with_exact(if *sent { 0 } else { data.len() as u64 })
            }
            Kind::Shared { shared, pos, .. } => {
                let s = lock(shared);
                let kept: u64 = s.kept.iter().skip(*pos).map(|c| c.len() as u64).sum();
                match &s.inner {
                    None => SizeHint::with_exact(kept),
                    Some(b) if *pos >= s.read => b.size_hint(),
                    Some(b) => {
                        let mut h = SizeHint::new();
                        h.set_lower(kept + b.size_hint().lower());
                        if let Some(u) = b.size_hint().upper() {
                            h.set_upper(kept + u);
                        }
                        h
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
