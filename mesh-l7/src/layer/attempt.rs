//! Which attempt of a request this is ([`Attempt`]), in the request's extensions, for the
//! endpoint choice below the retry layer.

use std::net::SocketAddr;

/// The most upstream addresses an [`Attempt`] remembers (the oldest are forgotten first).
pub const MAX_TRIED: usize = 16;

/// A retry of a request, in its extensions: its number and the upstream addresses earlier
/// attempts went to (each earlier response's [`Meta::upstream`](super::Meta)), so the endpoint
/// choice can prefer another one, as Envoy's `previous_hosts` retry predicate that Istio sets
/// on every route. The first attempt carries none (no allocation when nothing is retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 2 for the first retry, 3 for the next…
    pub number: u32,
    /// Upstream addresses tried so far, oldest first, at most [`MAX_TRIED`].
    pub tried: Vec<SocketAddr>,
}

impl Attempt {
    /// Whether `addr` was tried by an earlier attempt.
    pub fn was_tried(&self, addr: SocketAddr) -> bool {
        self.tried.contains(&addr)
    }

    /// Notes that an attempt went to `addr`.
    pub fn note(&mut self, addr: SocketAddr) {
        if self.tried.contains(&addr) {
            return;
        }
        if self.tried.len() >= MAX_TRIED {
            self.tried.remove(0);
        }
        self.tried.push(addr);
    }
}
