//! What every connection task of a proxy shares ([`Ctx`]): the current state, certificates,
//! pools, telemetry, the settings, the live-connection registry and the proxy's own addresses.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_hbone::Pool;
use mesh_identity::{CertManager, TrustBundle};

use super::live::LiveConns;
use super::role::Layers;
use super::settings::ProxyConfig;
use super::{jwks, observe, own, upstreams};
use crate::config::MeshState;

/// The shared context of a proxy's connection tasks.
pub(crate) struct Ctx {
    pub(crate) state: ArcSwap<MeshState>,
    pub(crate) node_name: String,
    pub(crate) certs: CertManager,
    pub(crate) bundle: TrustBundle,
    pub(crate) pool: Pool,
    pub(crate) cfg: ProxyConfig,
    pub(crate) live: LiveConns,
    /// Server TLS configuration per local workload address, rebuilt with each config: the
    /// certificate presented on an HBONE connection is chosen by the address it arrived on, so
    /// a workload that changes identity at the same address presents the new one.
    pub(crate) server_tls: ArcSwap<HashMap<std::net::IpAddr, Arc<rustls::ServerConfig>>>,
    pub(crate) telemetry: observe::Telemetry,
    /// Idle upstream HTTP connections (waypoint).
    pub(crate) upstreams: upstreams::Upstreams,
    /// Remote JWKS for JWT authentication (waypoint).
    pub(crate) jwks: jwks::JwksCache,
    /// The network namespaces of in-pod workloads, by path.
    pub(crate) netns: arc_swap::ArcSwap<HashMap<std::path::PathBuf, Arc<crate::sockets::Netns>>>,
    /// The pods the CNI agent handed over (ZDS), with their namespaces.
    pub(crate) pods: ArcSwap<super::pods::PodTable>,
    /// The DNS proxy (index of the current state, upstream relay), when on.
    pub(crate) dns: Option<Arc<crate::dns::DnsProxy>>,
    /// This proxy's own listening addresses: never a destination of the data path.
    pub(crate) own: own::OwnAddrs,
    /// Per-endpoint balancing state (first seen, requests in flight, latency) kept across
    /// config swaps; binds each new state's endpoint sets to this proxy.
    pub(crate) endpoints: crate::config::EndpointRegistry,
    /// The ext_authz gRPC channels (`action: CUSTOM`), shared by all streams.
    pub(crate) ext_authz: super::ext_authz::Clients,
    /// The global rate limit service channels, shared by all streams.
    pub(crate) rate_limit: super::ratelimit_client::Clients,
    /// Endpoint health (outlier detection) and connection-pool counters per destination
    /// host, shared by all connections and kept across config swaps.
    pub(crate) health: Arc<super::health::Health>,
    /// Retry budget counters per destination (host, subset), shared by all streams.
    pub(crate) retry_budgets: mesh_l7::resilience::budget::BudgetRegistry,
}

impl Ctx {
    /// Where connections made for `w` are created: its network namespace when it is served
    /// in-pod, else here, bound to its own address (so HBONE peers see the workload as the
    /// TCP source).
    pub(crate) fn socket_source(
        &self,
        w: &crate::config::Workload,
    ) -> Option<Arc<dyn mesh_hbone::SocketSource>> {
        let Some(ns) = w.netns.as_ref() else {
            let pods = self.pods.load();
            return match pods.placement(w) {
                super::pods::Placement::Host => Some(crate::sockets::SourceAddr::new(w.address)),
                super::pods::Placement::Pod(uid) => {
                    Some(pods.get(uid)?.netns.clone() as Arc<dyn mesh_hbone::SocketSource>)
                }
                // ZDS on and the workload's pod not served: nothing to connect from.
                super::pods::Placement::Wait => None,
            };
        };
        let netns = self.netns.load().get(ns)?.clone();
        Some(netns)
    }

    /// The workload at `ip` in `state` when it is one this proxy serves (a workload of its
    /// node): the one lookup of a local source or destination.
    pub(crate) fn local_workload(
        &self,
        state: &MeshState,
        ip: std::net::IpAddr,
    ) -> Option<Arc<crate::config::Workload>> {
        state
            .workload_by_ip(ip)
            .filter(|w| self.is_local(w))
            .cloned()
    }

    /// Whether `w` is a workload this proxy serves.
    pub(crate) fn is_local(&self, w: &crate::config::Workload) -> bool {
        w.node.as_deref() == Some(self.node_name.as_str())
    }

    /// The layers this proxy's role turns on.
    pub(crate) fn layers(&self) -> Layers {
        self.cfg.role.layers()
    }

    /// This node's HBONE port in the current state.
    pub(crate) fn hbone_port(&self, state: &MeshState) -> u16 {
        state
            .node(&self.node_name)
            .map_or(crate::config::DEFAULT_HBONE_PORT, |n| n.hbone_port)
    }
}
