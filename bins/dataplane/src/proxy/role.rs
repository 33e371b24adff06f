//! The composition a proxy runs as ([`Role`]): which listeners it serves for a mesh state
//! ([`Serves`]) and which layers its data paths turn on ([`Layers`]). The core asks "is this
//! layer on", never "which proxy am I"; `crate::roles` composes the ztunnel, the waypoint and
//! the sidecar from these parts.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::config::MeshState;

/// What one proxy process is: the listeners it serves and the layers it turns on.
#[derive(Clone)]
pub struct Role {
    name: &'static str,
    serves: Arc<dyn Serves>,
    layers: Layers,
}

impl Role {
    /// A role from its parts (`crate::roles` builds the standard ones).
    pub(crate) fn new(name: &'static str, serves: Arc<dyn Serves>, layers: Layers) -> Role {
        Role {
            name,
            serves,
            layers,
        }
    }

    /// `ztunnel`, `waypoint` or `sidecar`, for logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The name this proxy serves as in the mesh state: a `Node` (`node-a`,
    /// `sidecar/ns/name`) or a waypoint `Gateway` (`ns/name`).
    pub fn serves_as(&self) -> &str {
        self.serves.key()
    }

    /// The layers turned on.
    pub fn layers(&self) -> Layers {
        self.layers
    }

    pub(crate) fn serves(&self) -> &dyn Serves {
        &*self.serves
    }
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Role")
            .field("name", &self.name)
            .field("serves", &self.serves.key())
            .field("layers", &self.layers)
            .finish()
    }
}

/// Layers the data paths turn on. Each is written once in the core and used by every role
/// that turns it on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layers {
    /// HTTP on captured outbound connections to services without a waypoint is proxied per
    /// request (client-side L7: routing, retries, the source's metrics).
    pub outbound_http: bool,
    /// HBONE or captured plaintext to a local workload's declared HTTP port is served per
    /// request when the workload has policies with HTTP fields or a `RequestAuthentication`
    /// (server-side L7), and JWKS of those are kept fresh.
    pub inbound_http: bool,
    /// Captured inbound arrives by TPROXY: the plaintext listener is transparent, and
    /// connections to the app come from the client's own address.
    pub transparent_inbound: bool,
}

/// Which listeners a role opens for a mesh state, and what it asks of the state.
pub(crate) trait Serves: Send + Sync {
    /// The `Node` or `Gateway` key this proxy serves as.
    fn key(&self) -> &str;
    /// Fails when `state` does not define what this proxy serves.
    fn check(&self, state: &MeshState) -> Result<(), Error>;
    /// The listeners and identities `state` asks of this proxy, with its local workloads
    /// placed as `pods` says (in-pod for the ZDS pods).
    fn plan(
        &self,
        addrs: &ListenerAddrs,
        state: &MeshState,
        pods: &super::pods::PodTable,
    ) -> Result<Plan, Error>;
    /// The remote JWKS (and fetch timeouts) of the `RequestAuthentication`s this proxy
    /// enforces in `state`.
    fn jwks(
        &self,
        layers: Layers,
        state: &MeshState,
    ) -> Vec<(mesh_authz::jwt::KeySource, Duration)>;
}

/// A listener opened inside a workload's network namespace (in-pod mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum InPodKind {
    Hbone,
    Outbound,
    Plaintext,
    /// The DNS proxy (UDP and TCP).
    Dns,
}

/// The network namespace of an in-pod workload: a path (the Node's `netns` map) or a pod the
/// CNI agent handed over (ZDS), by uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum NetnsKey {
    Path(std::path::PathBuf),
    Pod(String),
}

/// One listener a [`Plan`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ListenerKey {
    InPod(NetnsKey, InPodKind, SocketAddr),
    Hbone(SocketAddr),
    Socks5(SocketAddr),
    Service(SocketAddr),
    Plaintext(SocketAddr),
    Outbound(SocketAddr),
    Waypoint(SocketAddr),
    /// The DNS proxy on the node address (UDP and TCP).
    Dns(SocketAddr),
}

/// What a config asks of this proxy: listeners, and the identity presented on each local
/// address.
pub(crate) struct Plan {
    /// The listeners, each with what it serves (for logs and `Listening::what`).
    pub(crate) desired: Vec<(ListenerKey, String)>,
    /// The identity presented on each local address.
    pub(crate) identities: Vec<(std::net::IpAddr, mesh_identity::SpiffeId)>,
}

/// The configured node-wide listener addresses a plan includes (from `ProxyConfig`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListenerAddrs {
    pub(crate) socks5: Option<SocketAddr>,
    pub(crate) plaintext: Option<SocketAddr>,
    pub(crate) outbound: Option<SocketAddr>,
    pub(crate) outbound_v6: Option<SocketAddr>,
    /// The node's DNS proxy address (`--dns-port`).
    pub(crate) dns: Option<SocketAddr>,
    /// A DNS proxy in each in-pod workload's namespace (`--dns-capture`).
    pub(crate) dns_in_pod: bool,
}
