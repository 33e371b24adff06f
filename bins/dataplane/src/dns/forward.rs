//! Relaying a query to the upstream resolvers ([`Forwarder`]): each forwarded query leaves
//! from a fresh socket with a random source port and a fresh random ID, over the transport
//! the client used; a UDP answer counts only when it comes from the upstream's address (the
//! socket is connected, so the kernel drops others), carries that ID and echoes the
//! question; anything else is dropped and the wait goes on until the deadline (RFC 5452's
//! defences against forged answers). The upstreams are tried in order within one overall
//! timeout.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Largest UDP answer read from an upstream (EDNS payloads above this are not asked for:
/// the client's own EDNS size is relayed and clients rarely exceed 4096).
const MAX_UDP_ANSWER: usize = 4096;

/// Why a query could not be relayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No upstream answered in time.
    #[error("no upstream answered within {0:?}")]
    Timeout(Duration),
    /// The query could not be encoded.
    #[error("encode query: {0}")]
    Encode(String),
}

/// A boxed future of a socket.
pub type SocketFuture<S> = Pin<Box<dyn Future<Output = io::Result<S>> + Send>>;

/// Where upstream sockets are created: the proxy's own network namespace, or the asking pod's
/// (as Istio's ztunnel forwards in-pod queries with the pod's socket factory), marked so the
/// capture rules leave them alone.
pub trait UpstreamSockets: Send + Sync {
    /// An unbound-port UDP socket of `upstream`'s family.
    fn udp(&self, upstream: SocketAddr) -> SocketFuture<tokio::net::UdpSocket>;
    /// A TCP socket of `upstream`'s family.
    fn tcp(&self, upstream: SocketAddr) -> SocketFuture<tokio::net::TcpSocket>;
}

/// Sockets of the proxy's own namespace, with an optional `SO_MARK`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostSockets {
    /// The mark set on each socket.
    pub mark: Option<u32>,
}

/// A UDP socket bound to an ephemeral port of `upstream`'s family, with `mark`.
pub fn udp_socket(upstream: SocketAddr, mark: Option<u32>) -> io::Result<std::net::UdpSocket> {
    let any: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = socket2::Socket::new(
        socket2::Domain::for_address(upstream),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Some(m) = mark {
        mesh_hbone::set_mark(&s, m)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(any, 0).into())?;
    Ok(s.into())
}

impl UpstreamSockets for HostSockets {
    fn udp(&self, upstream: SocketAddr) -> SocketFuture<tokio::net::UdpSocket> {
        let mark = self.mark;
        Box::pin(async move { tokio::net::UdpSocket::from_std(udp_socket(upstream, mark)?) })
    }

    fn tcp(&self, upstream: SocketAddr) -> SocketFuture<tokio::net::TcpSocket> {
        let mark = self.mark;
        Box::pin(async move {
            let s = match upstream {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            if let Some(m) = mark {
                mesh_hbone::set_mark(&s, m)?;
            }
            Ok(s)
        })
    }
}

/// The upstream resolvers and the overall time a forwarded query may take.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    /// Answers dropped for a wrong ID or question (forgery attempts or stale answers).
    dropped: AtomicU64,
}

impl Forwarder {
    /// Forwards to `upstreams`, in order, within `timeout` in all.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            upstreams,
            timeout,
            dropped: AtomicU64::new(0),
        })
    }

    /// Answers dropped so far because their ID or question did not match.
    pub fn dropped_answers(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Relays `query` over TCP (`tcp`) or UDP and returns the upstream's answer with the
    /// client's ID.
    ///
    /// # Errors
    /// [`ForwardError::Timeout`] when no upstream answered within the timeout.
    pub async fn forward(
        &self,
        query: &Message,
        tcp: bool,
        sockets: &dyn UpstreamSockets,
    ) -> Result<Message, ForwardError> {
        let mut ours = query.clone();
        ours.metadata.id = rand::random();
        let bytes = ours
            .to_vec()
            .map_err(|e| ForwardError::Encode(e.to_string()))?;
        let deadline = Instant::now() + self.timeout;
        let n = self.upstreams.len();
        for (i, up) in self.upstreams.iter().enumerate() {
            // Each remaining upstream gets an equal share of the time left.
            let left = deadline.saturating_duration_since(Instant::now());
            let share = left / u32::try_from(n - i).unwrap_or(1);
            let try_deadline = Instant::now() + share;
            let exchange = async {
                if tcp {
                    self.over_tcp(*up, &bytes, &ours, sockets).await
                } else {
                    self.over_udp(*up, &bytes, &ours, sockets).await
                }
            };
            if let Ok(Ok(mut answer)) = tokio::time::timeout_at(try_deadline, exchange).await {
                answer.metadata.id = query.metadata.id;
                return Ok(answer);
            }
        }
        Err(ForwardError::Timeout(self.timeout))
    }

    /// Whether `answer` answers `ours` (ID and question); counts the ones that do not.
    fn matches(&self, answer: &Message, ours: &Message) -> bool {
        let ok = answer.metadata.message_type == MessageType::Response
            && answer.metadata.id == ours.metadata.id
            && answer.queries == ours.queries;
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    async fn over_udp(
        &self,
        up: SocketAddr,
        bytes: &[u8],
        ours: &Message,
        sockets: &dyn UpstreamSockets,
    ) -> io::Result<Message> {
        let socket = sockets.udp(up).await?;
        // Connected: the kernel delivers only datagrams from `up`.
        socket.connect(up).await?;
        socket.send(bytes).await?;
        let mut buf = vec![0u8; MAX_UDP_ANSWER];
        loop {
            let n = socket.recv(&mut buf).await?;
            let Ok(answer) = Message::from_vec(&buf[..n]) else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if self.matches(&answer, ours) {
                return Ok(answer);
            }
        }
    }

    async fn over_tcp(
        &self,
        up: SocketAddr,
        bytes: &[u8],
        ours: &Message,
        sockets: &dyn UpstreamSockets,
    ) -> io::Result<Message> {
        let mut tcp = sockets.tcp(up).await?.connect(up).await?;
        let len = u16::try_from(bytes.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        tcp.write_all(&framed).await?;
        loop {
            let len = usize::from(tcp.read_u16().await?);
            let mut buf = vec![0u8; len];
            tcp.read_exact(&mut buf).await?;
            let Ok(answer) = Message::from_vec(&buf) else {
                return Err(io::ErrorKind::InvalidData.into());
            };
            if self.matches(&answer, ours) {
                return Ok(answer);
            }
        }
    }
}
