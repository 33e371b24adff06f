//! The HBONE client with its connection pool.
//!
//! Connections are keyed by (source identity, destination identity, HBONE address), as Istio's
//! ztunnel does, so a tunnel never rides a connection authenticated as someone else. Each carries
//! at most `max_streams_per_connection` tunnels; when all are full a new connection is dialled.
//! Dials for one key are serialised, so a burst of N tunnels opens ⌈N / max⌉ connections, not N.
//! A connection with no tunnel for `idle_timeout` is closed. Every connection applies the
//! [`H2Settings`] limits to the server too (a compromised node is a peer like any other):
//! header list cap, empty-frame guard, keepalive PINGs, no server push.
//!
//! Locking: the pool map is a `std::sync::Mutex` held only for lookups (never across `.await`);
//! the per-key dial lock is an async mutex held across the dial on purpose, off the data path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode};
use mesh_identity::{CertStore, SpiffeId, TrustBundle, client_config};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug};

use crate::guard::{FrameGuard, Role, Tripwire};
use crate::keepalive::Keepalive;
use crate::{BufferedTcp, Error, H2Settings, H2Stream};

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most tunnels on one connection (Istio: 100).
    pub max_streams_per_connection: usize,
    /// A connection without tunnels for this long is closed.
    pub idle_timeout: Duration,
    /// Limit for TCP connect plus TLS and HTTP/2 handshakes.
    pub connect_timeout: Duration,
    /// HTTP/2 settings.
    pub h2: H2Settings,
    /// `SO_MARK` for the pool's connections (see [`crate::connect_tcp`]).
    pub socket_mark: Option<u32>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            h2: H2Settings::default(),
            socket_mark: None,
        }
    }
}

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The source workload's certificates (its identity is part of the pool key).
    pub source: Arc<CertStore>,
    /// The identity the server must prove, exactly.
    pub destination_identity: SpiffeId,
    /// Where the HBONE server listens (destination node or waypoint, port 15008).
    pub hbone_addr: SocketAddr,
    /// The `:authority`: the destination workload `ip:port` (or service VIP:port to a waypoint).
    pub authority: SocketAddr,
    /// Extra request headers (`Forwarded`, `baggage`, `traceparent`).
    pub headers: HeaderMap,
    /// Where the TCP socket is created (default: here). Part of the pool key.
    pub socket_source: Option<Arc<dyn crate::socket::SocketSource>>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Key {
    src: SpiffeId,
    dst: SpiffeId,
    addr: SocketAddr,
    /// [`crate::SocketSource::id`], 0 for the default.
    socket_source: u64,
}

struct Conn {
    send: SendRequest<Bytes>,
    active: AtomicUsize,
    opened: AtomicU64,
    closed: AtomicBool,
}

#[derive(Default)]
struct Slot {
    conns: Vec<Arc<Conn>>,
    dial: Arc<tokio::sync::Mutex<()>>,
}

struct Inner {
    cfg: PoolConfig,
    bundle: TrustBundle,
    slots: Mutex<HashMap<Key, Slot>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// Holds a tunnel's place on its connection; frees it on drop.
struct StreamSlot(Arc<Conn>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pooled HBONE client. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connections", &self.connection_count())
            .finish()
    }
}

impl Pool {
    /// A pool verifying servers against `bundle`.
    pub fn new(cfg: PoolConfig, bundle: TrustBundle) -> Self {
        Pool {
            inner: Arc::new(Inner {
                cfg,
                bundle,
                slots: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
            }),
        }
    }

    /// Open HBONE connections right now.
    pub fn connection_count(&self) -> usize {
        let slots = self.lock();
        slots.values().map(|s| s.conns.len()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a stream slot on an open connection for `key`, if one has room.
    fn checkout(&self, key: &Key) -> Option<(SendRequest<Bytes>, StreamSlot)> {
        let slots = self.lock();
        let slot = slots.get(key)?;
        let max = self.inner.cfg.max_streams_per_connection;
        slot.conns.iter().find_map(|c| {
            if c.closed.load(Ordering::Acquire) {
                return None;
            }
            // The map lock serialises checkouts, so load-then-add cannot overshoot `max`.
            if c.active.load(Ordering::Acquire) >= max {
                return None;
            }
            c.active.fetch_add(1, Ordering::AcqRel);
            c.opened.fetch_add(1, Ordering::Relaxed);
            Some((c.send.clone(), StreamSlot(c.clone())))
        })
    }

    /// Opens a tunnel: reuses a pooled connection or dials a new one, sends CONNECT, and returns
    /// the stream once the server answered 200. Any other status is [`Error::Status`].
    pub async fn connect(&self, req: ConnectRequest) -> Result<H2Stream, Error> {
        if self.inner.cancel.is_cancelled() {
            return Err(Error::Shutdown);
        }
        let key = Key {
            src: req.source.identity().clone(),
            dst: req.destination_identity.clone(),
            addr: req.hbone_addr,
            socket_source: req.socket_source.as_ref().map_or(0, |s| s.id()),
        };
        // A pooled connection may have died (GOAWAY, reset) since its last use: such a
        // failure marks it closed and the request is tried once more on a fresh connection.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (send, slot) = self.checkout_or_dial(&key, &req).await?;
            match self.open_stream(send, slot, &req).await {
                Err((Error::H2(e), conn)) if attempt == 1 && (e.is_go_away() || e.is_io()) => {
                    debug!(error = %e, "pooled connection is dead; retrying on a new one");
                    conn.closed.store(true, Ordering::Release);
                }
                Err((e, _)) => return Err(e),
                Ok(stream) => return Ok(stream),
            }
        }
    }

    async fn checkout_or_dial(
        &self,
        key: &Key,
        req: &ConnectRequest,
    ) -> Result<(SendRequest<Bytes>, StreamSlot), Error> {
        if let Some(c) = self.checkout(key) {
            return Ok(c);
        }
        let dial_lock = self.lock().entry(key.clone()).or_default().dial.clone();
        let result = {
            let _dialing = dial_lock.lock().await;
            match self.checkout(key) {
                Some(c) => Ok(c),
                None => match self.dial(key, req).await {
                    Ok(()) => self.checkout(key).ok_or(Error::Shutdown),
                    Err(e) => Err(e),
                },
            }
        };
        drop(dial_lock);
        if result.is_err() {
            drop_slot_if_unused(&mut self.lock(), key);
        }
        result
    }

    async fn open_stream(
        &self,
        send: SendRequest<Bytes>,
        slot: StreamSlot,
        req: &ConnectRequest,
    ) -> Result<H2Stream, (Error, Arc<Conn>)> {
        let conn = slot.0.clone();
        let fail = |e: Error| (e, conn.clone());
        let mut send = send.ready().await.map_err(|e| fail(e.into()))?;
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.uri_mut() = http::Uri::builder()
            .authority(req.authority.to_string())
            .build()
            .map_err(|e| fail(Error::Io(std::io::Error::other(e))))?;
        *request.headers_mut() = req.headers.clone();
        let (response, stream) = send
            .send_request(request, false)
            .map_err(|e| fail(e.into()))?;
        let response = response.await.map_err(|e| fail(e.into()))?;
        if response.status() != StatusCode::OK {
            return Err(fail(Error::Status {
                addr: req.hbone_addr,
                authority: req.authority.to_string(),
                status: response.status(),
            }));
        }
        Ok(
            H2Stream::new(stream, response.into_body(), Some(Box::new(slot)))
                .with_stall_timeout(self.inner.cfg.h2.idle_timeout),
        )
    }

    async fn dial(&self, key: &Key, req: &ConnectRequest) -> Result<(), Error> {
        let cfg = &self.inner.cfg;
        let addr = key.addr;
        let tls_cfg = client_config(req.source.clone(), &self.inner.bundle, key.dst.clone())?;
        let handshake = async {
            let tcp = crate::socket::connect_tcp(addr, cfg.socket_mark, req.socket_source.as_ref())
                .await
                .map_err(|source| Error::Connect { addr, source })?;
            crate::socket::set_keepalive(&tcp);
            let mut tls = TlsConnector::from(tls_cfg)
                .connect(
                    ServerName::IpAddress(addr.ip().into()),
                    BufferedTcp::new(tcp),
                )
                .await
                .map_err(|source| Error::Tls { addr, source })?;
            if tls.get_ref().1.alpn_protocol() != Some(mesh_identity::ALPN_H2) {
                return Err(Error::Alpn { addr });
            }
            tls.get_mut().0.enable_read_buffer();
            let (io, trip) = FrameGuard::new(tls, &cfg.h2, Role::Client);
            let (send, conn) = cfg.h2.client_builder()?.handshake::<_, Bytes>(io).await?;
            Ok((send, conn, trip))
        };
        let (send, mut h2conn, trip) = tokio::time::timeout(cfg.connect_timeout, handshake)
            .await
            .map_err(|_| Error::Connect {
                addr,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })??;
        let conn = Arc::new(Conn {
            send,
            active: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        self.lock()
            .entry(key.clone())
            .or_default()
            .conns
            .push(conn.clone());
        debug!(src = %key.src, dst = %key.dst, %addr, "hbone connection established");
        let span = tracing::debug_span!("hbone_conn", %addr, dst.identity = %key.dst);
        let pool = self.clone();
        let key = key.clone();
        let keepalive = Keepalive::new(h2conn.ping_pong(), &cfg.h2);
        self.inner.tasks.spawn(
            pool.drive(key, conn, h2conn, keepalive, trip)
                .instrument(span),
        );
        Ok(())
    }

    /// Drives one connection's I/O; closes it after `idle_timeout` without tunnels, when a
    /// keepalive PING goes unanswered, or when the server breaks a frame limit.
    async fn drive<T>(
        self,
        key: Key,
        conn: Arc<Conn>,
        mut h2conn: h2::client::Connection<T, Bytes>,
        mut keepalive: Keepalive,
        trip: Arc<Tripwire>,
    ) where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let idle_timeout = self.inner.cfg.idle_timeout;
        // Never spin: check at least every 100 ms, whatever the configured timeout.
        let tick = (idle_timeout / 4).max(Duration::from_millis(100));
        let mut idle_for = Duration::ZERO;
        let mut last_opened = conn.opened.load(Ordering::Relaxed);
        // Made once, not per turn of the loop (which runs on every wake-up of the connection,
        // several per request): a fresh timer or cancellation future each time registers
        // and unregisters it, under locks, per frame.
        let cancel = self.inner.cancel.child_token();
        let mut cancelled = std::pin::pin!(cancel.cancelled());
        let mut tripped = std::pin::pin!(trip.tripped());
        let mut check = std::pin::pin!(tokio::time::sleep(tick));
        loop {
            tokio::select! {
                r = &mut h2conn => {
                    if let Err(e) = r {
                        debug!(error = %e, "hbone connection ended");
                    }
                    break;
                }
                () = &mut cancelled => break,
                e = keepalive.failed() => {
                    debug!(error = %e, "closing hbone connection");
                    break;
                }
                () = &mut tripped => {
                    debug!(flood = ?trip.what(), "server broke an HTTP/2 limit: closing");
                    break;
                }
                () = &mut check => {
                    check.as_mut().reset(tokio::time::Instant::now() + tick);
                    let opened = conn.opened.load(Ordering::Relaxed);
                    if conn.active.load(Ordering::Acquire) == 0 && opened == last_opened {
                        idle_for += tick;
                    } else {
                        idle_for = Duration::ZERO;
                    }
                    last_opened = opened;
                    if idle_for >= idle_timeout && self.retire_if_idle(&key, &conn) {
                        debug!("closing idle hbone connection");
                        return;
                    }
                }
            }
        }
        self.retire(&key, &conn);
    }

    fn retire_if_idle(&self, key: &Key, conn: &Arc<Conn>) -> bool {
        let mut slots = self.lock();
        // Checkouts happen under this lock, so no tunnel can start after this check.
        if conn.active.load(Ordering::Acquire) != 0 {
            return false;
        }
        conn.closed.store(true, Ordering::Release);
        remove_conn(&mut slots, key, conn);
        true
    }

    fn retire(&self, key: &Key, conn: &Arc<Conn>) {
        conn.closed.store(true, Ordering::Release);
        remove_conn(&mut self.lock(), key, conn);
    }

    /// Closes every connection and waits for their tasks.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

fn remove_conn(slots: &mut HashMap<Key, Slot>, key: &Key, conn: &Arc<Conn>) {
    if let Some(slot) = slots.get_mut(key) {
        slot.conns.retain(|c| !Arc::ptr_eq(c, conn));
    }
    drop_slot_if_unused(slots, key);
}

/// Drops the slot of `key` once nothing uses it: no connection and no dial in progress (the
/// map holds the only reference to its dial lock).
fn drop_slot_if_unused(slots: &mut HashMap<Key, Slot>, key: &Key) {
    if let Some(slot) = slots.get(key)
        && slot.conns.is_empty()
        && Arc::strong_count(&slot.dial) == 1
    {
        slots.remove(key);
    }
}
