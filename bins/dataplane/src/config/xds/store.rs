//! The store's records and state: [`XdsStore`] and its settings ([`XdsSettings`], [`Local`]),
//! the records it keeps per resource, and the cache of the last build. A leaf module of `xds`:
//! converting (`convert`), applying (`apply`), building (`build`) and patching (`patch`) work
//! on these types.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_authz::Policy;
use mesh_identity::{SpiffeId, TrustDomain};

use super::super::parse::Resources;
use super::super::state::{FastMap, Node, ServicePort, Workload};

/// Which of the workload API's workloads are local to this proxy (what it serves), set by
/// the role that builds the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Local {
    /// The HBONE workloads whose `node` is [`XdsSettings::node`] (a node's proxy).
    #[default]
    NodeWorkloads,
    /// One workload `namespace/name`, served on [`XdsSettings::node`] whatever node istiod
    /// names (a sidecar's).
    OneWorkload {
        /// `namespace/name` of the workload.
        workload: String,
    },
    /// No workload; this proxy is the waypoint `namespace/name` (its `Gateway`, and the
    /// service named after it): the state always holds it, at
    /// [`XdsSettings::node_address`] with `identity`.
    Gateway {
        /// `namespace/name`.
        key: String,
        /// Its own identity (Istio: the service account named after the Gateway).
        identity: SpiffeId,
    },
}

/// What this proxy knows about itself and the mesh that the workload API does not carry.
#[derive(Debug, Clone)]
pub struct XdsSettings {
    /// Our node's name (Istio: the Kubernetes node, `NODE_NAME`): workloads with this `node`
    /// and HBONE are ours.
    pub node: String,
    /// Our own address (SOCKS5, plaintext inbound).
    pub node_address: IpAddr,
    /// `source_cluster` / `destination_cluster` in metrics.
    pub cluster_id: String,
    /// The root namespace (mesh-wide policies).
    pub root_namespace: String,
    /// The trust domain of workloads that name none.
    pub trust_domain: TrustDomain,
    /// Whether our node binds a listener on every service VIP:port (the local file's
    /// `serviceListeners`, for hosts without traffic capture).
    pub service_listeners: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GatewayRef {
    Address(IpAddr, u16),
    Hostname(String, u16),
    /// An address on another network (reached only through a network gateway, which is not
    /// supported): never resolved, so traffic that must go through it fails closed.
    OtherNetwork(String, IpAddr, u16),
}

#[derive(Debug)]
pub(super) struct XWorkload {
    pub(super) healthy: bool,
    pub(super) waypoint: Option<GatewayRef>,
    /// `namespace/hostname` → (service port, target port).
    pub(super) services: Vec<(String, Vec<(u16, u16)>)>,
    pub(super) policies: Vec<String>,
    /// Its network when not ours: kept, but not reachable (no network gateways).
    pub(super) other_network: Option<String>,
    /// `namespace/name`.
    pub(super) key: String,
    /// The state's workload, built once when the resource arrives (without its waypoint,
    /// which is resolved at build time): a rebuild shares it instead of re-creating it.
    pub(super) arc: Arc<Workload>,
}

#[derive(Debug)]
pub(super) struct XService {
    /// `namespace/hostname`: how workloads name it.
    pub(super) key: String,
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) hostname: String,
    pub(super) vips: Vec<IpAddr>,
    /// (service port, target port or 0, protocol).
    pub(super) ports: Vec<(u16, u16, crate::config::Protocol)>,
    pub(super) waypoint: Option<GatewayRef>,
    /// `weighted_waypoints`: (waypoint, weight), checked by `weighted::convert`.
    pub(super) weighted: Vec<(GatewayRef, u32)>,
    /// Routing preference (`load_balancing`).
    pub(super) load_balancing: Option<mesh_l7::balance::locality::Placement>,
    /// Network, CIDR addresses, visibility, `canonical` (Istio 1.31 fields).
    pub(super) scope: ServiceScope,
}

/// What a service's Istio 1.31 fields say beyond its VIPs on our network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ServiceScope {
    /// Addresses on other networks (kept, never indexed): (network, address/prefix).
    pub(super) other_networks: Vec<(String, ipnet::IpNet)>,
    /// CIDR addresses on our network (`length` shorter than the host length), truncated to
    /// their network address.
    pub(super) cidrs: Vec<ipnet::IpNet>,
    /// `visibility`.
    pub(super) visibility: super::super::Visibility,
    /// `canonical`.
    pub(super) canonical: bool,
    /// `ingress_use_waypoint`: accepted and kept. Istio's ztunnel does not read it either
    /// (istiod turns it into the ingress gateway's config); this data plane has no ingress
    /// gateway role, and its ztunnels already admit traffic for a workload behind a waypoint
    /// only from that waypoint, which is what the field asks of ingress traffic.
    pub(super) ingress_use_waypoint: bool,
}

/// The accepted workload-API resources, by resource name.
#[derive(Debug)]
pub struct XdsStore {
    pub(super) settings: XdsSettings,
    // Sorted by resource name: a build walks them in a stable order without sorting.
    pub(super) workloads: BTreeMap<String, XWorkload>,
    pub(super) services: BTreeMap<String, XService>,
    pub(super) policies: BTreeMap<String, Policy>,
    /// Authorizations that failed conversion (held in `policies` as DENY-all), with why.
    pub(super) failed: BTreeMap<String, String>,
    /// Service ports built by the last build, reused while nothing they depend on changed.
    pub(super) cache: std::sync::Mutex<Cache>,
    pub(super) local: Local,
    /// The L7 kinds of the local file (waypoint, sidecar); `None` for a ztunnel.
    pub(super) l7: Option<Arc<Resources>>,
    /// Our network (Istio's `NETWORK`; empty: the default network).
    pub(super) network: String,
}

/// What the last build produced, for the next build to patch instead of rebuilding.
#[derive(Debug)]
pub(super) struct Built {
    /// Two workloads shared an address: the next build is a full one.
    pub(super) shared_address: bool,
    pub(super) by_ip: FastMap<IpAddr, Arc<Workload>>,
    pub(super) by_vip: FastMap<SocketAddr, Arc<ServicePort>>,
    pub(super) by_host: HashMap<String, HashMap<u16, Arc<ServicePort>>>,
    pub(super) node: Arc<Node>,
    pub(super) authz: mesh_authz::PolicyIndex,
    pub(super) policies: Arc<Vec<Policy>>,
    /// The build had client-dependent lookups or other-network workloads: the next build is
    /// a full one.
    pub(super) net_scoped: bool,
}

/// A workload as the last build saw it.
#[derive(Debug)]
pub(super) struct Old {
    pub(super) arc: Arc<Workload>,
    pub(super) key: String,
    pub(super) services: Vec<String>,
}

/// The service ports of each service (by resource name) as last built, and the services
/// (`namespace/hostname`) whose ports must be rebuilt: the service changed, or one of its
/// workloads did.
#[derive(Debug, Default)]
pub(super) struct Cache {
    pub(super) ports: HashMap<String, Vec<Arc<ServicePort>>>,
    pub(super) dirty: HashSet<String>,
    pub(super) built: Option<Built>,
    /// Workloads (by resource name) changed since the last build, with what that build saw
    /// (`None`: they were not there).
    pub(super) changed: BTreeMap<String, Option<Old>>,
    /// Services or policies changed since the last build: the next build is a full one.
    pub(super) full: bool,
    /// Builds that patched the previous one (for tests and logs).
    pub(super) patched: u64,
    /// What the last full build found wrong in the local file's references (logged when it
    /// changes).
    pub(super) issues: String,
}

impl XdsStore {
    /// An empty store.
    pub fn new(settings: XdsSettings) -> XdsStore {
        XdsStore {
            settings,
            workloads: BTreeMap::new(),
            services: BTreeMap::new(),
            policies: BTreeMap::new(),
            failed: BTreeMap::new(),
            cache: std::sync::Mutex::new(Cache::default()),
            local: Local::NodeWorkloads,
            l7: None,
            network: String::new(),
        }
    }

    /// The same store on network `network` (Istio's `NETWORK`; set before any resource is
    /// applied): workloads and addresses of other networks are kept but not reachable.
    pub fn on_network(mut self, network: impl Into<String>) -> XdsStore {
        self.network = network.into();
        self
    }

    /// The same store with other local workloads (set before any resource is applied).
    pub fn serving(mut self, local: Local) -> XdsStore {
        self.local = local;
        self
    }

    /// Replaces the L7 kinds of the local file (checked by
    /// [`load_l7_file`](crate::config::load_l7_file)); the next build is a full one, merging them
    /// with istiod's resources.
    pub fn set_l7(&mut self, resources: Arc<Resources>) {
        self.l7 = Some(resources);
        self.lock_cache().full = true;
    }

    /// Number of (workloads, services, policies) held.
    pub fn len(&self) -> (usize, usize, usize) {
        (
            self.workloads.len(),
            self.services.len(),
            self.policies.len(),
        )
    }

    pub(super) fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks services (`namespace/hostname`) for rebuilding.
    pub(super) fn touch(&self, keys: impl IntoIterator<Item = String>) {
        self.lock_cache().dirty.extend(keys);
    }
}
