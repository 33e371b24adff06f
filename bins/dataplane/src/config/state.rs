//! The compiled, immutable mesh state: what the data path reads.
//!
//! Built once per config load and published with one `ArcSwap` store; lookups are hash-map
//! indexes built here (by workload IP, by service VIP:port, by hostname:port), never scans.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_identity::TrustDomain;

pub(crate) use super::endpoints::endpoint_sets;
pub use super::endpoints::{Endpoint, EndpointSet, ServicePort};
pub(crate) use super::workload::peer_labels;
pub use super::workload::{Node, Service, Waypoint, WaypointFor, Workload};

/// Indexes keyed by addresses (looked up per connection): hashed with foldhash, a fast
/// hasher; the keys come from the config, not from peers.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// For each workload (`namespace/name`) with waypoints, the waypoints it accepts traffic from:
/// its own and its services'.
pub(crate) fn waypoints_of(
    workloads: &[Arc<Workload>],
    service_ports: &[Arc<ServicePort>],
) -> HashMap<String, Vec<Arc<Waypoint>>> {
    let mut out: HashMap<String, Vec<Arc<Waypoint>>> = HashMap::new();
    for w in workloads {
        if let Some(wp) = &w.waypoint {
            out.entry(w.key()).or_default().push(wp.clone());
        }
    }
    for sp in service_ports {
        // The single waypoint and every weighted one (weight 0 included).
        for wp in sp.service.all_waypoints() {
            for e in &sp.endpoints {
                let list = out.entry(e.workload.key()).or_default();
                if !list.iter().any(|x| Arc::ptr_eq(x, wp)) {
                    list.push(wp.clone());
                }
            }
        }
    }
    out
}

/// The whole compiled mesh.
#[derive(Debug)]
pub struct MeshState {
    /// Trust domain of workload identities.
    pub trust_domain: TrustDomain,
    /// Root namespace (mesh-wide policies).
    pub root_namespace: String,
    /// Cluster name reported in metrics (`source_cluster`, `destination_cluster`).
    pub cluster_id: String,
    /// Path normalization before L7 policy and routing.
    pub path_normalization: mesh_authz::http::PathNormalization,
    /// The ext_authz providers `CUSTOM` policies name (`MeshConfig.extensionProviders`).
    pub ext_authz: Arc<super::ext_authz::ExtAuthzProviders>,
    /// `EnvoyFilter` rate limits by proxy.
    pub rate_limits: Arc<super::ratelimits::RateLimits>,
    /// Waypoint policies (`targetRefs`) by target: `Service/<ns>/<name>` or
    /// `Gateway/<ns>/<name>`.
    pub waypoint_policies: HashMap<String, Vec<Arc<mesh_authz::Policy>>>,
    /// Waypoint JWT authentication (`RequestAuthentication` with `targetRefs`), keyed like
    /// `waypoint_policies`.
    pub waypoint_authn: HashMap<String, Arc<mesh_authz::jwt::Authenticator>>,
    /// `RequestAuthentication`s, as validated.
    pub request_authns: Vec<mesh_authz::jwt::RequestAuthentication>,
    /// JWT authentication at sidecars: by workload (`namespace/name`), the rules of the
    /// selector / namespace / mesh `RequestAuthentication`s that apply to it.
    pub sidecar_authn: HashMap<String, Arc<mesh_authz::jwt::Authenticator>>,
    /// The declared protocol of a workload's port (`namespace/name`, target port), from the
    /// service ports it is an endpoint of.
    pub port_protocols: HashMap<(String, u16), super::Protocol>,
    /// HTTP route tables (`VirtualService`) by the service host they apply to.
    pub routes: HashMap<String, Arc<mesh_l7::RouteTable>>,
    /// The mesh's default retry policy (MeshConfig `defaultHttpRetryPolicy`, else Istio's).
    pub default_retry: Option<Arc<mesh_l7::resilience::retry::RetryPolicy>>,
    /// `DestinationRule` retry budgets by host and subset.
    pub retry_budgets: super::retry::RetryBudgets,
    /// Endpoint sets by (host, service port, subset name or ""), with their balancing.
    pub endpoint_sets: HashMap<(String, u16, String), Arc<EndpointSet>>,
    /// `DestinationRule` outlier detection and connection pools by host (lower case), only
    /// for hosts that set either.
    pub host_policies: HashMap<String, Arc<mesh_l7::resilience::pool::HostPolicy>>,
    /// Waypoints by `namespace/name`.
    pub waypoints: HashMap<String, Arc<Waypoint>>,
    /// For each workload (`namespace/name`) with waypoints (its own, its services'), the only
    /// sources its ztunnel accepts.
    pub waypoints_of: HashMap<String, Vec<Arc<Waypoint>>>,
    /// Authorization policies, as validated.
    pub policies: Arc<Vec<mesh_authz::Policy>>,
    /// The policies compiled per workload (`namespace/name`).
    pub authz: mesh_authz::PolicyIndex,
    /// xDS `Authorization`s that could not be converted, by resource name, with the reason:
    /// each is enforced as a DENY of everything it applies to until a valid version arrives.
    pub failed_policies: BTreeMap<String, String>,
    /// `PeerAuthentication`s, as validated.
    pub peer_authn: Vec<mesh_authz::peer::PeerAuthentication>,
    /// Effective mTLS modes per workload (`namespace/name`).
    pub mtls: mesh_authz::peer::PeerAuthnIndex,
    /// Nodes by name.
    pub nodes: HashMap<String, Arc<Node>>,
    /// All workloads, in config order.
    pub workloads: Vec<Arc<Workload>>,
    /// All service ports, in config order.
    pub service_ports: Vec<Arc<ServicePort>>,
    pub(crate) by_ip: FastMap<IpAddr, Arc<Workload>>,
    pub(crate) by_vip: FastMap<SocketAddr, Arc<ServicePort>>,
    pub(crate) by_host: HashMap<String, HashMap<u16, Arc<ServicePort>>>,
    /// Client-dependent lookups (visibility, `canonical`, CIDR addresses, other networks).
    pub(crate) net: Arc<super::netindex::NetIndex>,
}

impl MeshState {
    /// A mesh with nothing in it (what a proxy serves before its first config).
    pub fn empty() -> MeshState {
        MeshState {
            trust_domain: super::default_trust_domain(),
            root_namespace: super::DEFAULT_ROOT_NAMESPACE.to_owned(),
            cluster_id: super::DEFAULT_CLUSTER_ID.to_owned(),
            path_normalization: mesh_authz::http::PathNormalization::default(),
            ext_authz: Arc::default(),
            rate_limits: Arc::default(),
            waypoint_policies: HashMap::new(),
            waypoint_authn: HashMap::new(),
            request_authns: Vec::new(),
            sidecar_authn: HashMap::new(),
            port_protocols: HashMap::new(),
            routes: HashMap::new(),
            default_retry: super::retry::istio_default(),
            retry_budgets: HashMap::new(),
            endpoint_sets: HashMap::new(),
            host_policies: HashMap::new(),
            waypoints: HashMap::new(),
            waypoints_of: HashMap::new(),
            policies: Arc::new(Vec::new()),
            authz: mesh_authz::PolicyIndex::default(),
            failed_policies: BTreeMap::new(),
            peer_authn: Vec::new(),
            mtls: mesh_authz::peer::PeerAuthnIndex::default(),
            nodes: HashMap::new(),
            workloads: Vec::new(),
            service_ports: Vec::new(),
            by_ip: FastMap::default(),
            by_vip: FastMap::default(),
            by_host: HashMap::new(),
            net: Arc::new(super::netindex::NetIndex::empty()),
        }
    }

    /// The workload at `ip`.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    /// The service port at `vip:port`.
    pub fn service_by_vip(&self, addr: SocketAddr) -> Option<&Arc<ServicePort>> {
        self.by_vip.get(&addr)
    }

    /// The service port for `host:port` (host names as in `ServiceEntry.hosts`).
    pub fn service_by_host(&self, host: &str, port: u16) -> Option<&Arc<ServicePort>> {
        // Host names are case-insensitive; the index holds lower case.
        let ports = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_host.get(&host.to_ascii_lowercase())
        } else {
            self.by_host.get(host)
        };
        ports?.get(&port)
    }

    /// Every VIP:port with its service port (for service listeners).
    pub fn vips(&self) -> impl Iterator<Item = (&SocketAddr, &Arc<ServicePort>)> {
        self.by_vip.iter()
    }

    /// The endpoint set of `host:port`, or of its `subset`.
    pub fn endpoint_set(
        &self,
        host: &str,
        port: u16,
        subset: Option<&str>,
    ) -> Option<&Arc<EndpointSet>> {
        self.endpoint_sets
            .get(&(host.to_owned(), port, subset.unwrap_or_default().to_owned()))
    }

    /// The service whose host name is `host` (any port).
    pub fn service_by_hostname(&self, host: &str) -> Option<&Arc<Service>> {
        let ports = self.by_host.get(host)?;
        ports.values().next().map(|sp| &sp.service)
    }

    /// The node `name`.
    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.get(name)
    }
}
