//! HBONE: HTTP/2 CONNECT tunnels over mutual TLS, as Istio's ztunnel speaks them.
//!
//! - [`Pool`]: the client. Pools connections per (source identity, destination identity,
//!   HBONE address), at most 100 tunnels each, closing idle ones; verifies the server's SPIFFE
//!   id exactly; sends `CONNECT <ip:port>` with `Forwarded`, `baggage` and `traceparent`.
//! - [`accept_tls`] + [`serve_connection`]: the server. Answers 400 itself for malformed
//!   requests and hands each CONNECT to the caller to accept (200) or refuse (401, 503, …).
//! - [`copy_bidirectional`]: the byte pump between a tunnel and a plain stream, half-close
//!   aware, with connection-owned buffers (no per-chunk allocation) and none while idle (the
//!   plain side's read half implements [`PlainRead`]: TCP and Unix streams and their halves).
//! - [`H2Settings`]: the HTTP/2 limits both sides apply (header bytes, streams, resets, empty
//!   frames, windows, keepalive, idle), enforced by h2 and by a frame guard below it.
//!
//! See `examples/tunnel.rs` for a client and server in one process.

#![warn(missing_docs)]

mod bufio;
mod error;
mod guard;
pub mod headers;
mod keepalive;
mod pool;
pub mod proxy_protocol;
mod server;
mod settings;
mod socket;
mod stream;

pub use bufio::BufferedTcp;
pub use error::{Error, FloodKind, SettingsError, Side};
pub use pool::{ConnectRequest, Pool, PoolConfig};
pub use server::{ConnInfo, InboundConnect, accept_tls, serve_connection};
pub use settings::{DEFAULT_MAX_HEADER_LIST_SIZE, H2Settings};
pub use socket::{SocketSource, connect_tcp, set_mark};
pub use stream::{ByteCounter, CopyStats, H2Stream, PlainRead, copy_bidirectional};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;
