//! A proxy's compiled rate limiting ([`RateLimitPolicy`]): its token buckets (shared by every
//! stream of the proxy, as Envoy's are per process) and the per-request decision, sans-IO
//! (`now` and random rolls are inputs).
//!
//! Envoy semantics mirrored: a route's `typed_per_filter_config` for the local filter
//! replaces the filter-level config for that route; route `rate_limits` replace the virtual
//! host's (`vh_rate_limits: OVERRIDE`, the default); a request descriptor equal to a
//! configured `descriptors[]` entry uses that entry's bucket (a value omitted: one bucket per
//! value, at most `max_dynamic_descriptors`), and the default bucket is consumed as well.

use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::descriptor::{Descriptor, Recipe, RequestView};
use super::parts::{Append, Fraction, GlobalFilter, VhostFacts, VhostMatch};
use crate::resilience::ratelimit::{BucketConfig, BucketMap, Decision, TokenBucket};

/// A local (token bucket) limiter: Envoy's `LocalRateLimit`.
#[derive(Debug)]
pub(crate) struct LocalLimit {
    pub(crate) name: String,
    pub(crate) bucket: Option<Mutex<TokenBucket>>,
    pub(crate) enabled: Fraction,
    pub(crate) enforced: Fraction,
    pub(crate) headers: Vec<(HeaderName, HeaderValue, Append)>,
    pub(crate) x_headers: bool,
    pub(crate) descriptors: Vec<LocalDescriptor>,
    pub(crate) status: StatusCode,
}

/// A configured descriptor and its bucket(s).
#[derive(Debug)]
pub(crate) struct LocalDescriptor {
    pub(crate) entries: Vec<(String, Option<String>)>,
    pub(crate) buckets: Buckets,
}

#[derive(Debug)]
pub(crate) enum Buckets {
    One(Mutex<TokenBucket>),
    PerValue(Mutex<BucketMap>),
}

/// A route or virtual host patch.
#[derive(Debug)]
pub(crate) struct RoutePatch {
    pub(crate) port: Option<u16>,
    pub(crate) vhost: VhostMatch,
    /// `None`: a `VIRTUAL_HOST` patch; `Some(None)`: every route; `Some(Some(n))`: route `n`.
    pub(crate) route: Option<Option<String>>,
    pub(crate) rate_limits: Vec<Recipe>,
    pub(crate) local: Option<LocalLimit>,
}

/// A connection limiter: Envoy's network `LocalRateLimit`.
#[derive(Debug)]
pub struct ConnectionLimit {
    pub(crate) name: String,
    pub(crate) bucket: Mutex<TokenBucket>,
}

impl ConnectionLimit {
    /// Whether a new connection at `now` may go on (takes a token).
    pub fn admit(&self, now: Instant) -> bool {
        lock(&self.bucket).take(now).allowed
    }

    /// The limiter's `stat_prefix`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One proxy's rate limiting: what its `EnvoyFilter`s patched in.
#[derive(Debug, Default)]
pub struct RateLimitPolicy {
    /// What it was built from, so an unchanged policy keeps its buckets across configs.
    pub(crate) origin: (Vec<super::RateLimitRules>, Option<super::Context>),
    pub(crate) local: Vec<LocalLimit>,
    pub(crate) local_filter: bool,
    pub(crate) global: Option<Arc<GlobalFilter>>,
    pub(crate) patches: Vec<RoutePatch>,
    pub(crate) connections: Option<ConnectionLimit>,
}

/// What the local limiters decided for a request.
#[derive(Debug)]
pub enum LocalOutcome {
    /// Go on; the bucket numbers for `x-ratelimit-*` headers when enabled.
    Pass(Option<Decision>),
    /// Refuse with the status and headers.
    Refuse {
        /// 429 unless configured.
        status: StatusCode,
        /// Configured headers and `x-ratelimit-*` when enabled.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// The limiter's name.
        name: String,
    },
}

/// What to do with a request.
#[derive(Debug)]
pub struct Verdict {
    /// The local limiters' decision.
    pub local: LocalOutcome,
    /// The global check to make, when a global filter applies and descriptors were made.
    pub global: Option<(Arc<GlobalFilter>, Vec<Descriptor>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned bucket is still a valid bucket (every update is a plain store).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RateLimitPolicy {
    /// Whether any HTTP limiter applies (else the layer passes requests untouched).
    pub fn has_http(&self) -> bool {
        self.local_filter || self.global.is_some()
    }

    /// Whether `other` was built from the same rules for the same context (so this one's
    /// buckets may go on counting in its place).
    pub fn same_rules(&self, other: &RateLimitPolicy) -> bool {
        self.origin == other.origin
    }

    /// The connection limiter, if a `NETWORK_FILTER` patch set one.
    pub fn connections(&self) -> Option<&ConnectionLimit> {
        self.connections.as_ref()
    }

    /// Decides for a request on `vhost` that matched `route` (by name), at `now`; `roll`
    /// gives random numbers for the enabled / enforced fractions.
    pub fn decide(
        &self,
        vhost: VhostFacts<'_>,
        route: Option<&str>,
        r: &RequestView<'_>,
        now: Instant,
        roll: &mut impl FnMut() -> u32,
    ) -> Verdict {
        let applies =
            |p: &&RoutePatch| p.port.is_none_or(|x| x == vhost.port) && p.vhost.matches(vhost);
        let on_route = |p: &&RoutePatch| match &p.route {
            Some(Some(n)) => route == Some(n.as_str()),
            _ => true,
        };
        let matched = || self.patches.iter().filter(applies).filter(on_route);
        // Route `rate_limits` override the virtual host's (Envoy `vh_rate_limits: OVERRIDE`).
        let route_recipes = matched()
            .filter(|p| p.route.is_some())
            .flat_map(|p| &p.rate_limits);
        let recipes: Vec<&Recipe> = if route_recipes.clone().next().is_some() {
            route_recipes.collect()
        } else {
            matched()
                .filter(|p| p.route.is_none())
                .flat_map(|p| &p.rate_limits)
                .collect()
        };
        let descriptors: Vec<Descriptor> = recipes.iter().filter_map(|x| x.build(r)).collect();
        let mut local = LocalOutcome::Pass(None);
        if self.local_filter {
            // The last matching per-route config replaces the filter-level ones.
            let per_route = matched().filter_map(|p| p.local.as_ref()).last();
            let limits: &[LocalLimit] = match per_route {
                Some(l) => std::slice::from_ref(l),
                None => &self.local,
            };
            for l in limits {
                match l.check(&descriptors, now, roll) {
                    refused @ LocalOutcome::Refuse { .. } => {
                        local = refused;
                        break;
                    }
                    // Several filters: the headers of the one with the fewest tokens left.
                    LocalOutcome::Pass(Some(d)) => {
                        if !matches!(&local, LocalOutcome::Pass(Some(s)) if s.remaining <= d.remaining)
                        {
                            local = LocalOutcome::Pass(Some(d));
                        }
                    }
                    LocalOutcome::Pass(None) => {}
                }
            }
        }
        let global = match (&self.global, &local) {
            (Some(g), LocalOutcome::Pass(_)) if !descriptors.is_empty() => {
                Some((g.clone(), descriptors))
            }
            _ => None,
        };
        Verdict { local, global }
    }
}

impl LocalLimit {
    /// Envoy's local rate limit filter for one request.
    fn check(
        &self,
        descriptors: &[Descriptor],
        now: Instant,
        roll: &mut impl FnMut() -> u32,
    ) -> LocalOutcome {
        if !self.enabled.hit(roll()) {
            return LocalOutcome::Pass(None);
        }
        let mut shown: Option<Decision> = None;
        let mut keep = |d: Decision| {
            if shown.is_none_or(|s| d.remaining < s.remaining || !d.allowed) {
                shown = Some(d);
            }
        };
        let mut allowed = true;
        for cd in &self.descriptors {
            for d in descriptors.iter().filter(|d| cd.matches(d)) {
                let dec = match &cd.buckets {
                    Buckets::One(b) => lock(b).take(now),
                    Buckets::PerValue(m) => {
                        let values = d.entries.iter().map(|(_, v)| v.as_str());
                        lock(m).bucket_of(values, now).take(now)
                    }
                };
                allowed &= dec.allowed;
                keep(dec);
            }
        }
        if allowed && let Some(b) = &self.bucket {
            let dec = lock(b).take(now);
            allowed = dec.allowed;
            keep(dec);
        }
        if allowed || !self.enforced.hit(roll()) {
            return LocalOutcome::Pass(shown.filter(|_| self.x_headers));
        }
        let mut headers = Vec::new();
        for (n, v, how) in &self.headers {
            let present = headers.iter().any(|(h, _): &(HeaderName, _)| h == n);
            match how {
                Append::IfAbsent if present => {}
                Append::Overwrite => {
                    headers.retain(|(h, _)| h != n);
                    headers.push((n.clone(), v.clone()));
                }
                _ => headers.push((n.clone(), v.clone())),
            }
        }
        if self.x_headers
            && let Some(d) = shown
        {
            headers.extend(x_ratelimit_headers(&d));
        }
        LocalOutcome::Refuse {
            status: self.status,
            headers,
            name: self.name.clone(),
        }
    }
}

impl LocalDescriptor {
    fn matches(&self, d: &Descriptor) -> bool {
        self.entries.len() == d.entries.len()
            && self
                .entries
                .iter()
                .zip(&d.entries)
                .all(|((k, v), (dk, dv))| k == dk && v.as_ref().is_none_or(|v| v == dv))
    }
}

/// `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` as Envoy's local rate
/// limit writes them (`enable_x_ratelimit_headers: DRAFT_VERSION_03`).
pub fn x_ratelimit_headers(d: &Decision) -> [(HeaderName, HeaderValue); 3] {
    [
        (HeaderName::from_static("x-ratelimit-limit"), d.limit.into()),
        (
            HeaderName::from_static("x-ratelimit-remaining"),
            d.remaining.into(),
        ),
        (
            HeaderName::from_static("x-ratelimit-reset"),
            d.reset_secs().into(),
        ),
    ]
}

/// A checked bucket config made into a bucket at `now`.
pub(crate) fn new_bucket(cfg: BucketConfig, now: Instant) -> Mutex<TokenBucket> {
    Mutex::new(TokenBucket::new(cfg, now))
}
