//! The HBONE limit flags every proxy takes (a flattened part of the common proxy flags).

use std::time::Duration;

use crate::duration::parse_duration;
use crate::proxy::ProxyConfig;

/// HBONE limits shared by every role, client and server side (`mesh_hbone::H2Settings`; the
/// defaults are its defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct HboneArgs {
    /// Largest header list a peer may send on HBONE (decoded bytes plus 32 per field, as
    /// HTTP/2 counts): larger is answered 431; 4 × larger, or a header block whose encoding
    /// exceeds it, closes the connection.
    #[arg(long, default_value_t = mesh_hbone::DEFAULT_MAX_HEADER_LIST_SIZE,
        value_parser = clap::value_parser!(u32).range(1024..=1 << 20), value_name = "BYTES")]
    pub hbone_max_header_list_size: u32,
    /// Most concurrent tunnels a peer may open on one HBONE connection.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub hbone_max_streams: u32,
    /// HTTP/2 flow-control window of one tunnel.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES",
        value_parser = clap::value_parser!(u32).range(65_535..=0x7fff_ffff))]
    pub hbone_stream_window: u32,
    /// HTTP/2 flow-control window of one HBONE connection: the most received bytes one peer
    /// can make the proxy hold.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES",
        value_parser = clap::value_parser!(u32).range(65_535..=0x7fff_ffff))]
    pub hbone_connection_window: u32,
    /// Time between HTTP/2 PINGs on every HBONE connection.
    #[arg(long, default_value = "30s", value_parser = positive_duration, value_name = "DURATION")]
    pub hbone_keepalive_interval: Duration,
    /// An HBONE connection that leaves a PING unanswered this long (or stops reading) is
    /// closed.
    #[arg(long, default_value = "10s", value_parser = positive_duration, value_name = "DURATION")]
    pub hbone_keepalive_timeout: Duration,
    /// An inbound HBONE connection without tunnels for this long is closed (GOAWAY); a tunnel
    /// whose peer keeps its flow-control window shut this long is reset.
    #[arg(long, default_value = "5m", value_parser = positive_duration, value_name = "DURATION")]
    pub hbone_idle_timeout: Duration,
    /// Limit for an inbound TLS handshake; connections that have not finished it are closed.
    #[arg(long, default_value = "10s", value_parser = positive_duration, value_name = "DURATION")]
    pub tls_handshake_timeout: Duration,
}

impl HboneArgs {
    pub(crate) fn apply(&self, cfg: &mut ProxyConfig) {
        let h2 = &mut cfg.pool.h2;
        h2.max_header_list_size = self.hbone_max_header_list_size;
        h2.max_concurrent_streams = self.hbone_max_streams;
        h2.stream_window = self.hbone_stream_window;
        h2.connection_window = self.hbone_connection_window;
        h2.keepalive_interval = self.hbone_keepalive_interval;
        h2.keepalive_timeout = self.hbone_keepalive_timeout;
        h2.idle_timeout = self.hbone_idle_timeout;
        cfg.handshake_timeout = self.tls_handshake_timeout;
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: must be more than zero")),
        d => Ok(d),
    }
}
