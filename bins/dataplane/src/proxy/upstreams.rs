//! Upstream HTTP connections of the L7 proxies, pooled by endpoint and client: the client is
//! part of the key because an upstream connection carries who it is for. Bounded in keys and
//! idle connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

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
    idle: Mutex<HashMap<PoolKey, Vec<SendRequest<ReqBody>>>>,
    h2: Mutex<HashMap<PoolKey, hyper::client::conn::http2::SendRequest<ReqBody>>>,
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
    let (mut sender, pooled) = match pools.take(key, from.h2) {
        Some(x) => (x, true),
        None => (open().await.map_err(SendError::Connect)?, false),
    };
    let mut result = sender.try_send(req).await;
    if pooled && let Err((e, req)) = result {
        let Some(req) = req else {
            return Err(SendError::Request(e));
        };
        debug!(upstream = %addr, error = %e, "pooled connection closed before the request: a new one");
        sender = open().await.map_err(SendError::Connect)?;
        result = sender.try_send(req).await;
    }
    pools.put(key, sender);
    result.map_err(|(e, _)| SendError::Request(e))
}

impl Upstreams {
    fn take(&self, key: PoolKey, h2: bool) -> Option<Sender> {
        if h2 {
            let conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            return conns
                .get(&key)
                .filter(|s| !s.is_closed())
                .map(|s| Sender::H2(s.clone()));
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&key)?;
        while let Some(s) = list.pop() {
            if s.is_ready() {
                return Some(Sender::H1(s));
            }
        }
        None
    }

    fn put(&self, key: PoolKey, s: Sender) {
        match s {
            Sender::H2(s) => {
                if !s.is_closed() {
                    let mut conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
                    if conns.len() >= MAX_POOL_KEYS && !conns.contains_key(&key) {
                        conns.retain(|_, c| !c.is_closed());
                        if conns.len() >= MAX_POOL_KEYS {
                            return;
                        }
                    }
                    conns.insert(key, s);
                }
            }
            Sender::H1(s) => {
                if s.is_closed() {
                    return;
                }
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() >= MAX_POOL_KEYS && !idle.contains_key(&key) {
                    idle.retain(|_, l| {
                        l.retain(|c| !c.is_closed());
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
                    list.push(s);
                }
            }
        }
    }
}
