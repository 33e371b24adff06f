//! Full builds: every accepted resource → the mesh state. Waypoints are resolved here (the
//! control plane may name one before describing it), then the shared assembler
//! ([`super::super::assemble`]) indexes policies and, when the store holds an L7 file, the L7 kinds
//! of the local file. Service ports that nothing changed are reused from the last build.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_identity::{SpiffeId, TrustDomain};

use super::super::assemble::{Sourced, assemble};
use super::super::errors::Validator;
use super::super::netindex::NetIndexBuilder;
use super::super::state::{
    Endpoint, FastMap, MeshState, Node, Service, ServicePort, Waypoint, WaypointFor,
};
use super::super::{DEFAULT_HBONE_PORT, Resources, Workload};
use super::store::{Built, Cache, GatewayRef, Local, XService, XWorkload, XdsStore};

/// Service ports by host and port.
type ByHost = HashMap<String, HashMap<u16, Arc<ServicePort>>>;

/// Resolves the waypoints resources name, to the workload that runs each.
struct Resolver<'s> {
    store: &'s XdsStore,
    /// Services by `namespace/hostname`.
    svc_by_key: FastMap<&'s str, &'s XService>,
    wl_by_ip: FastMap<IpAddr, &'s XWorkload>,
    /// The workloads naming each service (`namespace/hostname`).
    endpoints_of: FastMap<&'s str, Vec<&'s XWorkload>>,
    waypoints: HashMap<String, Arc<Waypoint>>,
}

impl<'s> Resolver<'s> {
    fn new(store: &'s XdsStore) -> Resolver<'s> {
        let mut endpoints_of: FastMap<&str, Vec<&XWorkload>> = FastMap::default();
        for w in store.workloads.values() {
            for (key, _) in &w.services {
                endpoints_of.entry(key.as_str()).or_default().push(w);
            }
        }
        Resolver {
            store,
            svc_by_key: store
                .services
                .values()
                .map(|x| (x.key.as_str(), x))
                .collect(),
            wl_by_ip: store
                .workloads
                .values()
                .filter(|w| w.other_network.is_none())
                .map(|w| (w.arc.address, w))
                .collect(),
            endpoints_of,
            waypoints: HashMap::new(),
        }
    }

    /// The waypoint `g` names, serving `for_`; `None` if not described (yet).
    fn resolve(&mut self, g: &GatewayRef, for_: WaypointFor) -> Option<Arc<Waypoint>> {
        let g = &super::network::on_our_network(g, &self.store.network)?;
        let (svc, port) = match g {
            GatewayRef::Hostname(key, port) => (self.svc_by_key.get(key.as_str()).copied(), *port),
            GatewayRef::Address(ip, port) => {
                if let Some(w) = self.wl_by_ip.get(ip) {
                    return Some(waypoint(
                        &mut self.waypoints,
                        &w.arc.name,
                        &w.arc.namespace,
                        w,
                        *port,
                        for_,
                    ));
                }
                (
                    self.store.services.values().find(|x| x.vips.contains(ip)),
                    *port,
                )
            }
            GatewayRef::OtherNetwork(..) => return None,
        };
        let svc = svc?;
        let w = self
            .endpoints_of
            .get(svc.key.as_str())
            .and_then(|e| e.iter().find(|w| w.healthy).or(e.first()))?;
        Some(waypoint(
            &mut self.waypoints,
            &svc.name,
            &svc.namespace,
            w,
            port,
            for_,
        ))
    }

    /// As [`resolve`](Self::resolve), failing closed: an unknown waypoint is one nothing
    /// listens on.
    fn resolve_or_closed(&mut self, g: &GatewayRef, for_: WaypointFor) -> Arc<Waypoint> {
        self.resolve(g, for_)
            .unwrap_or_else(|| unresolved_waypoint(&self.store.settings.trust_domain, g))
    }
}

/// The workloads of a full build.
struct Workloads<'s> {
    workloads: Vec<Arc<Workload>>,
    by_ip: FastMap<IpAddr, Arc<Workload>>,
    /// Per workload, the policies istiod assigned to it.
    listed: Vec<&'s [String]>,
    /// Two workloads on one address: which one is an endpoint depends on both, so no cached
    /// service port is trusted in this build.
    shared_address: bool,
    /// Workloads on other networks: kept out of the state, their addresses known.
    net: NetIndexBuilder,
}

/// The service ports of a full build with their indexes.
#[derive(Default)]
struct Services {
    service_ports: Vec<Arc<ServicePort>>,
    by_vip: FastMap<SocketAddr, Arc<ServicePort>>,
    by_host: ByHost,
    /// Candidates for the client-dependent lookups.
    net: NetIndexBuilder,
}

impl XdsStore {
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

    pub(super) fn any_waypoint(&self) -> bool {
        self.services
            .values()
            .any(|x| x.waypoint.is_some() || !x.weighted.is_empty())
            || self.workloads.values().any(|x| x.waypoint.is_some())
    }

    pub(super) fn empty_state(&self) -> MeshState {
        let s = &self.settings;
        let mut state = MeshState::empty();
        state.trust_domain = s.trust_domain.clone();
        state.root_namespace = s.root_namespace.clone();
        state.cluster_id = s.cluster_id.clone();
        state.failed_policies = self.failed.clone();
        state
    }

    /// Our node with `local` workloads.
    pub(super) fn node(&self, local: Vec<Arc<Workload>>) -> Arc<Node> {
        let s = &self.settings;
        Arc::new(Node {
            name: s.node.clone(),
            address: s.node_address,
            hbone_port: DEFAULT_HBONE_PORT,
            service_listeners: s.service_listeners,
            workloads: local,
        })
    }

    pub(super) fn is_local(&self, w: &Workload) -> bool {
        w.node.as_deref() == Some(self.settings.node.as_str())
    }

    /// The whole mesh state built from every resource.
    fn build_full(&self, cache: &mut Cache) -> MeshState {
        let mut resolver = Resolver::new(self);
        let mut w = self.full_workloads(&mut resolver);
        let mut svcs = self.full_services(cache, &mut resolver, &w);
        let mut net = std::mem::take(&mut svcs.net);
        net.other_networks_of(std::mem::take(&mut w.net));
        let mut state = self.empty_state();
        // Our node (others are not needed: peers are reached at their workloads' HBONE
        // addresses, and their addresses are not in the workload API).
        let node = self.node(
            w.workloads
                .iter()
                .filter(|x| self.is_local(x))
                .cloned()
                .collect(),
        );
        state.nodes.insert(self.settings.node.clone(), node.clone());
        state.waypoints = resolver.waypoints;
        self.add_own_waypoint(&mut state.waypoints);
        state.workloads = w.workloads;
        state.service_ports = svcs.service_ports;
        state.by_ip = w.by_ip;
        state.by_vip = svcs.by_vip;
        state.by_host = svcs.by_host;
        state.net = Arc::new(net.finish(&mut state.by_vip, &mut state.by_host));
        self.assemble(cache, &mut state, w.listed);
        cache.built = Some(Built {
            shared_address: w.shared_address,
            by_ip: state.by_ip.clone(),
            by_vip: state.by_vip.clone(),
            by_host: state.by_host.clone(),
            node,
            authz: state.authz.clone(),
            policies: state.policies.clone(),
            net_scoped: !state.net.is_empty(),
        });
        cache.changed.clear();
        cache.full = false;
        state
    }

    /// The shared assembly: istiod's policies (mesh and namespace scopes as usual, selector
    /// scopes where listed) merged with the local file's, and the L7 kinds for roles that
    /// proxy HTTP. What the file names but istiod does not (yet) have is logged.
    fn assemble(&self, cache: &mut Cache, state: &mut MeshState, listed: Vec<&[String]>) {
        let none = Resources::default();
        let res = self.l7.as_deref().unwrap_or(&none);
        let mut v = Validator::default();
        let src = Sourced {
            policies: self.policies.values().cloned().collect(),
            assigned: listed,
            l7: self.l7.is_some(),
        };
        assemble(&mut v, state, res, src);
        let issues = v
            .issues
            .iter()
            .map(|i| format!("{}: {}: {}", i.location, i.field, i.reason))
            .collect::<Vec<_>>()
            .join("; ");
        if issues != cache.issues {
            // Before istiod's first answer everything the file names is missing: not news.
            let synced = !self.services.is_empty() || !self.workloads.is_empty();
            if !issues.is_empty() && synced {
                tracing::warn!(%issues, "local L7 resources name what istiod does not (yet) provide");
            }
            cache.issues = issues;
        }
    }

    /// A waypoint is always in its own state, at its own address with its own identity (what
    /// istiod resolves for it keeps only what it serves).
    fn add_own_waypoint(&self, waypoints: &mut HashMap<String, Arc<Waypoint>>) {
        let Local::Gateway { key, identity } = &self.local else {
            return;
        };
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key.as_str()));
        let waypoint_for = waypoints
            .get(key)
            .map_or(WaypointFor::Service, |w| w.waypoint_for);
        waypoints.insert(
            key.clone(),
            Arc::new(Waypoint {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                address: self.settings.node_address,
                port: DEFAULT_HBONE_PORT,
                identity: identity.clone(),
                waypoint_for,
                target_key: format!("Gateway/{namespace}/{name}"),
            }),
        );
    }

    /// Every workload with its waypoint resolved; the first (by resource name) of workloads
    /// sharing an address wins.
    fn full_workloads<'s>(&'s self, resolver: &mut Resolver<'s>) -> Workloads<'s> {
        let mut out = Workloads {
            workloads: Vec::new(),
            by_ip: FastMap::default(),
            listed: Vec::new(),
            shared_address: false,
            net: NetIndexBuilder::default(),
        };
        for (n, x) in &self.workloads {
            if let Some(network) = &x.other_network {
                out.net.other_network(x.arc.address, network);
                continue;
            }
            let wp = match &x.waypoint {
                Some(g) => {
                    let r = resolver.resolve(g, WaypointFor::Workload);
                    if r.is_none() {
                        tracing::warn!(workload = %n, ?g, "waypoint not known yet; traffic to the workload is refused until it is");
                    }
                    r.or_else(|| Some(unresolved_waypoint(&self.settings.trust_domain, g)))
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
                        locality: a.locality.clone(),
                        application_tunnel: a.application_tunnel,
                    })
                }
            };
            if out.by_ip.contains_key(&x.arc.address) {
                out.shared_address = true;
                tracing::warn!(workload = %n, address = %x.arc.address, "address shared by two workloads; the first (by resource name) wins");
                continue;
            }
            out.by_ip.insert(x.arc.address, w.clone());
            out.listed.push(&x.policies);
            out.workloads.push(w);
        }
        out
    }

    /// Every service's ports with their endpoints among `w`: reused from the last build when
    /// neither the service nor its endpoints changed and no waypoint is involved.
    fn full_services<'s>(
        &'s self,
        cache: &mut Cache,
        resolver: &mut Resolver<'s>,
        w: &Workloads<'s>,
    ) -> Services {
        let mut out = Services::default();
        let shared_address = w.shared_address;
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
                && x.weighted.is_empty()
                && !resolver
                    .endpoints_of
                    .get(key)
                    .is_some_and(|e| e.iter().any(|w| w.waypoint.is_some()));
            if cacheable
                && !dirty.contains(key)
                && let Some(sps) = cached.get(name)
            {
                out.net.add(&x.vips, &x.scope.cidrs, sps);
                index_ports(x, sps, &mut out.by_vip, &mut out.by_host);
                out.service_ports.extend(sps.iter().cloned());
                continue;
            }
            let td = &self.settings.trust_domain;
            let (wp, weighted) = super::weighted::resolve(
                x,
                |g| resolver.resolve_or_closed(g, WaypointFor::Service),
                |g| unresolved_waypoint(td, g),
            );
            let service = service_arc(x, wp, weighted);
            let members: Vec<(&XWorkload, &Vec<(u16, u16)>)> = resolver
                .endpoints_of
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
            let ports = ports_of(x, &service, &members, &w.by_ip);
            out.net.add(&x.vips, &x.scope.cidrs, &ports);
            index_ports(x, &ports, &mut out.by_vip, &mut out.by_host);
            out.service_ports.extend(ports.iter().cloned());
            if cacheable {
                cached.insert(name.clone(), ports);
            } else {
                cached.remove(name);
            }
        }
        dirty.clear();
        out
    }
}

/// Adds service `x`'s `ports` to the VIP and host indexes (the first service claiming a
/// VIP:port keeps it).
pub(super) fn index_ports(
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
pub(super) fn service_arc(
    x: &XService,
    waypoint: Option<Arc<Waypoint>>,
    weighted_waypoints: Option<Arc<super::super::weighted::Weighted<Arc<Waypoint>>>>,
) -> Arc<Service> {
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
        weighted_waypoints,
        load_balancing: x.load_balancing.clone(),
        visibility: x.scope.visibility,
        canonical: x.scope.canonical,
    })
}

/// The ports of service `x` with their endpoints: `members` that hold their address.
pub(super) fn ports_of(
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
                *proto,
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
        // Never dialled: the discard prefix below, as an unknown host name.
        GatewayRef::OtherNetwork(net, ip, port) => (
            IpAddr::V6(std::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1)),
            *port,
            format!("{net}/{ip}"),
        ),
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
