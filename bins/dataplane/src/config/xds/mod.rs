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
//!
//! The store's [`Local`] says which workloads are this proxy's own: a ztunnel's are
//! those on its node; a sidecar's, its one workload; a waypoint has none, and is itself a
//! waypoint in the state. A waypoint and a sidecar also hold the L7 kinds of their local file
//! ([`XdsStore::set_l7`]), merged with istiod's resources by the shared assembler.
//!
//! Files: [`convert`] (resources → records), `build` (records → state, through the shared
//! assembler), `patch` (workload-only changes patched into the last state).

mod build;
mod convert;
mod patch;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_authz::Policy;
use mesh_identity::{SpiffeId, TrustDomain};
use mesh_xds::Rejection;
use mesh_xds::pb::security as sec;
use mesh_xds::pb::workload as wl;

use super::state::{FastMap, Node, ServicePort};
use super::{Resources, Workload};
use convert::service;

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
    ports: Vec<(u16, u16, super::Protocol)>,
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
    local: Local,
    /// The L7 kinds of the local file (waypoint, sidecar); `None` for a ztunnel.
    l7: Option<Arc<Resources>>,
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
    /// What the last full build found wrong in the local file's references (logged when it
    /// changes).
    issues: String,
}

fn reject(name: &str, reason: impl Into<String>) -> Rejection {
    Rejection {
        name: name.to_owned(),
        reason: reason.into(),
    }
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
        }
    }

    /// The same store with other local workloads (set before any resource is applied).
    pub fn serving(mut self, local: Local) -> XdsStore {
        self.local = local;
        self
    }

    /// Replaces the L7 kinds of the local file (checked by [`super::load_l7_file`]); the
    /// next build is a full one, merging them with istiod's resources.
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
}
