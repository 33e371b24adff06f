//! The HBONE server: mutual TLS, then HTTP/2, then one CONNECT per tunnel.
//!
//! The library answers what it can decide alone (400 for a request that is not `CONNECT` or
//! whose `:authority` is not `ip:port`) and hands every well-formed CONNECT to the caller as an
//! [`InboundConnect`], which the caller [`accept`](InboundConnect::accept)s (200, then bytes) or
//! [`refuse`](InboundConnect::refuse)s (401, 503 …). No byte is read from or written to the tunnel
//! before the 200 is sent.
//!
//! Abuse limits ([`H2Settings`]): h2 enforces the header list cap, concurrent streams, resets
//! before accept and local error resets; the frame guard ([`crate::guard`]) closes CONTINUATION
//! and empty-frame floods and rapid reset; keepalive PINGs close dead or non-reading peers;
//! a connection without tunnels for the idle timeout is closed with GOAWAY.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{HeaderMap, Method, Response, StatusCode};
use mesh_identity::{SpiffeId, peer_identity};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use crate::guard::{FrameGuard, Role};
use crate::headers::ConnectHeaders;
use crate::keepalive::Keepalive;
use crate::{BufferedTcp, Error, H2Settings, H2Stream};

const H2_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a GOAWAY after a flood may take to leave before the connection is dropped.
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);

/// Facts about an accepted, authenticated HBONE connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's verified SPIFFE identity.
    pub peer_identity: SpiffeId,
    /// The client's TCP address.
    pub peer_addr: SocketAddr,
    /// Our local address the client connected to.
    pub local_addr: SocketAddr,
}

/// A well-formed CONNECT request waiting for the caller's decision.
#[derive(Debug)]
pub struct InboundConnect {
    /// The connection it arrived on.
    pub conn: Arc<ConnInfo>,
    /// The requested destination (`:authority`).
    pub authority: SocketAddr,
    /// The request headers as sent.
    pub headers: HeaderMap,
    respond: SendResponse<Bytes>,
    body: RecvStream,
    stall_timeout: Duration,
}

impl InboundConnect {
    /// The decoded `Forwarded`, `baggage` and `traceparent` headers.
    pub fn connect_headers(&self) -> ConnectHeaders {
        ConnectHeaders::from_header_map(&self.headers)
    }

    /// Answers 200 and returns the tunnel.
    pub fn accept(self) -> Result<H2Stream, Error> {
        self.accept_with_baggage(None)
    }

    /// Answers 200 carrying the destination's own `baggage` (Istio 1.29+ ztunnel with
    /// `ENABLE_RESPONSE_BAGGAGE`, istio/ztunnel `src/proxy/inbound.rs` `build_response`) when
    /// given and encodable, and returns the tunnel.
    pub fn accept_with_baggage(
        mut self,
        baggage: Option<&crate::headers::Baggage>,
    ) -> Result<H2Stream, Error> {
        let mut response = status_response(StatusCode::OK);
        if let Some(v) = baggage.and_then(crate::headers::Baggage::to_header_value) {
            response.headers_mut().insert(crate::headers::BAGGAGE, v);
        }
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.body, None).with_stall_timeout(self.stall_timeout))
    }

    /// Answers `status` (e.g. 401 denied, 503 upstream unavailable) and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        if let Err(e) = self.respond.send_response(status_response(status), true) {
            debug!(error = %e, "could not send refusal");
        }
    }
}

fn status_response(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r
}

/// Completes the TLS handshake on an accepted TCP connection (within `timeout`, after which the
/// connection is closed) and reads the client's verified identity. Refuses peers that do not
/// negotiate ALPN `h2`. The 64 KiB read buffer is allocated only once the handshake is done,
/// so a connection that never authenticates costs little.
pub async fn accept_tls(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> Result<(TlsStream<BufferedTcp>, ConnInfo), Error> {
    let peer_addr = tcp.peer_addr()?;
    let local_addr = tcp.local_addr()?;
    let _ = tcp.set_nodelay(true);
    crate::socket::set_keepalive(&tcp);
    let handshake = TlsAcceptor::from(config).accept(BufferedTcp::new(tcp));
    let mut tls = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return Err(Error::Tls {
                addr: peer_addr,
                source: e,
            });
        }
        Err(_) => {
            return Err(Error::Tls {
                addr: peer_addr,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
            });
        }
    };
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() != Some(mesh_identity::ALPN_H2) {
        return Err(Error::Alpn { addr: peer_addr });
    }
    let peer_identity = peer_identity(session.peer_certificates())?;
    tls.get_mut().0.enable_read_buffer();
    Ok((
        tls,
        ConnInfo {
            peer_identity,
            peer_addr,
            local_addr,
        },
    ))
}

/// Serves HTTP/2 on an authenticated connection until the client closes it, `cancel` fires
/// (then GOAWAY is sent and open tunnels may finish), it has no tunnel for
/// `settings.idle_timeout` (GOAWAY, then `Ok`), or the client breaks a limit of `settings`:
/// [`Error::Flood`] (after GOAWAY `ENHANCE_YOUR_CALM`), [`Error::PingTimeout`], or h2's
/// [`Error::H2`]. Each well-formed CONNECT is passed to `handler` on its own task; the tasks
/// are owned here and aborted when the connection ends.
pub async fn serve_connection<IO, F, Fut>(
    io: IO,
    info: ConnInfo,
    settings: &H2Settings,
    cancel: CancellationToken,
    handler: F,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(InboundConnect) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Boxed: a caller's task is sized for its largest state from accept on, so an inline
    // HTTP/2 state machine would be paid by every connection still in its TLS handshake.
    Box::pin(serve(io, info, settings, cancel, handler)).await
}

async fn serve<IO, F, Fut>(
    io: IO,
    info: ConnInfo,
    settings: &H2Settings,
    cancel: CancellationToken,
    handler: F,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(InboundConnect) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let builder = settings.server_builder()?;
    let (io, trip) = FrameGuard::new(io, settings, Role::Server);
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut conn = tokio::time::timeout(H2_HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "HTTP/2 handshake timed out",
            ))
        })??;
    let mut keepalive = Keepalive::new(conn.ping_pong(), settings);
    let idle = tokio::time::sleep(settings.idle_timeout);
    tokio::pin!(idle);
    let info = Arc::new(info);
    let mut tunnels = JoinSet::new();
    let mut shutting_down = false;
    // Made once, not per turn of the loop (every wake-up of the connection): a fresh
    // cancellation future registers and unregisters itself each time, and the shared token's
    // lock would be taken by every connection on every frame; a child token's is its own.
    let cancel = cancel.child_token();
    let mut cancelled = std::pin::pin!(cancel.cancelled());
    let mut tripped = std::pin::pin!(trip.tripped());
    let result = loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                None => break Ok(()),
                // After our GOAWAY the client may close first, mid-write: that is the end we
                // asked for.
                Some(Err(e)) if shutting_down && e.is_io() => break Ok(()),
                Some(Err(e)) => break Err(Error::H2(e)),
                Some(Ok((req, mut respond))) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + settings.idle_timeout);
                    if req.method() != Method::CONNECT {
                        debug!(method = %req.method(), "not CONNECT: 400");
                        let _ = respond.send_response(status_response(StatusCode::BAD_REQUEST), true);
                        continue;
                    }
                    let authority = req
                        .uri()
                        .authority()
                        .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
                    let Some(authority) = authority else {
                        debug!(uri = %req.uri(), "authority is not ip:port: 400");
                        let _ = respond.send_response(status_response(StatusCode::BAD_REQUEST), true);
                        continue;
                    };
                    let (parts, body) = req.into_parts();
                    let span = tracing::debug_span!("hbone_stream", %authority, src.identity = %info.peer_identity);
                    let fut = handler(InboundConnect {
                        conn: info.clone(),
                        authority,
                        headers: parts.headers,
                        respond,
                        body,
                        stall_timeout: settings.idle_timeout,
                    });
                    tunnels.spawn(fut.instrument(span));
                }
            },
            Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {
                if tunnels.is_empty() {
                    idle.as_mut().reset(tokio::time::Instant::now() + settings.idle_timeout);
                }
            }
            () = &mut cancelled, if !shutting_down => {
                shutting_down = true;
                conn.graceful_shutdown();
            }
            () = &mut idle, if tunnels.is_empty() && !shutting_down => {
                debug!(src.identity = %info.peer_identity, "idle HBONE connection: GOAWAY");
                shutting_down = true;
                conn.graceful_shutdown();
            }
            e = keepalive.failed() => break Err(e),
            () = &mut tripped => {
                let (kind, frames) = trip.what().unwrap_or((crate::FloodKind::EmptyFrames, 0));
                break Err(Error::Flood { kind, frames });
            }
        }
    };
    if let Err(Error::Flood { .. }) = &result {
        // The guard feeds h2 nothing more; let the GOAWAY out, briefly.
        conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
        let _ = tokio::time::timeout(
            GOAWAY_FLUSH,
            std::future::poll_fn(|cx| conn.poll_closed(cx)),
        )
        .await;
    }
    tunnels.abort_all();
    while tunnels.join_next().await.is_some() {}
    result
}
