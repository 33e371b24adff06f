//! `DestinationRule.trafficPolicy.connectionPool`: the spec as users write it, the compiled
//! [`PoolPolicy`], and the sans-IO admission counters of one destination ([`PoolCounters`]):
//! a limit and the current count in, admitted or overflow (Envoy's circuit breakers, flag `UO`)
//! out. Counters are atomics so every connection and request of the proxy shares them without
//! a lock; a [`Permit`] gives its slot back when dropped.
//!
//! Istio semantics (`ConnectionPoolSettings`): limits are per destination host for the whole
//! proxy; `maxConnections`, `http1MaxPendingRequests`, `http2MaxRequests` and `maxRetries`
//! default to 2^32-1 (no limit); `connectTimeout` defaults to 10 s; `maxRequestsPerConnection`
//! 0 means unlimited.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;

use mesh_authz::istio::FieldError;

/// `connectionPool` as users write it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPoolSpec {
    /// TCP settings.
    #[serde(default)]
    pub tcp: Option<TcpSpec>,
    /// HTTP settings.
    #[serde(default)]
    pub http: Option<HttpSpec>,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSpec {
    /// Most connections to the destination host.
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// TCP connect timeout.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Keepalive probes on upstream sockets.
    #[serde(default)]
    pub tcp_keepalive: Option<KeepaliveSpec>,
    /// Longest life of a connection.
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    /// Idle time after which a TCP connection is closed.
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

/// `connectionPool.tcp.tcpKeepalive`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSpec {
    /// Unanswered probes before the connection is dead.
    #[serde(default)]
    pub probes: Option<u32>,
    /// Idle time before the first probe.
    #[serde(default)]
    pub time: Option<String>,
    /// Time between probes.
    #[serde(default)]
    pub interval: Option<String>,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSpec {
    /// Most requests waiting for a connection.
    #[serde(default, rename = "http1MaxPendingRequests")]
    pub http1_max_pending_requests: Option<i64>,
    /// Most requests in flight to the destination.
    #[serde(default, rename = "http2MaxRequests")]
    pub http2_max_requests: Option<i64>,
    /// Requests per upstream connection (0: unlimited).
    #[serde(default)]
    pub max_requests_per_connection: Option<i64>,
    /// Most retries in flight to the destination.
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Idle time after which an upstream HTTP connection is closed.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// `DEFAULT`, `DO_NOT_UPGRADE` or `UPGRADE`.
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    /// Whether the upstream uses the client's protocol.
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    /// Not supported yet.
    #[serde(default)]
    pub max_concurrent_streams: Option<serde::de::IgnoredAny>,
}

/// TCP keepalive on upstream sockets (`None`: the system's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keepalive {
    /// Probes.
    pub probes: Option<u32>,
    /// Idle time before probing.
    pub time: Option<Duration>,
    /// Between probes.
    pub interval: Option<Duration>,
}

/// Compiled `connectionPool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Most connections to the host (L4 connections and L7 upstream connections).
    pub max_connections: u32,
    /// Connect timeout (`None`: the proxy's, 10 s by default as Istio's).
    pub connect_timeout: Option<Duration>,
    /// Keepalive on upstream sockets.
    pub keepalive: Option<Keepalive>,
    /// Longest life of a TCP connection.
    pub max_connection_duration: Option<Duration>,
    /// Idle TCP connections are closed after this.
    pub tcp_idle_timeout: Option<Duration>,
    /// Most requests waiting for an upstream connection.
    pub http1_max_pending: u32,
    /// Most requests in flight.
    pub http2_max_requests: u32,
    /// Requests per upstream connection (0: unlimited).
    pub max_requests_per_connection: u32,
    /// Most retries in flight.
    pub max_retries: u32,
    /// Idle upstream HTTP connections are closed after this.
    pub http_idle_timeout: Option<Duration>,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            max_connections: u32::MAX,
            connect_timeout: None,
            keepalive: None,
            max_connection_duration: None,
            tcp_idle_timeout: None,
            http1_max_pending: u32::MAX,
            http2_max_requests: u32::MAX,
            max_requests_per_connection: 0,
            max_retries: u32::MAX,
            http_idle_timeout: None,
        }
    }
}

fn duration(v: Option<&str>, field: String, errs: &mut Vec<FieldError>) -> Option<Duration> {
    let v = v?;
    match crate::duration::parse(v).ok() {
        Some(d) if d >= Duration::from_millis(1) => Some(d),
        _ => {
            errs.push(FieldError {
                field,
                reason: format!("{v:?}: expected a duration of at least 1ms (such as 10s)"),
            });
            None
        }
    }
}

/// An idle timeout: as [`duration`], but `0s` disables it (Istio `connectionPool.tcp` and
/// `http` `idleTimeout`: "If set to 0s, the timeout will be disabled").
fn idle(v: Option<&str>, field: String, errs: &mut Vec<FieldError>) -> Option<Duration> {
    match v.and_then(|v| crate::duration::parse(v).ok()) {
        Some(Duration::ZERO) => None,
        _ => duration(v, field, errs),
    }
}

/// A limit: Istio's fields are int32 and 0 or less is invalid for the maximums
/// (`maxRequestsPerConnection` allows 0: unlimited).
fn limit(v: Option<i64>, zero_ok: bool, field: String, errs: &mut Vec<FieldError>) -> Option<u32> {
    let v = v?;
    match u32::try_from(v) {
        Ok(n) if n > 0 || zero_ok => Some(n),
        _ => {
            errs.push(FieldError {
                field,
                reason: format!("{v}: expected a positive number"),
            });
            None
        }
    }
}

impl ConnectionPoolSpec {
    /// Compiles the spec at `field` (such as `spec.trafficPolicy.connectionPool`); every
    /// problem is pushed to `errs`.
    pub fn compile(&self, field: &str, errs: &mut Vec<FieldError>) -> PoolPolicy {
        let mut p = PoolPolicy::default();
        if let Some(t) = &self.tcp {
            let f = format!("{field}.tcp");
            let max = limit(
                t.max_connections,
                false,
                format!("{f}.maxConnections"),
                errs,
            );
            p.max_connections = max.unwrap_or(u32::MAX);
            let ct = t.connect_timeout.as_deref();
            p.connect_timeout = duration(ct, format!("{f}.connectTimeout"), errs);
            p.keepalive = t.tcp_keepalive.as_ref().map(|k| Keepalive {
                probes: k.probes,
                time: duration(k.time.as_deref(), format!("{f}.tcpKeepalive.time"), errs),
                interval: duration(
                    k.interval.as_deref(),
                    format!("{f}.tcpKeepalive.interval"),
                    errs,
                ),
            });
            let mcd = t.max_connection_duration.as_deref();
            p.max_connection_duration = duration(mcd, format!("{f}.maxConnectionDuration"), errs);
            let idle = t.idle_timeout.as_deref();
            p.tcp_idle_timeout = self::idle(idle, format!("{f}.idleTimeout"), errs);
        }
        if let Some(h) = &self.http {
            compile_http(h, &format!("{field}.http"), &mut p, errs);
        }
        p
    }
}

fn compile_http(h: &HttpSpec, f: &str, p: &mut PoolPolicy, errs: &mut Vec<FieldError>) {
    let max = |v, name: &str, errs: &mut Vec<FieldError>| {
        limit(v, false, format!("{f}.{name}"), errs).unwrap_or(u32::MAX)
    };
    p.http1_max_pending = max(
        h.http1_max_pending_requests,
        "http1MaxPendingRequests",
        errs,
    );
    p.http2_max_requests = max(h.http2_max_requests, "http2MaxRequests", errs);
    p.max_retries = max(h.max_retries, "maxRetries", errs);
    let mrpc = h.max_requests_per_connection;
    p.max_requests_per_connection =
        limit(mrpc, true, format!("{f}.maxRequestsPerConnection"), errs).unwrap_or(0);
    p.http_idle_timeout = idle(h.idle_timeout.as_deref(), format!("{f}.idleTimeout"), errs);
    match h.h2_upgrade_policy.as_deref() {
        // This proxy never upgrades an HTTP/1.1 upstream to HTTP/2: what DEFAULT (the mesh
        // default, DO_NOT_UPGRADE) and DO_NOT_UPGRADE ask.
        None | Some("DEFAULT") | Some("DO_NOT_UPGRADE") => {}
        Some(o) => errs.push(FieldError {
            field: format!("{f}.h2UpgradePolicy"),
            reason: format!(
                "{o:?}: not supported (upstream HTTP/1.1 is never upgraded to HTTP/2); \
                 expected DEFAULT or DO_NOT_UPGRADE"
            ),
        }),
    }
    if h.use_client_protocol == Some(false) {
        errs.push(FieldError {
            field: format!("{f}.useClientProtocol"),
            reason: "false is not supported: the upstream always speaks the client's protocol"
                .into(),
        });
    }
    if h.max_concurrent_streams.is_some() {
        errs.push(FieldError {
            field: format!("{f}.maxConcurrentStreams"),
            reason: "not supported yet by this data plane".into(),
        });
    }
}

/// A destination host's outlier detection and connection pool, compiled from its
/// `DestinationRule` (`spec.trafficPolicy`; subset-level ones are rejected by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// `outlierDetection`, when set.
    pub outlier: Option<super::outlier::OutlierPolicy>,
    /// `connectionPool`, when set.
    pub pool: Option<PoolPolicy>,
}

/// One bounded count (connections, pending or active requests, retries in flight).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU32);

impl Gauge {
    /// Takes a slot if fewer than `max` are taken; whether it did.
    pub fn try_acquire(&self, max: u32) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    pub fn release(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Slots taken.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// Which count a [`Permit`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A connection to the host.
    Connection,
    /// A request waiting for a connection.
    Pending,
    /// A request in flight.
    Request,
    /// A retry in flight.
    Retry,
}

/// A connection or request refused because a pool limit is reached (Envoy's circuit
/// breakers; response flag `UO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection pool overflow ({0:?}) for the destination")]
pub struct Overflow(pub Kind);

/// The admission counters of one destination host, shared by the whole proxy.
#[derive(Debug, Default)]
pub struct PoolCounters {
    connections: Gauge,
    pending: Gauge,
    requests: Gauge,
    retries: Gauge,
    overflows: AtomicU64,
}

impl PoolCounters {
    fn gauge(&self, k: Kind) -> &Gauge {
        match k {
            Kind::Connection => &self.connections,
            Kind::Pending => &self.pending,
            Kind::Request => &self.requests,
            Kind::Retry => &self.retries,
        }
    }

    /// The limit of `k` in `p`.
    pub fn limit(p: &PoolPolicy, k: Kind) -> u32 {
        match k {
            Kind::Connection => p.max_connections,
            Kind::Pending => p.http1_max_pending,
            Kind::Request => p.http2_max_requests,
            Kind::Retry => p.max_retries,
        }
    }

    /// Admits one more `k` under `p`'s limit, or counts an overflow (`UO`) and refuses.
    pub fn try_acquire(self: &Arc<Self>, p: &PoolPolicy, k: Kind) -> Option<Permit> {
        if self.gauge(k).try_acquire(Self::limit(p, k)) {
            return Some(Permit {
                counters: self.clone(),
                kind: k,
            });
        }
        self.overflows.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// How many `k` are held now.
    pub fn current(&self, k: Kind) -> u32 {
        self.gauge(k).get()
    }

    /// Overflows so far (refused with `UO`).
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

/// A slot of a [`PoolCounters`] count, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    counters: Arc<PoolCounters>,
    kind: Kind,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counters.gauge(self.kind).release();
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
