//! The crate's error type.

use std::net::SocketAddr;

/// Where an error came from: the side to blame, for logs, response flags and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The peer that sent us the request or bytes.
    Downstream,
    /// The peer we connected to.
    Upstream,
    /// This process.
    Internal,
}

/// HBONE client and server errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// TCP connect to the HBONE peer failed or timed out.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The HBONE address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed (including identity verification).
    #[error("tls handshake with {addr}: {source}")]
    Tls {
        /// The peer address.
        addr: SocketAddr,
        /// The cause; a rustls error is inside for verification failures.
        source: std::io::Error,
    },
    /// The TLS peer did not negotiate ALPN `h2`.
    #[error("{addr} did not negotiate ALPN h2")]
    Alpn {
        /// The peer address.
        addr: SocketAddr,
    },
    /// Building the TLS configuration failed.
    #[error("tls configuration: {0}")]
    Identity(#[from] mesh_identity::Error),
    /// HTTP/2 protocol or stream error.
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
    /// The HBONE peer answered the CONNECT with a non-200 status.
    #[error("CONNECT {authority} via {addr} answered {status}")]
    Status {
        /// The HBONE address.
        addr: SocketAddr,
        /// The requested authority.
        authority: String,
        /// The status received.
        status: http::StatusCode,
    },
    /// I/O on the plain side of a tunnel.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The pool or server is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// The peer broke an HTTP/2 abuse limit; the connection was closed with GOAWAY
    /// `ENHANCE_YOUR_CALM`.
    #[error("http/2 flood ({kind}) after {frames} frames: connection closed")]
    Flood {
        /// Which limit.
        kind: FloodKind,
        /// Frames received from the peer on the connection until then.
        frames: u64,
    },
    /// The peer did not answer a keepalive PING in time (or stopped reading).
    #[error("keepalive PING unanswered for {0:?}: connection closed")]
    PingTimeout(std::time::Duration),
    /// An [`H2Settings`](crate::H2Settings) value is unusable.
    #[error("invalid HTTP/2 settings: {0}")]
    InvalidSettings(SettingsError),
}

/// The HTTP/2 abuse limit a peer broke (see [`Error::Flood`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FloodKind {
    /// A header block (HEADERS plus CONTINUATION payloads) over the header list cap.
    HeaderBlock,
    /// Too many consecutive frames that carry nothing.
    EmptyFrames,
    /// Too many streams reset right after opening them (rapid reset).
    RapidReset,
}

impl std::fmt::Display for FloodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FloodKind::HeaderBlock => "header block over the cap",
            FloodKind::EmptyFrames => "empty frames",
            FloodKind::RapidReset => "rapid reset",
        })
    }
}

impl Error {
    /// Which side caused the error.
    pub fn side(&self) -> Side {
        match self {
            Error::Connect { .. }
            | Error::Tls { .. }
            | Error::Alpn { .. }
            | Error::Status { .. } => Side::Upstream,
            Error::H2(_) | Error::Io(_) | Error::Flood { .. } | Error::PingTimeout(_) => {
                Side::Downstream
            }
            Error::Identity(_) | Error::Shutdown | Error::InvalidSettings(_) => Side::Internal,
        }
    }

    /// Whether retrying the same request on a new connection may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Status { status, .. } => *status == http::StatusCode::SERVICE_UNAVAILABLE,
            Error::H2(e) => e.is_go_away() || e.is_io(),
            _ => false,
        }
    }
}

/// Which [`H2Settings`](crate::H2Settings) value is unusable, in [`Error::InvalidSettings`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// `stream_window` outside 65535..=2^31-1.
    #[error("stream window {0} is outside 65535..=2147483647")]
    StreamWindow(u32),
    /// `connection_window` outside 65535..=2^31-1.
    #[error("connection window {0} is outside 65535..=2147483647")]
    ConnectionWindow(u32),
    /// `max_frame_size` outside 16384..=16777215.
    #[error("max frame size {0} is outside 16384..=16777215")]
    MaxFrameSize(u32),
    /// `max_header_list_size` below 1024.
    #[error("max header list size {0} is below 1024")]
    MaxHeaderListSize(u32),
    /// `max_send_buffer_size` zero or over `u32::MAX`.
    #[error("max send buffer size {0} is outside 1..=4294967295")]
    MaxSendBufferSize(usize),
    /// A keepalive interval or timeout, or the idle timeout, that is zero (its name).
    #[error("{0} must be positive")]
    ZeroDuration(&'static str),
}
