//! `DestinationRule.trafficPolicy.outlierDetection`: the spec as users write it, the compiled
//! [`OutlierPolicy`], and the sans-IO ejection state of one destination's endpoints
//! ([`OutlierCluster`]): outcomes and `now` in, ejections out. No clock reads, no I/O.
//!
//! Semantics mirrored (Envoy `config.cluster.v3.OutlierDetection`, Istio `OutlierDetection`):
//! - consecutive 5xx (default 5, `0` disables), consecutive gateway errors (502/503/504;
//!   disabled unless set) and, with `splitExternalLocalOriginErrors`, consecutive local-origin
//!   failures (connect failure, reset, timeout; default 5). Without the split, a local-origin
//!   failure counts as the status Envoy maps it to (connect failure and reset 503, timeout 504).
//!   At L4 a connect failure is a local-origin failure, a connect success a success.
//! - An ejected endpoint stays out for `baseEjectionTime × ejections` (capped at
//!   `max(300 s, baseEjectionTime)`, Envoy's `max_ejection_time` default); each `interval`
//!   an endpoint spends back in service forgives one past ejection.
//! - A new ejection only while fewer than `maxEjectionPercent` of the endpoints are ejected
//!   (Envoy: `ejected% < max%`, so the first one always can unless it is 0).
//! - When fewer than `minHealthPercent` of the endpoints are healthy, outlier detection is
//!   off for the choice (Istio: panic mode, every endpoint is a candidate).
//!
//! Invariant: a cluster tracks only the endpoint addresses it was given ([`OutlierCluster::sync`]),
//! so its memory is bounded by the configuration, never by traffic.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use mesh_authz::istio::FieldError;

/// `outlierDetection` as users write it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Consecutive 5xx responses (or mapped local-origin failures) before an ejection.
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502/503/504 before an ejection.
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive local-origin failures before an ejection (with the split only).
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    /// Count local-origin failures apart from responses.
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    /// Time between ejection analysis sweeps (default 10 s).
    #[serde(default)]
    pub interval: Option<String>,
    /// Minimum ejection duration (default 30 s).
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Most endpoints ejected at once, in percent (default 10).
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    /// Below this percentage of healthy endpoints, outlier detection is off (default 0).
    #[serde(default)]
    pub min_health_percent: Option<i64>,
    /// Deprecated, no longer applied by Istio (istio/istio#24087): rejected by name.
    #[serde(default)]
    pub consecutive_errors: Option<serde::de::IgnoredAny>,
}

/// Compiled `outlierDetection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive 5xx before an ejection (0: off).
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors before an ejection (0: off).
    pub consecutive_gateway: u32,
    /// Consecutive local-origin failures before an ejection (0: off; with `split` only).
    pub consecutive_local_origin: u32,
    /// Whether local-origin failures are counted apart.
    pub split: bool,
    /// Sweep interval: one past ejection is forgiven per interval in service.
    pub interval: Duration,
    /// Base ejection time.
    pub base_ejection: Duration,
    /// Most endpoints ejected at once, percent.
    pub max_ejection_percent: u32,
    /// Minimum healthy percentage for outlier detection to apply.
    pub min_health_percent: u32,
}

impl Default for OutlierPolicy {
    /// Istio's defaults.
    fn default() -> Self {
        OutlierPolicy {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            consecutive_local_origin: 5,
            split: false,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

/// Envoy's `max_ejection_time` default.
const MAX_EJECTION: Duration = Duration::from_secs(300);

fn duration(v: Option<&str>, field: &str, errs: &mut Vec<FieldError>) -> Option<Duration> {
    let v = v?;
    match crate::duration::parse(v).ok() {
        // Istio: durations MUST be >= 1ms.
        Some(d) if d >= Duration::from_millis(1) => Some(d),
        _ => {
            errs.push(FieldError {
                field: field.to_owned(),
                reason: format!("{v:?}: expected a duration of at least 1ms (such as 30s)"),
            });
            None
        }
    }
}

fn percent(v: Option<i64>, default: u32, field: &str, errs: &mut Vec<FieldError>) -> u32 {
    match v {
        None => default,
        Some(p) => match u32::try_from(p) {
            Ok(p) if p <= 100 => p,
            _ => {
                errs.push(FieldError {
                    field: field.to_owned(),
                    reason: format!("{p}: expected a percentage from 0 to 100"),
                });
                default
            }
        },
    }
}

impl OutlierDetectionSpec {
    /// Compiles the spec at `field` (such as `spec.trafficPolicy.outlierDetection`); every
    /// problem is pushed to `errs`.
    pub fn compile(&self, field: &str, errs: &mut Vec<FieldError>) -> OutlierPolicy {
        let d = OutlierPolicy::default();
        if self.consecutive_errors.is_some() {
            errs.push(FieldError {
                field: format!("{field}.consecutiveErrors"),
                reason: "deprecated and no longer applied by Istio: use \
                         consecutive5xxErrors or consecutiveGatewayErrors"
                    .into(),
            });
        }
        OutlierPolicy {
            consecutive_5xx: self.consecutive_5xx_errors.unwrap_or(d.consecutive_5xx),
            consecutive_gateway: self.consecutive_gateway_errors.unwrap_or(0),
            consecutive_local_origin: self
                .consecutive_local_origin_failures
                .unwrap_or(d.consecutive_local_origin),
            split: self.split_external_local_origin_errors,
            interval: duration(self.interval.as_deref(), &format!("{field}.interval"), errs)
                .unwrap_or(d.interval),
            base_ejection: duration(
                self.base_ejection_time.as_deref(),
                &format!("{field}.baseEjectionTime"),
                errs,
            )
            .unwrap_or(d.base_ejection),
            max_ejection_percent: percent(
                self.max_ejection_percent,
                d.max_ejection_percent,
                &format!("{field}.maxEjectionPercent"),
                errs,
            ),
            min_health_percent: percent(
                self.min_health_percent,
                0,
                &format!("{field}.minHealthPercent"),
                errs,
            ),
        }
    }
}

/// What happened on one request (L7) or connection attempt (L4) to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status (L7); a success resets the counters.
    Status(u16),
    /// The connection was made (L4) or a response came back below 500.
    Success,
    /// Local origin: the connection could not be made.
    ConnectFailure,
    /// Local origin: the connection was reset before a response.
    Reset,
    /// Local origin: no response in time.
    Timeout,
}

impl Outcome {
    /// The status Envoy counts a local-origin failure as when errors are not split.
    fn as_status(self) -> u16 {
        match self {
            Outcome::Status(s) => s,
            Outcome::Success => 200,
            Outcome::ConnectFailure | Outcome::Reset => 503,
            Outcome::Timeout => 504,
        }
    }

    fn local_origin(self) -> bool {
        matches!(
            self,
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout
        )
    }
}

/// One endpoint's counters and ejection.
#[derive(Debug, Clone, Default)]
struct Endpoint {
    c5xx: u32,
    gateway: u32,
    local: u32,
    /// Past ejections not yet forgiven (the ejection time multiplier).
    ejections: u32,
    ejected_until: Option<Instant>,
    /// When it last came back (for forgiving past ejections, one per interval).
    back_since: Option<Instant>,
}

impl Endpoint {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Clears an ejection that has run out.
    fn refresh(&mut self, now: Instant) {
        if let Some(t) = self.ejected_until
            && now >= t
        {
            self.ejected_until = None;
            self.back_since = Some(t);
        }
    }

    /// Counts `o`; whether a threshold was reached.
    fn count(&mut self, p: &OutlierPolicy, o: Outcome) -> bool {
        fn bump(c: &mut u32, limit: u32, hit: bool) -> bool {
            if !hit {
                *c = 0;
                return false;
            }
            *c = c.saturating_add(1);
            limit > 0 && *c >= limit
        }
        if p.split && o.local_origin() {
            return bump(&mut self.local, p.consecutive_local_origin, true);
        }
        if p.split && o == Outcome::Success {
            // A connection made (or a response) clears the local-origin streak.
            self.local = 0;
        }
        let s = o.as_status();
        let five = bump(&mut self.c5xx, p.consecutive_5xx, s >= 500);
        let gw = bump(
            &mut self.gateway,
            p.consecutive_gateway,
            matches!(s, 502..=504),
        );
        five || gw
    }

    fn eject(&mut self, p: &OutlierPolicy, now: Instant) -> Duration {
        // Forgive one past ejection per interval spent back in service.
        if let Some(back) = self.back_since.take() {
            let intervals =
                now.saturating_duration_since(back).as_nanos() / p.interval.as_nanos().max(1);
            let forgiven = u32::try_from(intervals).unwrap_or(u32::MAX);
            self.ejections = self.ejections.saturating_sub(forgiven);
        }
        self.ejections = self.ejections.saturating_add(1);
        let cap = MAX_EJECTION.max(p.base_ejection);
        let time = p.base_ejection.saturating_mul(self.ejections).min(cap);
        self.ejected_until = Some(now + time);
        (self.c5xx, self.gateway, self.local) = (0, 0, 0);
        time
    }
}

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Nothing changed.
    None,
    /// The endpoint was ejected for this long.
    Ejected(Duration),
    /// A threshold was reached but `maxEjectionPercent` forbade the ejection.
    Capped,
}

/// The outlier state of one destination's endpoints (a sans-IO state machine).
///
/// Cost: the ejected endpoints are also kept ordered by the end of their ejection, so the
/// ejected count ([`enforcing`](Self::enforcing), `maxEjectionPercent`) is O(log n) after
/// [`advance`](Self::advance), not a walk over every endpoint per request.
#[derive(Debug, Clone)]
pub struct OutlierCluster {
    policy: OutlierPolicy,
    endpoints: HashMap<SocketAddr, Endpoint>,
    /// `(ejected_until, addr)` of every endpoint whose `ejected_until` is set.
    expiries: BTreeSet<(Instant, SocketAddr)>,
}

impl OutlierCluster {
    /// A cluster with `policy` tracking `addrs`.
    pub fn new(policy: OutlierPolicy, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut c = OutlierCluster {
            policy,
            endpoints: HashMap::new(),
            expiries: BTreeSet::new(),
        };
        c.sync(c.policy.clone(), addrs);
        c
    }

    /// Takes a new policy and endpoint list: endpoints that left are forgotten, new ones start
    /// healthy, the others keep their state (so a config swap does not return an ejected
    /// endpoint early).
    pub fn sync(&mut self, policy: OutlierPolicy, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut next = HashMap::new();
        for a in addrs {
            let e = self.endpoints.remove(&a).unwrap_or_default();
            next.insert(a, e);
        }
        self.expiries = (next.iter())
            .filter_map(|(a, e)| e.ejected_until.map(|t| (t, *a)))
            .collect();
        self.endpoints = next;
        self.policy = policy;
    }

    /// Returns the endpoints whose ejection ran out by `now` (amortised O(log n) per
    /// ejection); queries stay correct without it, only slower.
    pub fn advance(&mut self, now: Instant) {
        while let Some(&(t, a)) = self.expiries.first()
            && t <= now
        {
            self.expiries.pop_first();
            if let Some(e) = self.endpoints.get_mut(&a) {
                e.refresh(now);
            }
        }
    }

    /// The policy.
    pub fn policy(&self) -> &OutlierPolicy {
        &self.policy
    }

    /// How many endpoints are tracked.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether no endpoint is tracked.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// How many endpoints are ejected at `now`: those whose ejection runs past it (O(1)
    /// plus the ejections that ran out since the last [`advance`](Self::advance)).
    pub fn ejected_count(&self, now: Instant) -> usize {
        let over = self.expiries.iter().take_while(|(t, _)| *t <= now).count();
        self.expiries.len() - over
    }

    /// Records `outcome` of `addr` at `now`. Outcomes of untracked or ejected endpoints are
    /// ignored (in-flight requests finishing after the ejection).
    pub fn report(&mut self, addr: SocketAddr, outcome: Outcome, now: Instant) -> Event {
        self.advance(now);
        let total = self.endpoints.len();
        let ejected = self.ejected_count(now);
        let policy = &self.policy;
        let Some(e) = self.endpoints.get_mut(&addr) else {
            return Event::None;
        };
        e.refresh(now);
        if e.ejected(now) || !e.count(policy, outcome) {
            return Event::None;
        }
        // Envoy: eject only while the ejected share is below the maximum.
        if (ejected as u64) * 100 >= u64::from(policy.max_ejection_percent) * total as u64 {
            (e.c5xx, e.gateway, e.local) = (0, 0, 0);
            return Event::Capped;
        }
        let time = e.eject(policy, now);
        self.expiries.insert((now + time, addr));
        Event::Ejected(time)
    }

    /// Whether outlier detection applies now: at least `minHealthPercent` of the endpoints
    /// are healthy (else Istio's panic mode: every endpoint is a candidate).
    pub fn enforcing(&self, now: Instant) -> bool {
        let total = self.endpoints.len() as u64;
        let healthy = total - self.ejected_count(now) as u64;
        healthy * 100 >= u64::from(self.policy.min_health_percent) * total
    }

    /// Whether `addr` is to be skipped now (ejected, and outlier detection applies).
    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.endpoints.get(&addr).is_some_and(|e| e.ejected(now)) && self.enforcing(now)
    }

    /// The endpoints to skip now (empty in panic mode).
    pub fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        if !self.enforcing(now) {
            return Vec::new();
        }
        self.endpoints
            .iter()
            .filter(|(_, e)| e.ejected(now))
            .map(|(a, _)| *a)
            .collect()
    }
}

#[cfg(test)]
#[path = "outlier_tests.rs"]
mod tests;
