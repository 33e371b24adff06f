//! Istio's workload API (Delta ADS from istiod) → the same [`MeshState`] the local file
//! produces, so both sources feed one validated, atomically swapped state.
//!
//! Each resource is validated on its own when it arrives ([`XdsStore::apply_addresses`],
//! [`XdsStore::apply_authorizations`]): a bad one is rejected by name with a reason (the xDS
//! client NACKs it) and the rest of the update applies. [`XdsStore::build`] then assembles the
//! whole state from the accepted resources; references between resources (a workload's
//! services, waypoint and policies) are resolved there and never fail, since the control
//! plane may send them in any order.
//!
//! Mapping (Istio's ztunnel semantics):
//! - `Workload` → a workload: its first address, `trust_domain`/`namespace`/`service_account`
//!   identity, `canonical_name`/`canonical_revision` for telemetry. With `tunnel_protocol:
//!   HBONE` it is in the mesh: on node `node`, reached by HBONE on `<address>:15008`; without,
//!   it is reached in plaintext. `UNHEALTHY` workloads are not service endpoints.
//! - `Service` → a service: `hostname`, its VIPs, ports with their endpoints from each
//!   workload's `services["<namespace>/<hostname>"]` (per-workload target ports).
//! - `waypoint` (a VIP or a `namespace/hostname`) → the waypoint service's first endpoint.
//! - `Authorization` → a policy: `GLOBAL`, `NAMESPACE`, or `WORKLOAD_SELECTOR` (applied where
//!   a workload lists it in `authorization_policies`); rules ORed, clauses ANDed, a clause's
//!   matches ORed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_authz::{Condition, Match, Policy, Source, StringMatch};
use mesh_identity::{SpiffeId, TrustDomain};
use mesh_xds::Rejection;
use mesh_xds::pb::security as sec;
use mesh_xds::pb::workload as wl;

use super::state::{self, Endpoint, MeshState, Node, Service, ServicePort, Waypoint, WaypointFor};
use super::{DEFAULT_HBONE_PORT, Workload};

use super::state::FastMap;

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
enum GatewayRef {
    Address(IpAddr, u16),
    Hostname(String, u16),
}

#[derive(Debug)]
struct XWorkload {
    healthy: bool,
    waypoint: Option<GatewayRef>,
    /// `namespace/hostname` → (service port, target port).
    services: Vec<(String, Vec<(u16, u16)>)>,
    policies: Vec<String>,
    /// `namespace/name`.
    key: String,
    /// The state's workload, built once when the resource arrives (without its waypoint,
    /// which is resolved at build time): a rebuild shares it instead of re-creating it.
    arc: Arc<Workload>,
}

#[derive(Debug)]
struct XService {
    /// `namespace/hostname`: how workloads name it.
    key: String,
    name: String,
    namespace: String,
    hostname: String,
    vips: Vec<IpAddr>,
    /// (service port, target port or 0, protocol).
    ports: Vec<(u16, u16, String)>,
    waypoint: Option<GatewayRef>,
}

/// The accepted workload-API resources, by resource name.
#[derive(Debug)]
pub struct XdsStore {
    settings: XdsSettings,
    // Sorted by resource name: a build walks them in a stable order without sorting.
    workloads: BTreeMap<String, XWorkload>,
    services: BTreeMap<String, XService>,
    policies: BTreeMap<String, Policy>,
    /// Authorizations that failed conversion (held in `policies` as DENY-all), with why.
    failed: BTreeMap<String, String>,
    /// Service ports built by the last build, reused while nothing they depend on changed.
    cache: std::sync::Mutex<Cache>,
}

/// What the last build produced, for the next build to patch instead of rebuilding.
#[derive(Debug)]
struct Built {
    /// Two workloads shared an address: the next build is a full one.
    shared_address: bool,
    by_ip: FastMap<IpAddr, Arc<Workload>>,
    by_vip: FastMap<SocketAddr, Arc<ServicePort>>,
    by_host: HashMap<String, HashMap<u16, Arc<ServicePort>>>,
    node: Arc<Node>,
    authz: mesh_authz::PolicyIndex,
    policies: Arc<Vec<Policy>>,
}

/// A workload as the last build saw it.
#[derive(Debug)]
struct Old {
    arc: Arc<Workload>,
    key: String,
    services: Vec<String>,
}

/// The service ports of each service (by resource name) as last built, and the services
/// (`namespace/hostname`) whose ports must be rebuilt: the service changed, or one of its
/// workloads did.
#[derive(Debug, Default)]
struct Cache {
    ports: HashMap<String, Vec<Arc<ServicePort>>>,
    dirty: HashSet<String>,
    built: Option<Built>,
    /// Workloads (by resource name) changed since the last build, with what that build saw
    /// (`None`: they were not there).
    changed: BTreeMap<String, Option<Old>>,
    /// Services or policies changed since the last build: the next build is a full one.
    full: bool,
    /// Builds that patched the previous one (for tests and logs).
    patched: u64,
}

fn reject(name: &str, reason: impl Into<String>) -> Rejection {
    Rejection {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn ip_of(bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| "bad IPv4")?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| "bad IPv6")?,
        )),
        n => Err(format!("an address of {n} bytes is neither IPv4 nor IPv6")),
    }
}

fn port_of(field: &str, n: u32) -> Result<u16, String> {
    u16::try_from(n).map_err(|_| format!("{field}: {n} is not a port"))
}

fn gateway(field: &str, g: &wl::GatewayAddress) -> Result<GatewayRef, String> {
    let port = match g.hbone_mtls_port {
        0 => DEFAULT_HBONE_PORT,
        p => port_of(&format!("{field}.hbone_mtls_port"), p)?,
    };
    match &g.destination {
        Some(wl::gateway_address::Destination::Address(a)) => {
            if !a.network.is_empty() {
                return Err(format!(
                    "unsupported Istio field `{field}.address.network`: multiple networks are not supported yet"
                ));
            }
            Ok(GatewayRef::Address(
                ip_of(&a.address).map_err(|e| format!("{field}.address: {e}"))?,
                port,
            ))
        }
        Some(wl::gateway_address::Destination::Hostname(h)) => Ok(GatewayRef::Hostname(
            format!("{}/{}", h.namespace, h.hostname.to_ascii_lowercase()),
            port,
        )),
        None => Err(format!("{field}: neither address nor hostname")),
    }
}

fn protocol(p: i32) -> String {
    match wl::AppProtocol::try_from(p) {
        Ok(wl::AppProtocol::Http11) => "HTTP",
        Ok(wl::AppProtocol::Http2) => "HTTP2",
        Ok(wl::AppProtocol::Grpc) => "GRPC",
        Ok(wl::AppProtocol::Tcp) => "TCP",
        Ok(wl::AppProtocol::Tls) => "TLS",
        _ => "AUTO",
    }
    .to_owned()
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
        }
    }

    /// Number of (workloads, services, policies) held.
    pub fn len(&self) -> (usize, usize, usize) {
        (
            self.workloads.len(),
            self.services.len(),
            self.policies.len(),
        )
    }

    /// Applies an update of `istio.workload.Address` resources; returns the rejected ones
    /// (left out; a rejected update of an existing resource keeps the previous version).
    pub fn apply_addresses(
        &mut self,
        upserts: Vec<(String, wl::Address)>,
        removes: Vec<String>,
    ) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        for name in removes {
            self.forget(&name);
        }
        for (name, address) in upserts {
            match address.r#type {
                Some(wl::address::Type::Workload(w)) => match self.workload(&w) {
                    Ok(x) => {
                        self.forget(&name);
                        self.touch(x.services.iter().map(|(k, _)| k.clone()));
                        self.lock_cache()
                            .changed
                            .entry(name.clone())
                            .or_insert(None);
                        self.workloads.insert(name, x);
                    }
                    Err(e) => rejected.push(reject(&name, format!("Workload: {e}"))),
                },
                Some(wl::address::Type::Service(s)) => match service(&s) {
                    Ok(x) => {
                        self.forget(&name);
                        self.touch([x.key.clone()]);
                        self.lock_cache().full = true;
                        self.services.insert(name, x);
                    }
                    Err(e) => rejected.push(reject(&name, format!("Service: {e}"))),
                },
                None => rejected.push(reject(
                    &name,
                    "Address holds neither a workload nor a service",
                )),
            }
        }
        rejected
    }

    /// Removes resource `name` (a workload or a service), marking the services it touched.
    fn forget(&mut self, name: &str) {
        if let Some(old) = self.workloads.remove(name) {
            let services: Vec<String> = old.services.into_iter().map(|(k, _)| k).collect();
            self.touch(services.iter().cloned());
            self.lock_cache()
                .changed
                .entry(name.to_owned())
                .or_insert(Some(Old {
                    arc: old.arc,
                    key: old.key,
                    services,
                }));
        }
        if let Some(old) = self.services.remove(name) {
            self.touch([old.key]);
            self.lock_cache().full = true;
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks services (`namespace/hostname`) for rebuilding.
    fn touch(&self, keys: impl IntoIterator<Item = String>) {
        self.lock_cache().dirty.extend(keys);
    }

    /// Applies an update of `istio.security.Authorization` resources; returns the rejected
    /// ones.
    pub fn apply_authorizations(
        &mut self,
        upserts: Vec<(String, sec::Authorization)>,
        removes: Vec<String>,
    ) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        self.lock_cache().full = true;
        for name in removes {
            self.policies.remove(&name);
            self.failed.remove(&name);
        }
        for (name, a) in upserts {
            match self.authorization(&a) {
                Ok(p) => {
                    self.failed.remove(&name);
                    self.policies.insert(name, p);
                }
                // Istio never enforces a dry-run policy: unsupported here, and not enforced.
                Err(e) if a.dry_run => {
                    self.policies.remove(&name);
                    self.failed.remove(&name);
                    rejected.push(reject(&name, format!("Authorization: {e}")));
                }
                Err(e) => {
                    // Fail closed until a valid version arrives (see `fail_closed`).
                    let reason = format!("Authorization: {e}");
                    tracing::warn!(policy = %name, %reason, "unconvertible policy: denying what it applies to");
                    self.policies
                        .insert(name.clone(), super::fail_closed::deny_all(&name, &a));
                    self.failed.insert(name.clone(), reason.clone());
                    rejected.push(reject(&name, reason));
                }
            }
        }
        rejected
    }

    fn workload(&self, w: &wl::Workload) -> Result<XWorkload, String> {
        if w.name.is_empty() || w.namespace.is_empty() {
            return Err("name and namespace are required".into());
        }
        if !w.network.is_empty() {
            return Err(
                "unsupported Istio field `network`: multiple networks are not supported yet".into(),
            );
        }
        if w.network_gateway.is_some() {
            return Err("unsupported Istio field `network_gateway`: multiple networks are not supported yet".into());
        }
        if w.application_tunnel
            .as_ref()
            .is_some_and(|t| t.protocol != wl::application_tunnel::Protocol::None as i32)
        {
            return Err(
                "unsupported Istio field `application_tunnel`: PROXY tunnels are not supported"
                    .into(),
            );
        }
        if !w.extensions.is_empty() {
            return Err("unsupported Istio field `extensions`".into());
        }
        let hbone = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
            Ok(wl::TunnelProtocol::Hbone) => true,
            Ok(wl::TunnelProtocol::None) => false,
            _ => {
                return Err(format!(
                    "unsupported Istio field `tunnel_protocol`: {} (HBONE or NONE only)",
                    w.tunnel_protocol
                ));
            }
        };
        let address = match w.addresses.first() {
            Some(a) => ip_of(a).map_err(|e| format!("addresses[0]: {e}"))?,
            None => return Err("addresses: a workload without an address (hostname-only workloads are not supported)".into()),
        };
        let td = if w.trust_domain.is_empty() {
            self.settings.trust_domain.clone()
        } else {
            w.trust_domain
                .parse::<TrustDomain>()
                .map_err(|e| format!("trust_domain {:?}: {e}", w.trust_domain))?
        };
        let sa = if w.service_account.is_empty() {
            "default".to_owned()
        } else {
            w.service_account.clone()
        };
        let identity = SpiffeId::new(&td, &w.namespace, &sa)
            .map_err(|e| format!("service_account {sa:?}: {e}"))?;
        let waypoint = w
            .waypoint
            .as_ref()
            .map(|g| gateway("waypoint", g))
            .transpose()?;
        let mut services = Vec::new();
        for (key, list) in &w.services {
            let mut ports = Vec::new();
            for (i, p) in list.ports.iter().enumerate() {
                ports.push((
                    port_of(
                        &format!("services[{key}].ports[{i}].service_port"),
                        p.service_port,
                    )?,
                    port_of(
                        &format!("services[{key}].ports[{i}].target_port"),
                        p.target_port,
                    )?,
                ));
            }
            services.push((key.to_ascii_lowercase(), ports));
        }
        services.sort();
        // Telemetry reads the canonical service and revision from these labels.
        let mut labels = BTreeMap::new();
        if !w.canonical_name.is_empty() {
            labels.insert(
                "service.istio.io/canonical-name".to_owned(),
                w.canonical_name.clone(),
            );
        }
        if !w.canonical_revision.is_empty() {
            labels.insert(
                "service.istio.io/canonical-revision".to_owned(),
                w.canonical_revision.clone(),
            );
        }
        let node = (hbone && !w.node.is_empty()).then(|| w.node.clone());
        let telemetry = state::peer_labels(
            &w.name,
            &w.namespace,
            &identity,
            &labels,
            &self.settings.cluster_id,
        );
        let arc = Arc::new(Workload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            address,
            labels,
            service_account: sa,
            ports: BTreeMap::new(),
            node: node.clone(),
            hbone_addr: node
                .as_ref()
                .map(|_| SocketAddr::new(address, DEFAULT_HBONE_PORT)),
            netns: None,
            telemetry,
            identity: identity.clone(),
            waypoint: None,
        });
        Ok(XWorkload {
            arc,
            key: format!("{}/{}", w.namespace, w.name),
            healthy: w.status == wl::WorkloadStatus::Healthy as i32,
            waypoint,
            services,
            policies: w.authorization_policies.clone(),
        })
    }

    fn authorization(&self, a: &sec::Authorization) -> Result<Policy, String> {
        if a.name.is_empty() || a.namespace.is_empty() {
            return Err("name and namespace are required".into());
        }
        if a.dry_run {
            return Err(
                "unsupported Istio field `dry_run`: dry-run policies are not supported yet".into(),
            );
        }
        if !a.extensions.is_empty() {
            return Err("unsupported Istio field `extensions`".into());
        }
        let scope = match sec::Scope::try_from(a.scope) {
            Ok(sec::Scope::Global) => mesh_authz::Scope::Mesh,
            Ok(sec::Scope::Namespace) => mesh_authz::Scope::Namespace,
            Ok(sec::Scope::WorkloadSelector) => mesh_authz::Scope::Assigned,
            Err(_) => return Err(format!("scope: unknown value {}", a.scope)),
        };
        let action = match sec::Action::try_from(a.action) {
            Ok(sec::Action::Allow) => mesh_authz::Action::Allow,
            Ok(sec::Action::Deny) => mesh_authz::Action::Deny,
            Err(_) => return Err(format!("action: unknown value {}", a.action)),
        };
        let mut rules = Vec::new();
        for (i, r) in a.rules.iter().enumerate() {
            let mut when = Vec::new();
            for (j, c) in r.clauses.iter().enumerate() {
                // A clause without matches is no constraint (Istio's ztunnel).
                if c.matches.is_empty() {
                    continue;
                }
                let mut alts = Vec::new();
                for (k, m) in c.matches.iter().enumerate() {
                    let field = format!("rules[{i}].clauses[{j}].matches[{k}]");
                    if let Some(m) = convert_match(&field, m)? {
                        alts.push(m);
                    }
                }
                when.push(Condition::AnyOf(alts));
            }
            rules.push(mesh_authz::Rule {
                when,
                ..mesh_authz::Rule::default()
            });
        }
        Ok(Policy {
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            scope,
            action,
            rules,
        })
    }

    /// The whole mesh state from the resources held: the last build patched for the
    /// workloads changed since, when only workloads changed (and no waypoint is involved);
    /// else built from every resource.
    pub fn build(&self) -> MeshState {
        let mut cache = self.lock_cache();
        if let Some(state) = self.build_incremental(&mut cache) {
            return state;
        }
        self.build_full(&mut cache)
    }

    fn any_waypoint(&self) -> bool {
        self.services.values().any(|x| x.waypoint.is_some())
            || self.workloads.values().any(|x| x.waypoint.is_some())
    }

    fn empty_state(&self) -> MeshState {
        let s = &self.settings;
        let mut state = MeshState::empty();
        state.trust_domain = s.trust_domain.clone();
        state.root_namespace = s.root_namespace.clone();
        state.cluster_id = s.cluster_id.clone();
        state.failed_policies = self.failed.clone();
        state
    }

    /// Our node with `local` workloads.
    fn node(&self, local: Vec<Arc<Workload>>) -> Arc<Node> {
        let s = &self.settings;
        Arc::new(Node {
            name: s.node.clone(),
            address: s.node_address,
            hbone_port: DEFAULT_HBONE_PORT,
            service_listeners: s.service_listeners,
            workloads: local,
        })
    }

    fn is_local(&self, w: &Workload) -> bool {
        w.node.as_deref() == Some(self.settings.node.as_str())
    }

    /// Healthy workloads naming service `key`, with their port mappings for it.
    fn members<'s>(&'s self, key: &str) -> Vec<(&'s XWorkload, &'s Vec<(u16, u16)>)> {
        self.workloads
            .values()
            .filter(|w| w.healthy)
            .filter_map(|w| {
                w.services
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, ports)| (w, ports))
            })
            .collect()
    }

    /// The last build with the changed workloads patched in: the address index, the
    /// changed workloads' services, our node if it is concerned, their policy entries.
    /// `None` when a full build is needed.
    fn build_incremental(&self, cache: &mut Cache) -> Option<MeshState> {
        let built = cache.built.as_ref()?;
        if cache.full || built.shared_address || self.any_waypoint() {
            return None;
        }
        let mut by_ip = built.by_ip.clone();
        let mut affected: HashSet<&str> = HashSet::new();
        let mut local_changed = false;
        let mut removes: Vec<&str> = Vec::new();
        let mut upserts: Vec<&XWorkload> = Vec::new();
        for (uid, old) in &cache.changed {
            if let Some(o) = old {
                if by_ip
                    .get(&o.arc.address)
                    .is_some_and(|w| Arc::ptr_eq(w, &o.arc))
                {
                    by_ip.remove(&o.arc.address);
                }
                affected.extend(o.services.iter().map(String::as_str));
                local_changed |= self.is_local(&o.arc);
                removes.push(&o.key);
            }
            if let Some(x) = self.workloads.get(uid) {
                if by_ip.insert(x.arc.address, x.arc.clone()).is_some() {
                    // Two workloads on one address: the full build decides (and warns).
                    return None;
                }
                affected.extend(x.services.iter().map(|(k, _)| k.as_str()));
                local_changed |= self.is_local(&x.arc);
                upserts.push(x);
            }
        }
        let mut by_vip = built.by_vip.clone();
        let mut by_host = built.by_host.clone();
        let mut rebuilt: Vec<(String, Vec<Arc<ServicePort>>)> = Vec::new();
        for (name, x) in &self.services {
            if !affected.contains(x.key.as_str()) {
                continue;
            }
            let old = cache.ports.get(name)?;
            for sp in old {
                for vip in &x.vips {
                    let a = SocketAddr::new(*vip, sp.port);
                    if by_vip.get(&a).is_some_and(|e| Arc::ptr_eq(e, sp)) {
                        by_vip.remove(&a);
                    }
                }
                if let Some(ports) = by_host.get_mut(&x.hostname)
                    && ports.get(&sp.port).is_some_and(|e| Arc::ptr_eq(e, sp))
                {
                    ports.remove(&sp.port);
                }
            }
            let service = old
                .first()
                .map_or_else(|| service_arc(x, None), |sp| sp.service.clone());
            let ports = ports_of(x, &service, &self.members(&x.key), &by_ip);
            index_ports(x, &ports, &mut by_vip, &mut by_host);
            rebuilt.push((name.clone(), ports));
        }
        for (name, ports) in rebuilt {
            cache.ports.insert(name, ports);
        }
        let mut service_ports = Vec::new();
        for name in self.services.keys() {
            service_ports.extend(cache.ports.get(name)?.iter().cloned());
        }
        let workloads: Vec<Arc<Workload>> =
            self.workloads.values().map(|x| x.arc.clone()).collect();
        let built = cache.built.as_ref()?;
        let node = if local_changed {
            self.node(
                workloads
                    .iter()
                    .filter(|w| self.is_local(w))
                    .cloned()
                    .collect(),
            )
        } else {
            built.node.clone()
        };
        let authz = built.authz.update_assigned(
            upserts.iter().map(|x| {
                (
                    mesh_authz::WorkloadRef {
                        key: &x.key,
                        namespace: &x.arc.namespace,
                        labels: &x.arc.labels,
                    },
                    x.policies.as_slice(),
                )
            }),
            removes,
        );
        let policies = built.policies.clone();
        let mut state = self.empty_state();
        state.nodes.insert(self.settings.node.clone(), node.clone());
        state.authz = authz.clone();
        state.policies = policies.clone();
        state.workloads = workloads;
        state.service_ports = service_ports;
        state.by_ip = by_ip.clone();
        state.by_vip = by_vip.clone();
        state.by_host = by_host.clone();
        cache.built = Some(Built {
            shared_address: false,
            by_ip,
            by_vip,
            by_host,
            node,
            authz,
            policies,
        });
        cache.changed.clear();
        cache.dirty.clear();
        cache.patched += 1;
        Some(state)
    }

    /// The whole mesh state built from every resource.
    fn build_full(&self, cache: &mut Cache) -> MeshState {
        let s = &self.settings;
        let mut state = self.empty_state();

        // Services by `namespace/hostname` and by VIP, for waypoint resolution.
        let svc_by_key: FastMap<&str, &XService> = self
            .services
            .values()
            .map(|x| (x.key.as_str(), x))
            .collect();
        let wl_by_ip: FastMap<IpAddr, &XWorkload> = self
            .workloads
            .values()
            .map(|w| (w.arc.address, w))
            .collect();
        let mut endpoints_of: FastMap<&str, Vec<&XWorkload>> = FastMap::default();
        for w in self.workloads.values() {
            for (key, _) in &w.services {
                endpoints_of.entry(key.as_str()).or_default().push(w);
            }
        }
        let mut waypoints: HashMap<String, Arc<Waypoint>> = HashMap::new();
        let mut resolve = |g: &GatewayRef, for_: WaypointFor| -> Option<Arc<Waypoint>> {
            let (svc, port) = match g {
                GatewayRef::Hostname(key, port) => (svc_by_key.get(key.as_str()).copied(), *port),
                GatewayRef::Address(ip, port) => {
                    if let Some(w) = wl_by_ip.get(ip) {
                        return Some(waypoint(
                            &mut waypoints,
                            &w.arc.name,
                            &w.arc.namespace,
                            w,
                            *port,
                            for_,
                        ));
                    }
                    (self.services.values().find(|x| x.vips.contains(ip)), *port)
                }
            };
            let svc = svc?;
            let w = endpoints_of
                .get(svc.key.as_str())
                .and_then(|e| e.iter().find(|w| w.healthy).or(e.first()))?;
            Some(waypoint(
                &mut waypoints,
                &svc.name,
                &svc.namespace,
                w,
                port,
                for_,
            ))
        };

        let mut workloads = Vec::new();
        let mut by_ip = FastMap::default();
        let mut listed: Vec<&[String]> = Vec::new();
        let mut keys: Vec<&str> = Vec::new();
        // Two workloads on one address: which one is an endpoint depends on both, so no
        // cached service port is trusted in this build.
        let mut shared_address = false;
        for (n, x) in &self.workloads {
            let wp = match &x.waypoint {
                Some(g) => {
                    let r = resolve(g, WaypointFor::Workload);
                    if r.is_none() {
                        tracing::warn!(workload = %n, ?g, "waypoint not known yet; traffic to the workload is refused until it is");
                    }
                    r.or_else(|| Some(unresolved_waypoint(&s.trust_domain, g)))
                }
                None => None,
            };
            let w = match wp {
                None => x.arc.clone(),
                Some(wp) => {
                    let a = &x.arc;
                    Arc::new(Workload {
                        name: a.name.clone(),
                        namespace: a.namespace.clone(),
                        address: a.address,
                        labels: a.labels.clone(),
                        service_account: a.service_account.clone(),
                        ports: a.ports.clone(),
                        node: a.node.clone(),
                        hbone_addr: a.hbone_addr,
                        netns: None,
                        telemetry: a.telemetry.clone(),
                        identity: a.identity.clone(),
                        waypoint: Some(wp),
                    })
                }
            };
            if by_ip.contains_key(&x.arc.address) {
                shared_address = true;
                tracing::warn!(workload = %n, address = %x.arc.address, "address shared by two workloads; the first (by resource name) wins");
                continue;
            }
            by_ip.insert(x.arc.address, w.clone());
            listed.push(&x.policies);
            keys.push(&x.key);
            workloads.push(w);
        }

        let mut service_ports = Vec::new();
        let mut by_vip = FastMap::default();
        let mut by_host: HashMap<String, HashMap<u16, Arc<ServicePort>>> = HashMap::new();
        if shared_address {
            cache.ports.clear();
        }
        let Cache {
            ports: cached,
            dirty,
            ..
        } = &mut *cache;
        cached.retain(|name, _| self.services.contains_key(name));
        for (name, x) in &self.services {
            let key = x.key.as_str();
            // Waypoints are resolved per build: services with one, or with endpoints that
            // have one, are always rebuilt.
            let cacheable = !shared_address
                && x.waypoint.is_none()
                && !endpoints_of
                    .get(key)
                    .is_some_and(|e| e.iter().any(|w| w.waypoint.is_some()));
            if cacheable
                && !dirty.contains(key)
                && let Some(sps) = cached.get(name)
            {
                index_ports(x, sps, &mut by_vip, &mut by_host);
                service_ports.extend(sps.iter().cloned());
                continue;
            }
            let wp = x.waypoint.as_ref().map(|g| {
                resolve(g, WaypointFor::Service)
                    .unwrap_or_else(|| unresolved_waypoint(&s.trust_domain, g))
            });
            let service = service_arc(x, wp);
            let members: Vec<(&XWorkload, &Vec<(u16, u16)>)> = endpoints_of
                .get(key)
                .into_iter()
                .flatten()
                .copied()
                .filter(|w| w.healthy)
                .filter_map(|w| {
                    w.services
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, ports)| (w, ports))
                })
                .collect();
            let ports = ports_of(x, &service, &members, &by_ip);
            index_ports(x, &ports, &mut by_vip, &mut by_host);
            service_ports.extend(ports.iter().cloned());
            if cacheable {
                cached.insert(name.clone(), ports);
            } else {
                cached.remove(name);
            }
        }
        dirty.clear();

        // Our node (others are not needed: peers are reached at their workloads' HBONE
        // addresses, and their addresses are not in the workload API).
        let node = self.node(
            workloads
                .iter()
                .filter(|w| self.is_local(w))
                .cloned()
                .collect(),
        );
        state.nodes.insert(s.node.clone(), node.clone());

        // Policies: mesh and namespace scopes as usual, selector scopes where listed.
        let policies: Vec<Policy> = self.policies.values().cloned().collect();
        state.authz = mesh_authz::PolicyIndex::build_assigned(
            &policies,
            workloads
                .iter()
                .zip(keys)
                .zip(listed)
                .map(|((w, key), listed)| {
                    (
                        mesh_authz::WorkloadRef {
                            key,
                            namespace: &w.namespace,
                            labels: &w.labels,
                        },
                        listed,
                    )
                }),
            &s.root_namespace,
        );
        state.policies = Arc::new(policies);

        // `endpoint_sets` and `port_protocols` serve per-request (L7) balancing and sidecar
        // inbound L7; a ztunnel (the only role following xDS so far) uses neither.
        state.waypoints_of = state::waypoints_of(&workloads, &service_ports);
        state.waypoints = waypoints;
        state.workloads = workloads;
        state.service_ports = service_ports;
        cache.built = Some(Built {
            shared_address,
            by_ip: by_ip.clone(),
            by_vip: by_vip.clone(),
            by_host: by_host.clone(),
            node,
            authz: state.authz.clone(),
            policies: state.policies.clone(),
        });
        cache.changed.clear();
        cache.full = false;
        state.by_ip = by_ip;
        state.by_vip = by_vip;
        state.by_host = by_host;
        state
    }
}

/// Adds service `x`'s `ports` to the VIP and host indexes (the first service claiming a
/// VIP:port keeps it).
fn index_ports(
    x: &XService,
    ports: &[Arc<ServicePort>],
    by_vip: &mut FastMap<SocketAddr, Arc<ServicePort>>,
    by_host: &mut HashMap<String, HashMap<u16, Arc<ServicePort>>>,
) {
    for sp in ports {
        for vip in &x.vips {
            by_vip
                .entry(SocketAddr::new(*vip, sp.port))
                .or_insert_with(|| sp.clone());
        }
        by_host
            .entry(x.hostname.clone())
            .or_default()
            .insert(sp.port, sp.clone());
    }
}

/// The state's service for `x`.
fn service_arc(x: &XService, waypoint: Option<Arc<Waypoint>>) -> Arc<Service> {
    Arc::new(Service {
        target_key: format!("Service/{}/{}", x.namespace, x.name),
        name: x.name.clone(),
        namespace: x.namespace.clone(),
        telemetry: mesh_telemetry::metrics::ServiceLabels {
            host: x.hostname.as_str().into(),
            name: x.name.as_str().into(),
            namespace: x.namespace.as_str().into(),
        },
        hosts: vec![x.hostname.clone()],
        vips: x.vips.clone(),
        waypoint,
    })
}

/// The ports of service `x` with their endpoints: `members` that hold their address.
fn ports_of(
    x: &XService,
    service: &Arc<Service>,
    members: &[(&XWorkload, &Vec<(u16, u16)>)],
    by_ip: &FastMap<IpAddr, Arc<Workload>>,
) -> Vec<Arc<ServicePort>> {
    x.ports
        .iter()
        .map(|(number, target, proto)| {
            let endpoints = members
                .iter()
                .filter_map(|(w, ports)| {
                    let wl = by_ip
                        .get(&w.arc.address)
                        .filter(|a| a.name == w.arc.name && a.namespace == w.arc.namespace)?;
                    // The workload's own mapping wins; else the service's target port; else
                    // the service port.
                    let port = ports
                        .iter()
                        .find(|(sp, _)| sp == number)
                        .map(|(_, t)| *t)
                        .filter(|t| *t != 0)
                        .or((*target != 0).then_some(*target))
                        .unwrap_or(*number);
                    Some(Endpoint {
                        workload: wl.clone(),
                        port,
                    })
                })
                .collect();
            Arc::new(ServicePort::new(
                service.clone(),
                *number,
                format!("port-{number}"),
                proto.clone(),
                endpoints,
            ))
        })
        .collect()
}

/// The waypoint named `namespace/name` run by workload `w` (one `Arc` per waypoint; used for
/// both workload and service traffic, it serves both).
fn waypoint(
    all: &mut HashMap<String, Arc<Waypoint>>,
    name: &str,
    namespace: &str,
    w: &XWorkload,
    port: u16,
    for_: WaypointFor,
) -> Arc<Waypoint> {
    let key = format!("{namespace}/{name}");
    if let Some(existing) = all.get(&key) {
        if existing.waypoint_for == for_ || existing.waypoint_for == WaypointFor::All {
            return existing.clone();
        }
        let merged = Arc::new(Waypoint {
            waypoint_for: WaypointFor::All,
            name: existing.name.clone(),
            namespace: existing.namespace.clone(),
            address: existing.address,
            port: existing.port,
            identity: existing.identity.clone(),
            target_key: existing.target_key.clone(),
        });
        all.insert(key, merged.clone());
        return merged;
    }
    let wp = Arc::new(Waypoint {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        address: w.arc.address,
        port,
        identity: w.arc.identity.clone(),
        waypoint_for: for_,
        target_key: format!("Gateway/{namespace}/{name}"),
    });
    all.insert(key, wp.clone());
    wp
}

/// A waypoint the control plane named but has not described (yet): traffic that must go
/// through it fails closed instead of skipping it. Its identity belongs to no workload.
fn unresolved_waypoint(td: &TrustDomain, g: &GatewayRef) -> Arc<Waypoint> {
    let (address, port, name) = match g {
        GatewayRef::Address(ip, port) => (*ip, *port, ip.to_string()),
        // Nothing listens on the IPv6 discard prefix: connections fail at once.
        GatewayRef::Hostname(h, port) => (
            IpAddr::V6(std::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1)),
            *port,
            h.clone(),
        ),
    };
    #[allow(clippy::expect_used)]
    // "unresolved-waypoint" / "unresolved" are valid namespace and service-account names.
    let identity = SpiffeId::new(td, "unresolved-waypoint", "unresolved")
        .expect("constant identity parts are valid");
    Arc::new(Waypoint {
        name: name.clone(),
        namespace: "unresolved-waypoint".into(),
        address,
        port,
        identity,
        waypoint_for: WaypointFor::None,
        target_key: format!("Gateway/unresolved-waypoint/{name}"),
    })
}

fn service(s: &wl::Service) -> Result<XService, String> {
    if s.name.is_empty() || s.namespace.is_empty() || s.hostname.is_empty() {
        return Err("name, namespace and hostname are required".into());
    }
    if !s.extensions.is_empty() {
        return Err("unsupported Istio field `extensions`".into());
    }
    if !s.weighted_waypoints.is_empty() {
        return Err("unsupported Istio field `weighted_waypoints`".into());
    }
    if let Some(lb) = &s.load_balancing
        && (lb.mode != 0 || !lb.routing_preference.is_empty())
    {
        return Err(
            "unsupported Istio field `load_balancing`: locality-aware balancing is not supported yet"
                .into(),
        );
    }
    let mut vips = Vec::new();
    for (i, a) in s.addresses.iter().enumerate() {
        if !a.network.is_empty() {
            return Err(format!(
                "unsupported Istio field `addresses[{i}].network`: multiple networks are not supported yet"
            ));
        }
        vips.push(ip_of(&a.address).map_err(|e| format!("addresses[{i}]: {e}"))?);
    }
    let mut ports = Vec::new();
    let mut seen = HashSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        let n = port_of(&format!("ports[{i}].service_port"), p.service_port)?;
        if n == 0 {
            return Err(format!("ports[{i}].service_port: 0 is not a port"));
        }
        if !seen.insert(n) {
            return Err(format!("ports[{i}].service_port: {n} is listed twice"));
        }
        let t = port_of(&format!("ports[{i}].target_port"), p.target_port)?;
        ports.push((n, t, protocol(p.app_protocol)));
    }
    let hostname = s.hostname.trim_end_matches('.').to_ascii_lowercase();
    Ok(XService {
        key: format!("{}/{hostname}", s.namespace),
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname,
        vips,
        ports,
        waypoint: s
            .waypoint
            .as_ref()
            .map(|g| gateway("waypoint", g))
            .transpose()?,
    })
}

fn strings(field: &str, v: &[sec::StringMatch]) -> Result<Vec<StringMatch>, String> {
    v.iter()
        .enumerate()
        .map(|(i, m)| match &m.match_type {
            Some(sec::string_match::MatchType::Exact(s)) => Ok(StringMatch::Exact(s.clone())),
            Some(sec::string_match::MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s.clone())),
            Some(sec::string_match::MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s.clone())),
            Some(sec::string_match::MatchType::Presence(_)) => Ok(StringMatch::Presence),
            None => Err(format!("{field}[{i}]: no match type")),
        })
        .collect()
}

fn nets(field: &str, v: &[sec::Address]) -> Result<Vec<ipnet::IpNet>, String> {
    v.iter()
        .enumerate()
        .map(|(i, a)| {
            let ip = ip_of(&a.address).map_err(|e| format!("{field}[{i}]: {e}"))?;
            let len = u8::try_from(a.length).map_err(|_| format!("{field}[{i}].length"))?;
            ipnet::IpNet::new(ip, len).map_err(|_| {
                format!(
                    "{field}[{i}]: /{} is not a prefix length for {ip}",
                    a.length
                )
            })
        })
        .collect()
}

fn ports(field: &str, v: &[u32]) -> Result<Vec<u16>, String> {
    v.iter().map(|p| port_of(field, *p)).collect()
}

fn service_accounts(
    field: &str,
    v: &[sec::ServiceAccountMatch],
) -> Result<Vec<StringMatch>, String> {
    v.iter()
        .enumerate()
        .map(|(i, m)| {
            if m.namespace.is_empty()
                || m.service_account.is_empty()
                || m.namespace.contains('/')
                || m.service_account.contains('/')
            {
                return Err(format!(
                    "{field}[{i}]: namespace and serviceAccount are required, without '/'"
                ));
            }
            // Any trust domain: `<td>/ns/<ns>/sa/<sa>`.
            Ok(StringMatch::Suffix(format!(
                "/ns/{}/sa/{}",
                m.namespace, m.service_account
            )))
        })
        .collect()
}

/// One workload-API match; `None` when it sets nothing (Istio's ztunnel skips those).
fn convert_match(field: &str, m: &sec::Match) -> Result<Option<Match>, String> {
    if !m.extensions.is_empty() {
        return Err(format!("unsupported Istio field `{field}.extensions`"));
    }
    let out = Match {
        source: Source {
            principals: strings(&format!("{field}.principals"), &m.principals)?,
            not_principals: strings(&format!("{field}.not_principals"), &m.not_principals)?,
            namespaces: strings(&format!("{field}.namespaces"), &m.namespaces)?,
            not_namespaces: strings(&format!("{field}.not_namespaces"), &m.not_namespaces)?,
            ip_blocks: nets(&format!("{field}.source_ips"), &m.source_ips)?,
            not_ip_blocks: nets(&format!("{field}.not_source_ips"), &m.not_source_ips)?,
            ..Source::default()
        },
        service_accounts: service_accounts(
            &format!("{field}.service_accounts"),
            &m.service_accounts,
        )?,
        not_service_accounts: service_accounts(
            &format!("{field}.not_service_accounts"),
            &m.not_service_accounts,
        )?,
        destination_ips: nets(&format!("{field}.destination_ips"), &m.destination_ips)?,
        not_destination_ips: nets(
            &format!("{field}.not_destination_ips"),
            &m.not_destination_ips,
        )?,
        ports: ports(&format!("{field}.destination_ports"), &m.destination_ports)?,
        not_ports: ports(
            &format!("{field}.not_destination_ports"),
            &m.not_destination_ports,
        )?,
    };
    Ok((out != Match::default()).then_some(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn store() -> XdsStore {
        XdsStore::new(XdsSettings {
            node: "n1".into(),
            node_address: "10.0.0.1".parse().unwrap(),
            cluster_id: "Kubernetes".into(),
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".parse().unwrap(),
            service_listeners: false,
        })
    }

    fn wk(name: &str, ip: [u8; 4], services: &[(&str, u32, u32)]) -> wl::Workload {
        let mut map = HashMap::new();
        for (k, p, t) in services {
            map.entry((*k).to_owned())
                .or_insert_with(wl::PortList::default)
                .ports
                .push(wl::Port {
                    service_port: *p,
                    target_port: *t,
                    app_protocol: 0,
                });
        }
        wl::Workload {
            uid: format!("c//Pod/ns/{name}"),
            name: name.into(),
            namespace: "ns".into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            service_account: name.into(),
            node: "n1".into(),
            services: map,
            ..Default::default()
        }
    }

    fn addr_w(w: wl::Workload) -> (String, wl::Address) {
        (
            w.uid.clone(),
            wl::Address {
                r#type: Some(wl::address::Type::Workload(w)),
            },
        )
    }

    fn addr_s(s: wl::Service) -> (String, wl::Address) {
        (
            format!("{}/{}", s.namespace, s.hostname),
            wl::Address {
                r#type: Some(wl::address::Type::Service(s)),
            },
        )
    }

    fn svc(name: &str, vip: [u8; 4], port: u32, target: u32) -> wl::Service {
        wl::Service {
            name: name.into(),
            namespace: "ns".into(),
            hostname: format!("{name}.ns.svc.cluster.local"),
            addresses: vec![wl::NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
                length: None,
            }],
            ports: vec![wl::Port {
                service_port: port,
                target_port: target,
                app_protocol: 0,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn unsupported_fields_are_rejected_by_name_and_the_rest_applies() {
        let mut s = store();
        let mut net = wk("net", [10, 1, 0, 2], &[]);
        net.network = "other".into();
        let mut legacy = wk("legacy", [10, 1, 0, 3], &[]);
        legacy.tunnel_protocol = wl::TunnelProtocol::LegacyIstioMtls as i32;
        let mut bad_ip = wk("bad", [10, 1, 0, 4], &[]);
        bad_ip.addresses = vec![vec![1, 2, 3]];
        let rejected = s.apply_addresses(
            vec![
                addr_w(wk("good", [10, 1, 0, 1], &[])),
                addr_w(net),
                addr_w(legacy),
                addr_w(bad_ip),
            ],
            vec![],
        );
        let reasons: Vec<String> = rejected
            .iter()
            .map(|r| format!("{}: {}", r.name, r.reason))
            .collect();
        assert_eq!(rejected.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("c//Pod/ns/net") && reasons[0].contains("`network`"));
        assert!(reasons[1].contains("`tunnel_protocol`"));
        assert!(reasons[2].contains("addresses[0]") && reasons[2].contains("3 bytes"));
        let state = s.build();
        assert_eq!(state.workloads.len(), 1);
        assert!(state.workload_by_ip("10.1.0.1".parse().unwrap()).is_some());

        let dry = sec::Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            dry_run: true,
            ..Default::default()
        };
        let r = s.apply_authorizations(vec![("ns/p".into(), dry)], vec![]);
        assert!(r[0].reason.contains("`dry_run`"), "{r:?}");
    }

    #[test]
    fn services_take_endpoints_from_workloads() {
        let mut s = store();
        let key = "ns/web.ns.svc.cluster.local";
        let mut sick = wk("sick", [10, 1, 0, 3], &[(key, 80, 8080)]);
        sick.status = wl::WorkloadStatus::Unhealthy as i32;
        let r = s.apply_addresses(
            vec![
                addr_s(svc("web", [10, 96, 0, 1], 80, 9090)),
                // Its own target port wins; 0 falls back to the service's.
                addr_w(wk("a", [10, 1, 0, 1], &[(key, 80, 8080)])),
                addr_w(wk("b", [10, 1, 0, 2], &[(key, 80, 0)])),
                addr_w(sick),
            ],
            vec![],
        );
        assert!(r.is_empty(), "{r:?}");
        let state = s.build();
        let sp = state
            .service_by_vip("10.96.0.1:80".parse().unwrap())
            .unwrap();
        let eps: Vec<(String, u16)> = sp
            .endpoints
            .iter()
            .map(|e| (e.workload.name.clone(), e.port))
            .collect();
        assert_eq!(eps, vec![("a".into(), 8080), ("b".into(), 9090)]);
        assert!(
            state
                .service_by_host("web.ns.svc.cluster.local", 80)
                .is_some()
        );
        // Local HBONE workloads are the node's; removal takes a workload out everywhere.
        assert_eq!(state.node("n1").unwrap().workloads.len(), 3);
        s.apply_addresses(vec![], vec!["c//Pod/ns/a".into()]);
        let state = s.build();
        let sp = state
            .service_by_vip("10.96.0.1:80".parse().unwrap())
            .unwrap();
        assert_eq!(sp.endpoints.len(), 1);
        assert!(state.workload_by_ip("10.1.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn waypoints_resolve_to_their_workload_or_fail_closed() {
        let mut s = store();
        let wp_key = "ns/wp.ns.svc.cluster.local";
        let mut web = svc("web", [10, 96, 0, 1], 80, 80);
        web.waypoint = Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Hostname(
                wl::NamespacedHostname {
                    namespace: "ns".into(),
                    hostname: "wp.ns.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        });
        let mut lost = wk("lost", [10, 1, 0, 9], &[]);
        lost.waypoint = Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Address(
                wl::NetworkAddress {
                    network: String::new(),
                    address: vec![10, 96, 9, 9],
                    length: None,
                },
            )),
            hbone_mtls_port: 0,
        });
        let r = s.apply_addresses(
            vec![
                addr_s(web),
                addr_s(svc("wp", [10, 96, 0, 2], 15008, 15008)),
                addr_w(wk("waypoint", [10, 1, 0, 7], &[(wp_key, 15008, 15008)])),
                addr_w(wk(
                    "a",
                    [10, 1, 0, 1],
                    &[("ns/web.ns.svc.cluster.local", 80, 80)],
                )),
                addr_w(lost),
            ],
            vec![],
        );
        assert!(r.is_empty(), "{r:?}");
        let state = s.build();
        let sp = state
            .service_by_vip("10.96.0.1:80".parse().unwrap())
            .unwrap();
        let wp = sp.service.waypoint.as_ref().unwrap();
        assert_eq!(wp.hbone_addr(), "10.1.0.7:15008".parse().unwrap());
        assert_eq!(
            wp.identity.as_str(),
            "spiffe://cluster.local/ns/ns/sa/waypoint"
        );
        // Only the waypoint may reach the service's endpoints.
        assert_eq!(state.waypoints_of["ns/a"].len(), 1);
        // A waypoint nobody describes: traffic goes nowhere rather than around it.
        let lost = state.workload_by_ip("10.1.0.9".parse().unwrap()).unwrap();
        let wp = lost.waypoint.as_ref().unwrap();
        assert_eq!(wp.hbone_addr(), "10.96.9.9:15008".parse().unwrap());
        assert_eq!(wp.waypoint_for, WaypointFor::None);
    }

    #[test]
    fn unchanged_services_are_reused_changed_ones_rebuilt() {
        let mut s = store();
        let web = "ns/web.ns.svc.cluster.local";
        let db = "ns/db.ns.svc.cluster.local";
        s.apply_addresses(
            vec![
                addr_s(svc("web", [10, 96, 0, 1], 80, 80)),
                addr_s(svc("db", [10, 96, 0, 2], 5432, 5432)),
                addr_w(wk("w1", [10, 1, 0, 1], &[(web, 80, 8080)])),
                addr_w(wk("d1", [10, 1, 0, 2], &[(db, 5432, 5432)])),
            ],
            vec![],
        );
        let port = |st: &MeshState, vip: &str| st.service_by_vip(vip.parse().unwrap()).cloned();
        let a = s.build();
        // w1 changes its target port: web is rebuilt, db is shared.
        s.apply_addresses(
            vec![addr_w(wk("w1", [10, 1, 0, 1], &[(web, 80, 8081)]))],
            vec![],
        );
        let b = s.build();
        let (web_a, web_b) = (
            port(&a, "10.96.0.1:80").unwrap(),
            port(&b, "10.96.0.1:80").unwrap(),
        );
        assert!(!Arc::ptr_eq(&web_a, &web_b));
        assert_eq!(web_b.endpoints[0].port, 8081);
        assert!(Arc::ptr_eq(
            &port(&a, "10.96.0.2:5432").unwrap(),
            &port(&b, "10.96.0.2:5432").unwrap()
        ));
        // d1 leaves: db has no endpoint any more; a removed service disappears.
        s.apply_addresses(vec![], vec!["c//Pod/ns/d1".into()]);
        let c = s.build();
        assert!(port(&c, "10.96.0.2:5432").unwrap().endpoints.is_empty());
        s.apply_addresses(vec![], vec![db.into()]);
        let d = s.build();
        assert!(port(&d, "10.96.0.2:5432").is_none());
        assert!(Arc::ptr_eq(&web_b, &port(&d, "10.96.0.1:80").unwrap()));
        // A second workload on w1's address: nothing cached is trusted, the first by
        // resource name stays the endpoint.
        s.apply_addresses(vec![addr_w(wk("a0", [10, 1, 0, 1], &[]))], vec![]);
        let e = s.build();
        let web_e = port(&e, "10.96.0.1:80").unwrap();
        assert!(!Arc::ptr_eq(&web_b, &web_e));
        assert!(web_e.endpoints.is_empty(), "a0 owns the address now");
    }

    /// What a proxy reads from a state, in a comparable form.
    fn summary(st: &MeshState) -> Vec<String> {
        let mut out = Vec::new();
        for w in &st.workloads {
            out.push(format!(
                "w {} {} {:?} authz={:?}",
                w.key(),
                w.address,
                w.node,
                st.authz.applied(&w.key())
            ));
            let at = st.workload_by_ip(w.address).map(|x| x.key());
            out.push(format!("ip {} {:?}", w.address, at));
        }
        let mut vips: Vec<String> = st
            .vips()
            .map(|(a, sp)| {
                let eps: Vec<String> = sp
                    .endpoints
                    .iter()
                    .map(|e| format!("{}:{}", e.workload.key(), e.port))
                    .collect();
                format!("vip {a} {eps:?}")
            })
            .collect();
        vips.sort();
        out.extend(vips);
        let local: Vec<String> = st
            .node("n1")
            .map(|n| n.workloads.iter().map(|w| w.key()).collect())
            .unwrap_or_default();
        out.push(format!("local {local:?}"));
        out
    }

    /// Patched builds equal full builds of the same resources, through a long random
    /// sequence of workload changes (addresses, nodes, services, health, listed policies).
    #[test]
    fn incremental_builds_equal_full_builds() {
        let mut inc = store();
        let svc_keys = ["ns/s0.ns.svc.cluster.local", "ns/s1.ns.svc.cluster.local"];
        let services = vec![
            addr_s(svc("s0", [10, 96, 0, 1], 80, 8080)),
            addr_s(svc("s1", [10, 96, 0, 2], 90, 0)),
        ];
        let deny = sec::Authorization {
            name: "d".into(),
            namespace: "ns".into(),
            scope: sec::Scope::WorkloadSelector as i32,
            action: sec::Action::Deny as i32,
            rules: vec![sec::Rule::default()],
            ..Default::default()
        };
        inc.apply_addresses(services.clone(), vec![]);
        inc.apply_authorizations(vec![("ns/d".into(), deny.clone())], vec![]);
        let mut current: BTreeMap<String, wl::Workload> = BTreeMap::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let _ = inc.build();
        for step in 0..300 {
            let id = next(12);
            let uid = format!("c//Pod/ns/w{id}");
            if next(4) == 0 {
                current.remove(&uid);
                inc.apply_addresses(vec![], vec![uid]);
            } else {
                let svc = svc_keys[next(2) as usize];
                let mut w = wk(
                    &format!("w{id}"),
                    // Addresses unique per workload id, sometimes moving.
                    [10, 1, next(2) as u8, id as u8 + 1],
                    &[(
                        svc,
                        if svc.contains("s0") { 80 } else { 90 },
                        next(3) as u32 * 1000,
                    )],
                );
                w.node = if next(2) == 0 { "n1" } else { "n2" }.into();
                if next(5) == 0 {
                    w.status = wl::WorkloadStatus::Unhealthy as i32;
                }
                if next(3) == 0 {
                    w.authorization_policies = vec!["ns/d".into()];
                }
                current.insert(uid.clone(), w.clone());
                inc.apply_addresses(vec![addr_w(w)], vec![]);
            }
            let patched = inc.build();
            let mut fresh = store();
            fresh.apply_addresses(services.clone(), vec![]);
            fresh.apply_authorizations(vec![("ns/d".into(), deny.clone())], vec![]);
            fresh.apply_addresses(current.values().cloned().map(addr_w).collect(), vec![]);
            let full = fresh.build();
            assert_eq!(summary(&patched), summary(&full), "step {step}");
        }
        assert!(
            inc.lock_cache().patched >= 290,
            "{}",
            inc.lock_cache().patched
        );
    }
}
