//! The settings of one proxy ([`ProxyConfig`]) and what it reports of its listeners.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_hbone::PoolConfig;

use super::hygiene;

/// Settings of one node proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// What this proxy is: the listeners it serves and the layers it turns on
    /// (`crate::roles::{ztunnel, waypoint, sidecar}`).
    pub role: super::Role,
    /// SOCKS5 listen address; `None` disables SOCKS5.
    pub socks5_addr: Option<SocketAddr>,
    /// Limit for connecting to a destination (HBONE peer or local app).
    pub connect_timeout: Duration,
    /// Limit for an inbound TLS handshake.
    pub handshake_timeout: Duration,
    /// How long open connections may finish after shutdown begins.
    pub drain_timeout: Duration,
    /// HBONE client pool settings.
    pub pool: PoolConfig,
    /// Plaintext inbound listener (Istio's 15006): connections redirected here by capture
    /// rules are delivered to the local workload they were addressed to, unless its
    /// `PeerAuthentication` is STRICT. `None` disables it.
    pub plaintext_addr: Option<SocketAddr>,
    /// Captured outbound listener (Istio's 15001): connections that capture rules (iptables
    /// REDIRECT in the workload's network namespace) sent here go to their original
    /// destination through the mesh. `None` disables it.
    pub outbound_addr: Option<SocketAddr>,
    /// The IPv6 twin of `outbound_addr` (`[::1]:15001`, where ip6tables REDIRECT sends
    /// locally generated IPv6 connections).
    pub outbound_addr_v6: Option<SocketAddr>,
    /// `SO_MARK` set on every socket the proxy opens (Istio's 1337), so capture rules can
    /// leave the proxy's own traffic alone. `None`: unmarked.
    pub socket_mark: Option<u32>,
    /// The destination answers a CONNECT's 200 with its own `baggage` (Istio 1.29+
    /// ztunnel's `ENABLE_RESPONSE_BAGGAGE`, default on).
    pub response_baggage: bool,
    /// Admin endpoint (`/config_dump`, `/certs`, `/logging`); must be a loopback address.
    pub admin_addr: Option<SocketAddr>,
    /// Prometheus endpoint (`/metrics`, `/stats/prometheus`).
    pub metrics_addr: Option<SocketAddr>,
    /// Readiness endpoint (`/healthz/ready`).
    pub readiness_addr: Option<SocketAddr>,
    /// Where the JSON access log goes.
    pub access_log: mesh_telemetry::access::Sink,
    /// Cap on label sets per metric.
    pub max_metric_series: usize,
    /// Run-time log control for `/logging` (installed by the binary).
    pub log: Option<mesh_telemetry::logging::LogControl>,
    /// Refresh interval of remote JWKS (waypoint).
    pub jwks_refresh: Duration,
    /// Limits of the L7 (HTTP) servers.
    pub l7: hygiene::L7Limits,
    /// Most connections open at once over all data listeners; more are closed at accept
    /// (counted in `mesh_connections_refused_total`).
    pub max_connections: usize,
    /// Most connections open at once on one listener.
    pub max_connections_per_listener: usize,
    /// A CNI agent hands this node's pods over (ZDS, ztunnel `--zds-socket`): a local workload
    /// without a config `netns` is served in-pod once its pod is handed over
    /// ([`super::Proxy::serve_pods`]), and has no listeners until then.
    pub zds_pods: bool,
    /// The state will come from istiod (`--xds-address`, [`super::Proxy::follow_istiod`]):
    /// `/healthz/ready` answers 500 from its first answer until the first xDS state is
    /// applied (as with `zds_pods` until the CNI agent's snapshot), not only from the
    /// follower's start.
    pub follows_istiod: bool,
    /// The DNS proxy (`--dns-capture`, `--dns-port`); `None`: off.
    pub dns: Option<crate::dns::DnsSettings>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            role: super::Role::default(),
            socks5_addr: None,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            zds_pods: false,
            follows_istiod: false,
            pool: PoolConfig::default(),
            plaintext_addr: None,
            outbound_addr: None,
            outbound_addr_v6: None,
            socket_mark: None,
            response_baggage: true,
            admin_addr: None,
            metrics_addr: None,
            readiness_addr: None,
            access_log: mesh_telemetry::access::Sink::Off,
            max_metric_series: mesh_telemetry::metrics::DEFAULT_MAX_SERIES,
            log: None,
            jwks_refresh: Duration::from_secs(20 * 60),
            l7: hygiene::L7Limits::default(),
            max_connections: 50_000,
            max_connections_per_listener: 20_000,
            dns: None,
        }
    }
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Inbound HBONE for one local workload.
    Hbone,
    /// SOCKS5 outbound.
    Socks5,
    /// A service VIP:port.
    Service,
    /// Plaintext inbound (captured connections to local workloads).
    Plaintext,
    /// Captured outbound (connections of local workloads to anywhere).
    Outbound,
    /// A waypoint's HBONE listener.
    Waypoint,
    /// The DNS proxy (UDP and TCP; the TCP address).
    Dns,
}

/// A bound listener.
#[derive(Debug, Clone)]
pub struct Listening {
    /// Its purpose.
    pub kind: ListenerKind,
    /// Its address.
    pub addr: SocketAddr,
    /// What it serves (workload or service name).
    pub what: String,
}

impl super::ListenerAddrs {
    /// The node-wide listener addresses `cfg` configures.
    pub(crate) fn of(cfg: &ProxyConfig) -> super::ListenerAddrs {
        super::ListenerAddrs {
            socks5: cfg.socks5_addr,
            plaintext: cfg.plaintext_addr,
            outbound: cfg.outbound_addr,
            outbound_v6: cfg.outbound_addr_v6,
            dns: cfg.dns.as_ref().and_then(|d| d.node_addr),
            dns_in_pod: cfg.dns.as_ref().is_some_and(|d| d.capture),
        }
    }
}
