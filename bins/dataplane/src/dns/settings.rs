//! The DNS proxy's settings, bounds and errors: a leaf module, shared by the listeners, the
//! relay and the command line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Istio's DNS proxy port.
pub const DNS_PORT: u16 = 15053;
/// Where the in-pod listener binds inside the pod's namespace (Istio ztunnel: localhost
/// 15053; istio-cni redirects the pod's port-53 traffic there).
pub const IN_POD_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT);

/// Errors of the DNS proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The `resolv.conf` could not be used.
    #[error("{}: {reason}", path.display())]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The bounds of every DNS listener, and of all of them together.
#[derive(Debug, Clone)]
pub struct DnsLimits {
    /// Largest query accepted (bytes); larger ones are dropped.
    pub max_query_bytes: usize,
    /// Most queries with the upstreams at once, per listener; one more gets SERVFAIL.
    pub max_forwarded: usize,
    /// Most open TCP clients per listener.
    pub max_tcp_connections: usize,
    /// Most queries with the upstreams at once, all listeners of the proxy together (one
    /// listener per pod: the per-listener cap alone grows with the pods).
    pub max_forwarded_total: usize,
    /// Most open TCP clients, all listeners of the proxy together.
    pub max_tcp_connections_total: usize,
    /// A TCP client is closed after this long without a complete query.
    pub tcp_idle_timeout: Duration,
}

impl Default for DnsLimits {
    fn default() -> Self {
        DnsLimits {
            max_query_bytes: 4096,
            max_forwarded: 128,
            max_tcp_connections: 256,
            max_forwarded_total: 1024,
            max_tcp_connections_total: 2048,
            // Istio ztunnel `DEFAULT_TCP_REQUEST_TIMEOUT`.
            tcp_idle_timeout: Duration::from_secs(5),
        }
    }
}

/// What the DNS proxy of a proxy process does (from [`DnsArgs`]).
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Open a listener in each in-pod workload's namespace on [`IN_POD_ADDR`].
    pub capture: bool,
    /// A listener on this address too (local mode: clients known by their address).
    pub node_addr: Option<SocketAddr>,
    /// The upstream resolvers (with `resolv_conf`: read from it when the proxy starts).
    pub upstreams: Vec<SocketAddr>,
    /// The `resolv.conf` whose `nameserver`s are the upstreams.
    pub resolv_conf: Option<PathBuf>,
    /// Time a forwarded query may take, all upstreams together.
    pub forward_timeout: Duration,
    /// The Kubernetes cluster domain.
    pub cluster_domain: String,
    /// Listener bounds.
    pub limits: DnsLimits,
}
