//! HBONE: HTTP/2 CONNECT tunnels over mutual TLS, as Istio's ztunnel speaks them.
//!
//! - [`Pool`]: the client. Pools connections per (source identity, destination identity,
//!   HBONE address), at most 100 tunnels each, closing idle ones; verifies the server's SPIFFE
//!   id exactly; sends `CONNECT <ip:port>` with `Forwarded`, `baggage` and `traceparent`.
//! - [`accept_tls`] + [`serve_connection`]: the server. Answers 400 itself for malformed
//!   requests and hands each CONNECT to the caller to accept (200) or refuse (401, 503, …).
//! - [`copy_bidirectional`]: the byte pump between a tunnel and a plain stream, half-close
//!   aware, with connection-owned buffers (no per-chunk allocation).
//!
//! See `examples/tunnel.rs` for a client and server in one process.

#![warn(missing_docs)]

mod error;
pub mod headers;
mod pool;
mod server;
mod stream;

pub use error::{Error, Side};
pub use pool::{ConnectRequest, Pool, PoolConfig};
pub use server::{ConnInfo, InboundConnect, accept_tls, serve_connection};
pub use stream::{ByteCounter, CopyStats, H2Stream, copy_bidirectional};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 settings shared by client and server.
#[derive(Debug, Clone)]
pub struct H2Settings {
    /// Most concurrent tunnels the server allows per connection (Istio: 100).
    pub max_concurrent_streams: u32,
    /// Initial flow-control window of a tunnel. Large so one tunnel can fill a fast link.
    pub stream_window: u32,
    /// Initial flow-control window of a connection.
    pub connection_window: u32,
    /// Largest HTTP/2 frame we accept.
    pub max_frame_size: u32,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            max_concurrent_streams: 100,
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 256 * 1024,
        }
    }
}

/// Opens a TCP connection to `addr` with nodelay, its socket marked with `mark` (`SO_MARK`,
/// Linux; needs `CAP_NET_ADMIN`) when given, so that capture rules can tell a proxy's own
/// connections from the application's (Istio marks with 1337). Without the permission to
/// mark (not root, no `CAP_NET_ADMIN`: then capture rules cannot have been installed by this
/// user either, or they exclude the proxy by uid) the socket stays unmarked, with one warning.
pub async fn connect_tcp(
    addr: std::net::SocketAddr,
    mark: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let tcp = match mark {
        None => tokio::net::TcpStream::connect(addr).await?,
        Some(mark) => {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            #[cfg(target_os = "linux")]
            if let Err(e) = socket2::SockRef::from(&socket).set_mark(mark) {
                if e.kind() != std::io::ErrorKind::PermissionDenied {
                    return Err(e);
                }
                static WARNED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        mark,
                        "no permission to mark sockets (SO_MARK needs CAP_NET_ADMIN): the proxy's connections are unmarked"
                    );
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = mark;
            socket.connect(addr).await?
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Turns on TCP keepalive so a peer that vanished without a FIN or RST is detected (after about
/// 30 s idle + 3 × 10 s probes) instead of holding its tunnels open for ever.
pub(crate) fn set_keepalive(tcp: &tokio::net::TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot enable TCP keepalive");
    }
}

/// The transport under TLS: TCP with a read buffer. rustls pulls ciphertext 4 KiB at a time;
/// buffering 64 KiB per connection turns the four-plus reads per 16 KiB record into one
/// syscall on bulk transfers. Writes pass straight through (vectored).
pub type BufferedTcp = tokio::io::BufReader<tokio::net::TcpStream>;

pub(crate) const TLS_READ_BUFFER: usize = 64 * 1024;
