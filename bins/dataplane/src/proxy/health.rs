//! Proxy-wide endpoint health and connection-pool counters ([`Health`]), shared by every
//! connection and request of the proxy and kept across config swaps: per destination host
//! with a `DestinationRule` `outlierDetection` or `connectionPool`, the outlier state of its
//! endpoints (`mesh_l7::resilience::outlier`, sans-IO) and its admission counters
//! (`mesh_l7::resilience::pool`).
//!
//! The API the data paths use:
//! - endpoint choice skips `ctx.health.is_ejected(host, addr, now)` (or filters with
//!   [`HostHealth::ejections`], one lock per choice), L4 and L7 alike;
//! - every attempt reports its outcome: `ctx.health.report(host, addr, outcome, now)`;
//! - connections and requests take a [`Permit`] with [`HostHealth::admit`] (overflow: refuse
//!   with `UO`), and retries (engineer A's layer) ask [`Health::admit_retry`].
//!
//! Bounds: hosts are only those a config's `DestinationRule`s name, endpoints only those the
//! config lists for them (at most [`MAX_ENDPOINTS`] per host); [`Health::sync`] at each config
//! swap drops hosts and endpoints that left. Traffic never adds an entry. Locks: one mutex per
//! host's outlier state, never held across an await; the host map is an `ArcSwap`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use mesh_l7::resilience::outlier::{Event, Outcome, OutlierCluster};
use mesh_l7::resilience::pool::{HostPolicy, Kind, Overflow, Permit, PoolCounters, PoolPolicy};
use tokio::time::Instant;
use tracing::warn;

use crate::config::MeshState;

/// Most endpoints tracked per host.
pub(crate) const MAX_ENDPOINTS: usize = 65_536;

/// One destination host's policy, outlier state and counters.
pub(crate) struct HostHealth {
    host: String,
    policy: HostPolicy,
    /// Shared with the entry of the previous config (state survives swaps).
    outlier: Option<Arc<Mutex<OutlierCluster>>>,
    counters: Arc<PoolCounters>,
    ejections: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
}

impl HostHealth {
    /// The connection pool policy, when set.
    pub(crate) fn pool(&self) -> Option<&PoolPolicy> {
        self.policy.pool.as_ref()
    }

    fn cluster(&self) -> Option<std::sync::MutexGuard<'_, OutlierCluster>> {
        let c = self.outlier.as_ref()?;
        Some(c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether `addr` is ejected now (and outlier detection applies: not in panic mode).
    pub(crate) fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.cluster().is_some_and(|c| c.is_ejected(addr, now))
    }

    /// The endpoints to skip now, under one lock for a whole endpoint choice; `None` (and
    /// no lock held) when none is: no outlier detection, nothing ejected, or panic mode.
    pub(crate) fn ejections(&self, now: Instant) -> Option<Ejections<'_>> {
        let mut c = self.cluster()?;
        c.advance(now);
        (c.ejected_count(now) > 0 && c.enforcing(now)).then_some(Ejections { c, now })
    }

    /// Records an attempt's outcome; an ejection is logged and counted.
    pub(crate) fn report(&self, addr: SocketAddr, outcome: Outcome, now: Instant) {
        let Some(mut c) = self.cluster() else { return };
        let event = c.report(addr, outcome, now);
        drop(c);
        if let Event::Ejected(d) = event {
            self.ejections.fetch_add(1, Ordering::Relaxed);
            warn!(host = %self.host, endpoint = %addr, ejected_for = ?d, "outlier detection: endpoint ejected");
        }
    }

    /// Admits one more `kind` under the pool's limit (no pool: always, without a permit).
    pub(crate) fn admit(&self, kind: Kind) -> Result<Option<Permit>, Overflow> {
        let Some(p) = &self.policy.pool else {
            return Ok(None);
        };
        match self.counters.try_acquire(p, kind) {
            Some(permit) => Ok(Some(permit)),
            None => Err(Overflow(kind)),
        }
    }

    /// Counts an L4 connect retry.
    pub(crate) fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// A host's ejected endpoints at one instant, locked for one endpoint choice (never across
/// an await).
pub(crate) struct Ejections<'a> {
    c: std::sync::MutexGuard<'a, OutlierCluster>,
    now: Instant,
}

impl Ejections<'_> {
    /// Whether `addr` is to be skipped (O(1): the cluster's ejected count is kept).
    pub(crate) fn skips(&self, addr: SocketAddr) -> bool {
        self.c.is_ejected(addr, self.now)
    }
}

/// Endpoint health and pool counters of the whole proxy.
#[derive(Default)]
pub(crate) struct Health {
    hosts: ArcSwap<HashMap<String, Arc<HostHealth>>>,
}

impl Health {
    /// The entry of `host` (lower case), when its `DestinationRule` sets outlier detection
    /// or a connection pool. Lock-free.
    pub(crate) fn host(&self, host: &str) -> Option<Arc<HostHealth>> {
        let hosts = self.hosts.load();
        if hosts.is_empty() {
            return None;
        }
        hosts.get(host).cloned()
    }

    /// Whether `addr` of `host` is ejected now.
    #[allow(dead_code)] // host-level shorthand (tests; the data paths hold a HostHealth)
    pub(crate) fn is_ejected(&self, host: &str, addr: SocketAddr, now: Instant) -> bool {
        self.host(host).is_some_and(|h| h.is_ejected(addr, now))
    }

    /// Records an attempt's outcome on `addr` of `host`.
    #[allow(dead_code)] // host-level shorthand (tests; the data paths hold a HostHealth)
    pub(crate) fn report(&self, host: &str, addr: SocketAddr, outcome: Outcome, now: Instant) {
        if let Some(h) = self.host(host) {
            h.report(addr, outcome, now);
        }
    }

    /// For the retry layer: admits one retry to `host` under `connectionPool.http.maxRetries`
    /// (`Ok(None)`: no limit configured). Hold the permit for the retry's life.
    pub(crate) fn admit_retry(&self, host: &str) -> Result<Option<Permit>, Overflow> {
        match self.host(host) {
            Some(h) => h.admit(Kind::Retry),
            None => Ok(None),
        }
    }

    /// Takes a new config: one entry per host whose `DestinationRule` sets either policy,
    /// tracking the host's current endpoints; state and counters of hosts and endpoints that
    /// stay are kept, the others dropped.
    pub(crate) fn sync(&self, state: &MeshState) {
        let old = self.hosts.load_full();
        let mut next = HashMap::new();
        for (host, policy) in &state.host_policies {
            let addrs = endpoints_of(state, host);
            let prev = old.get(host);
            let outlier =
                policy
                    .outlier
                    .clone()
                    .map(|p| match prev.and_then(|h| h.outlier.clone()) {
                        Some(c) => {
                            c.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .sync(p, addrs.iter().copied());
                            c
                        }
                        None => Arc::new(Mutex::new(OutlierCluster::new(p, addrs.iter().copied()))),
                    });
            next.insert(
                host.clone(),
                Arc::new(HostHealth {
                    host: host.clone(),
                    policy: (**policy).clone(),
                    outlier,
                    counters: prev.map(|h| h.counters.clone()).unwrap_or_default(),
                    ejections: prev.map(|h| h.ejections.clone()).unwrap_or_default(),
                    retries: prev.map(|h| h.retries.clone()).unwrap_or_default(),
                }),
            );
        }
        self.hosts.store(Arc::new(next));
    }
}

/// Every endpoint address of `host` (all its ports), at most [`MAX_ENDPOINTS`].
fn endpoints_of(state: &MeshState, host: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for sp in state.by_host.get(host).into_iter().flat_map(|p| p.values()) {
        for ep in &sp.endpoints {
            out.push(SocketAddr::new(ep.workload.address, ep.port));
        }
    }
    out.sort_unstable();
    out.dedup();
    out.truncate(MAX_ENDPOINTS);
    out
}

impl Health {
    /// The entry of a destination service: the first of its hosts with a policy.
    pub(crate) fn for_service(&self, s: &crate::config::Service) -> Option<Arc<HostHealth>> {
        if self.hosts.load().is_empty() {
            return None;
        }
        s.hosts.iter().find_map(|h| self.host(h))
    }
}

/// Picks an endpoint of `set` that is not ejected, by the set's own choice
/// (`EndpointSet::choose_with` with an "is healthy" predicate: nearest tier with a healthy
/// endpoint, then its balancing).
pub(crate) fn choose<'a>(
    set: &'a crate::config::EndpointSet,
    health: Option<&HostHealth>,
    now: Instant,
) -> Option<(&'a crate::config::Endpoint, impl Sized + 'a)> {
    let Some(ejected) = health.and_then(|h| h.ejections(now)) else {
        return set.choose();
    };
    set.choose_with(|a| !ejected.skips(a), Default::default(), now)
}

/// The per-connection limits (`maxRequestsPerConnection`, HTTP `idleTimeout`) of a
/// destination's pool. With `tcp.maxConnectionDuration`, an upstream HTTP connection carries
/// one request and is not reused: none outlives the duration by more than the life of its
/// one request (Envoy's upstream `max_connection_duration` also lets active streams finish).
pub(crate) fn conn_limits(health: Option<&HostHealth>) -> super::upstreams::ConnLimits {
    match health.and_then(|h| h.pool()) {
        Some(p) => super::upstreams::ConnLimits {
            max_requests: match p.max_connection_duration {
                Some(_) => 1,
                None => p.max_requests_per_connection,
            },
            idle: p.http_idle_timeout,
        },
        None => super::upstreams::ConnLimits::default(),
    }
}

/// The error text of [`admit_connect`]'s overflow (`UO`).
pub(crate) const OVERFLOW: &str = "connection pool overflow";

/// Admits a new upstream connection under `health`'s pool: a pending-request slot while it is
/// made (`http1MaxPendingRequests`) and a connection slot for its life (`maxConnections`).
pub(crate) fn admit_connect(
    health: Option<&HostHealth>,
) -> Result<(Option<Permit>, Option<Permit>), String> {
    let Some(h) = health else {
        return Ok((None, None));
    };
    let pending = h.admit(Kind::Pending).map_err(|_| OVERFLOW.to_owned())?;
    let conn = h.admit(Kind::Connection).map_err(|_| OVERFLOW.to_owned())?;
    Ok((pending, conn))
}

/// The outcome of an L7 response for outlier detection: the upstream's failure when it gave
/// no response (local origin), else its status; `None` when no request reached the endpoint
/// (the proxy's own answers: pool overflow `UO`, `NR`, `UH`, an endpoint outside the mesh),
/// which must not count against it.
pub(crate) fn outcome_of<B>(resp: &http::Response<B>) -> Option<Outcome> {
    use mesh_l7::layer::UpstreamFailure as U;
    use mesh_telemetry::metrics::ResponseFlags as F;
    let meta = resp.extensions().get::<mesh_l7::layer::Meta>();
    if let Some(f) = meta.and_then(|m| m.failure) {
        return Some(match f {
            U::ConnectFailure => Outcome::ConnectFailure,
            _ => Outcome::Reset,
        });
    }
    match meta.map_or(F::None, |m| m.flags) {
        F::UpstreamRequestTimeout => Some(Outcome::Timeout),
        // Any other flag without a typed failure: a local answer, nothing was sent.
        F::None if resp.status().is_server_error() => Some(Outcome::Status(resp.status().as_u16())),
        F::None => Some(Outcome::Success),
        _ => None,
    }
}

/// Runs a connection's byte copy `fut` under the pool's `maxConnectionDuration` and TCP
/// `idleTimeout`; `activity` returns the bytes moved so far (both ways). `None`: a limit
/// closed the connection (idle: no byte for a whole `idleTimeout`, checked once per period,
/// so it closes between one and two periods after the last byte).
///
/// `fut` is pinned by the caller: a future taken by value and awaited is stored twice in this
/// one (as the argument and as what is awaited), and the copy lives as long as the tunnel.
pub(crate) async fn bounded<F: std::future::Future>(
    mut fut: std::pin::Pin<&mut F>,
    pool: Option<&PoolPolicy>,
    activity: impl Fn() -> (u64, u64),
) -> Option<F::Output> {
    let (max, idle) = pool.map_or((None, None), |p| {
        (p.max_connection_duration, p.tcp_idle_timeout)
    });
    if max.is_none() && idle.is_none() {
        return Some(fut.as_mut().await);
    }
    let deadline = max.map(|d| Instant::now() + d);
    let mut last = activity();
    loop {
        let tick = idle.map(|i| Instant::now() + i);
        // At least one is set (checked above).
        let Some(wake) = [deadline, tick].into_iter().flatten().min() else {
            return Some(fut.as_mut().await);
        };
        tokio::select! {
            out = fut.as_mut() => return Some(out),
            () = tokio::time::sleep_until(wake) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
                let now = activity();
                if now == last {
                    return None;
                }
                last = now;
            }
        }
    }
}

/// The next endpoint of `sp` to try after a connect failure (L4): by the service port's own
/// choice (nearest locality first), not tried yet, not ejected, in the mesh.
pub(crate) fn next_endpoint(
    sp: &crate::config::ServicePort,
    tried: &[SocketAddr],
    health: Option<&HostHealth>,
    now: Instant,
) -> Option<crate::config::Endpoint> {
    let ejected = health.and_then(|h| h.ejections(now));
    let usable =
        |a: SocketAddr| !tried.contains(&a) && !ejected.as_ref().is_some_and(|e| e.skips(a));
    let ep = sp.pick_with(usable, tried)?;
    // The choice falls back to tried or ejected endpoints when none is left: not retried.
    (usable(SocketAddr::new(ep.workload.address, ep.port)) && ep.workload.hbone_addr.is_some())
        .then(|| ep.clone())
}

/// Connect attempts after the first one at L4 (Envoy's tcp_proxy `max_connect_attempts`
/// minus one): bounded, each under the connect timeout.
pub(crate) const L4_CONNECT_RETRIES: usize = 2;

/// Sets `connectionPool.tcp.tcpKeepalive` on an upstream socket (unset parts keep the
/// system's values). Errors are logged: keepalive is best effort.
pub(crate) fn keepalive(s: &tokio::net::TcpStream, pool: Option<&PoolPolicy>) {
    let Some(k) = pool.and_then(|p| p.keepalive) else {
        return;
    };
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        ka = ka.with_time(t);
    }
    if let Some(i) = k.interval {
        ka = ka.with_interval(i);
    }
    if let Some(p) = k.probes {
        ka = ka.with_retries(p);
    }
    if let Err(e) = socket2::SockRef::from(s).set_tcp_keepalive(&ka) {
        warn!(error = %e, "tcpKeepalive not set");
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;

/// Why [`dial_l4`] gave no connection.
pub(crate) enum L4Error<E> {
    /// `maxConnections` reached (`UO`).
    Overflow,
    /// The dial failed (or hit `connectTimeout`).
    Dial(E),
}

/// Dials endpoint `addr` of a host with `health` under its pool (the waypoint's TCP paths):
/// a `maxConnections` slot held for the connection's life, `connectTimeout` (`timed_out`
/// makes the error), and the outcome reported to outlier detection (`connect_failure` tells
/// a failure to count from a refusal by policy).
pub(crate) async fn dial_l4<T, E>(
    health: Option<&HostHealth>,
    addr: SocketAddr,
    dial: impl std::future::Future<Output = Result<T, E>>,
    timed_out: impl FnOnce() -> E,
    connect_failure: impl FnOnce(&E) -> bool,
) -> Result<(T, Option<Permit>), L4Error<E>> {
    let Some(h) = health else {
        return dial.await.map(|t| (t, None)).map_err(L4Error::Dial);
    };
    let permit = h.admit(Kind::Connection).map_err(|_| L4Error::Overflow)?;
    let result = match h.pool().and_then(|p| p.connect_timeout) {
        Some(t) => tokio::time::timeout(t, dial)
            .await
            .unwrap_or_else(|_| Err(timed_out())),
        None => dial.await,
    };
    let now = Instant::now();
    match result {
        Ok(t) => {
            h.report(addr, Outcome::Success, now);
            Ok((t, permit))
        }
        Err(e) => {
            if connect_failure(&e) {
                h.report(addr, Outcome::ConnectFailure, now);
            }
            Err(L4Error::Dial(e))
        }
    }
}
