//! Upstream HTTP connections of the L7 proxies, pooled by endpoint and client: the client is
//! part of the key because an upstream connection carries who it is for. Bounded in keys and
//! idle connections. A destination's `connectionPool.http` limits each connection's requests
//! (`maxRequestsPerConnection`) and how long it may sit idle (`idleTimeout`: an idle
//! connection found expired is closed, and a sweep at most once a second closes the others).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tracing::debug;

/// The body of a request sent upstream: counted as it is read, and kept (up to a cap) for
/// retries and mirrors below the retry layer.
pub(crate) type ReqBody = mesh_l7::layer::ReplayBody<mesh_l7::layer::CountedBody<Incoming>>;

/// Upstream HTTP connections by endpoint address and client: idle HTTP/1.1 ones, and one
/// multiplexed HTTP/2 connection each. The client is part of the key because an upstream
/// connection carries who it is for (the HBONE tunnel's `Forwarded` client and source
/// workload, a TPROXY connection's source address): one client's requests never ride a
/// connection opened for another.
#[derive(Default)]
pub(crate) struct Upstreams {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    h2: Mutex<HashMap<PoolKey, (hyper::client::conn::http2::SendRequest<ReqBody>, u32)>>,
    /// When idle connections were last swept for `idleTimeout`.
    swept: Mutex<Option<tokio::time::Instant>>,
}

/// An idle HTTP/1.1 connection: since when, how many requests it carried, and the idle
/// timeout of its destination.
struct Idle {
    sender: SendRequest<ReqBody>,
    since: tokio::time::Instant,
    used: u32,
    timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: tokio::time::Instant) -> bool {
        self.timeout.is_some_and(|t| now >= self.since + t)
    }
}

/// A destination's per-connection limits (`connectionPool.http`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnLimits {
    /// `maxRequestsPerConnection` (0: unlimited).
    pub(crate) max_requests: u32,
    /// `idleTimeout`.
    pub(crate) idle: Option<Duration>,
}

/// (endpoint, client address).
type PoolKey = (SocketAddr, Option<std::net::IpAddr>);

/// Most keys each upstream map holds; past it, closed and empty entries are dropped, and a
/// connection that still finds no room is closed instead of pooled.
const MAX_POOL_KEYS: usize = 4096;

/// A sender on an upstream connection.
pub(super) enum Sender {
    H1(SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

/// A request's outcome on a connection: the response, or the error with the request when the
/// connection failed before taking it (safe to send elsewhere).
type TrySend = Result<Response<Incoming>, (hyper::Error, Option<Request<ReqBody>>)>;

impl Sender {
    async fn try_send(&mut self, req: Request<ReqBody>) -> TrySend {
        let r = match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        };
        r.map_err(|mut e| {
            let req = e.take_message();
            (e.into_error(), req)
        })
    }
}

/// Why a request could not be sent upstream.
pub(super) enum SendError {
    /// No connection could be opened.
    Connect(String),
    /// The request failed on the connection.
    Request(hyper::Error),
}

/// Whose connections a request may share: the client's address (connections carry it to the
/// destination) and the HTTP version.
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolFrom {
    pub(super) client: Option<std::net::IpAddr>,
    pub(super) h2: bool,
    /// The destination's connection limits.
    pub(super) limits: ConnLimits,
}

/// Sends `req` to `addr` on a pooled connection, or on a new one from `open`; a pooled
/// connection that closed before taking the request (its peer closed it while idle) is
/// replaced once by a new one. The connection goes back to the pool after the response head.
pub(super) async fn send_pooled<F, Fut>(
    pools: &Upstreams,
    from: PoolFrom,
    addr: SocketAddr,
    req: Request<ReqBody>,
    open: F,
) -> Result<Response<Incoming>, SendError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Sender, String>>,
{
    let key = (addr, from.client);
    let (mut sender, mut used, pooled) = match pools.take(key, from.h2, from.limits) {
        Some((x, used)) => (x, used, true),
        None => (open().await.map_err(SendError::Connect)?, 0, false),
    };
    let mut result = sender.try_send(req).await;
    if pooled && let Err((e, req)) = result {
        let Some(req) = req else {
            return Err(SendError::Request(e));
        };
        debug!(upstream = %addr, error = %e, "pooled connection closed before the request: a new one");
        sender = open().await.map_err(SendError::Connect)?;
        used = 0;
        result = sender.try_send(req).await;
    }
    pools.put(key, sender, used.saturating_add(1), from.limits);
    result.map_err(|(e, _)| SendError::Request(e))
}

impl Upstreams {
    /// A pooled connection for `key` and the requests it carried (an HTTP/2 one is counted
    /// here, as it is shared; it leaves the pool once it reached `maxRequestsPerConnection`).
    fn take(&self, key: PoolKey, h2: bool, limits: ConnLimits) -> Option<(Sender, u32)> {
        if h2 {
            let mut conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            let (s, used) = conns.get_mut(&key).filter(|(s, _)| !s.is_closed())?;
            *used = used.saturating_add(1);
            let out = (Sender::H2(s.clone()), u32::MAX);
            if limits.max_requests > 0 && *used >= limits.max_requests {
                conns.remove(&key);
            }
            return Some(out);
        }
        let now = tokio::time::Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&key)?;
        while let Some(c) = list.pop() {
            // An expired one is dropped: its connection closes.
            if c.sender.is_ready() && !c.expired(now) {
                return Some((Sender::H1(c.sender), c.used));
            }
        }
        None
    }

    /// Closes idle HTTP/1.1 connections past their `idleTimeout`, at most once a second.
    fn sweep(&self, now: tokio::time::Instant) {
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept.is_some_and(|t| now < t + Duration::from_secs(1)) {
                return;
            }
            *swept = Some(now);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, l| {
            l.retain(|c| !c.expired(now) && !c.sender.is_closed());
            !l.is_empty()
        });
    }

    /// Pools `s` after a request; `used` counts the requests it carried (`u32::MAX`: a
    /// shared HTTP/2 connection already counted at take).
    fn put(&self, key: PoolKey, s: Sender, used: u32, limits: ConnLimits) {
        let now = tokio::time::Instant::now();
        if limits.idle.is_some() {
            self.sweep(now);
        }
        match s {
            Sender::H2(s) => {
                if !s.is_closed() && used != u32::MAX {
                    let mut conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
                    if conns.len() >= MAX_POOL_KEYS && !conns.contains_key(&key) {
                        conns.retain(|_, (c, _)| !c.is_closed());
                        if conns.len() >= MAX_POOL_KEYS {
                            return;
                        }
                    }
                    if limits.max_requests == 0 || used < limits.max_requests {
                        conns.insert(key, (s, used));
                    }
                }
            }
            Sender::H1(s) => {
                // maxRequestsPerConnection reached: not pooled, so it closes.
                if s.is_closed() || (limits.max_requests > 0 && used >= limits.max_requests) {
                    return;
                }
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() >= MAX_POOL_KEYS && !idle.contains_key(&key) {
                    idle.retain(|_, l| {
                        l.retain(|c| !c.sender.is_closed());
                        !l.is_empty()
                    });
                    if idle.len() >= MAX_POOL_KEYS {
                        return;
                    }
                }
                let list = idle.entry(key).or_default();
                // Bounded: a burst of parallel requests does not leave unbounded idle
                // connections.
                if list.len() < 16 {
                    list.push(Idle {
                        sender: s,
                        since: now,
                        used,
                        timeout: limits.idle,
                    });
                }
            }
        }
    }
}
