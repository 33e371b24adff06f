//! [`BodyEnd`]: the signal that a request body has been fully received from the downstream,
//! which starts the route timeout and the per-try timeout (Envoy's `RouteAction.timeout` and
//! `RetryPolicy.per_try_timeout` run from the end of the downstream request). Made only for
//! requests that have a timeout and a body still arriving; given by the [`ReplayBody`] below
//! the retry layer when the inner body ends.
//!
//! [`ReplayBody`]: super::ReplayBody

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The end of a request body, shared by the body (which signals it) and the timers waiting
/// for it (the route timeout and the retry layer's per-try timeout: two waiters at most per
/// request, so its waker list stays tiny).
#[derive(Debug, Clone, Default)]
pub struct BodyEnd(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    ended: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

/// Waiters kept at most (the route timeout, the per-try timeout, and slack for a mirror):
/// a waiter past it replaces the oldest, so the list is bounded whoever polls.
const MAX_WAITERS: usize = 4;

impl BodyEnd {
    /// A signal not given yet.
    pub fn new() -> Self {
        BodyEnd::default()
    }

    /// Signals that the body ended (idempotent); wakes the waiters.
    pub fn signal(&self) {
        if self.0.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiters = std::mem::take(&mut *self.waiters());
        for w in waiters {
            w.wake();
        }
    }

    /// Whether the body ended.
    pub fn is_ended(&self) -> bool {
        self.0.ended.load(Ordering::Acquire)
    }

    /// Ready once the body ended; registers `cx`'s waker otherwise.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_ended() {
            return Poll::Ready(());
        }
        {
            let mut w = self.waiters();
            if !w.iter().any(|x| x.will_wake(cx.waker())) {
                if w.len() >= MAX_WAITERS {
                    w.remove(0);
                }
                w.push(cx.waker().clone());
            }
        }
        // Signalled between the check and the registration: not missed.
        if self.is_ended() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        // A poisoned lock still holds a valid waker list.
        self.0.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}
