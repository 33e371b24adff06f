//! The per-request inputs of the endpoint choice: the consistent-hash key (header, cookie,
//! source IP, query parameter), the endpoints earlier attempts tried (engineer A's
//! [`Attempt`](mesh_l7::layer::Attempt)) and the health of the destination's endpoints
//! (engineer D's outlier detection); and the `Set-Cookie` of a generated hash cookie.
//!
//! Nothing is allocated unless the destination hashes by a cookie it has to make up (one
//! header value, on that response only) or the request is a retry.

use std::net::IpAddr;

use http::{HeaderValue, Request};
use mesh_l7::balance::hash::Key;
use mesh_l7::layer::Attempt;
use tokio::time::Instant;

use crate::config::{Choice, Endpoint, EndpointSet, InFlight};
use crate::proxy::health::HostHealth;

/// A request's in-flight guard from either path of [`choose`].
pub(super) enum Guard<A, B> {
    /// From outlier detection's choice (no key, first attempt).
    Plain(#[allow(dead_code)] A),
    /// From the keyed or retried choice.
    Keyed(#[allow(dead_code)] B),
}

/// Chooses `set`'s endpoint for `req` from `client`: not ejected by `health`, not one an
/// earlier attempt tried when another is available, by the set's hash key when it has one.
pub(super) fn choose<'a, B>(
    set: &'a EndpointSet,
    health: Option<&HostHealth>,
    req: &Request<B>,
    client: Option<IpAddr>,
    now: Instant,
) -> Option<(&'a Endpoint, impl Sized + 'a, Option<HeaderValue>)> {
    let tried = req
        .extensions()
        .get::<Attempt>()
        .map_or(&[][..], |a| a.tried.as_slice());
    if set.balancing.hash.is_none() && tried.is_empty() {
        let (ep, guard) = crate::proxy::health::choose(set, health, now)?;
        return Some((ep, Guard::Plain(guard), None));
    }
    let mut cookie = None;
    let hash = set.balancing.hash.as_ref().and_then(|h| {
        // Without a client address `useSourceIp` has no key: balanced as without hashing.
        let src = client?;
        match h
            .source
            .key(req.headers(), req.uri().query(), src, rand::random())
        {
            Key::Hash(k) => Some(k),
            Key::NewCookie(v) => {
                let (set_cookie, k) = h.source.new_cookie(v)?;
                cookie = Some(set_cookie);
                Some(k)
            }
            Key::None => None,
        }
    });
    // One lock for the whole choice, none when nothing is ejected.
    let ejected = health.and_then(|h| h.ejections(now));
    let healthy = |a| ejected.as_ref().is_none_or(|e| !e.skips(a));
    let (ep, guard): (_, InFlight<'a>) = set.choose_with(healthy, Choice { tried, hash }, now)?;
    Some((ep, Guard::Keyed(guard), cookie))
}
