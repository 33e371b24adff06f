//! The file source: a parsed file ([`Raw`]) → the workloads, services, nodes and waypoints
//! of a [`MeshState`], then the shared [`assemble`] step for policies and the L7 kinds.
//! One step per function: settings, nodes, workloads, services, node assembly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_identity::{SpiffeId, TrustDomain};

use super::assemble::{Sourced, assemble};
use super::model::*;
use super::parse::{Named, Raw, is_hostname, parse_ip, parse_port};
use super::placement::{Placement, place_on_nodes, place_sidecars};
use super::waypoints::{Attach, compile_waypoints};
use super::{
    DEFAULT_CLUSTER_ID, DEFAULT_ROOT_NAMESPACE, Endpoint, MeshState, Node, Service, ServicePort,
    WaypointFor, Workload, default_trust_domain, state,
};
use crate::config::errors::Validator;
use crate::config::protocol::{DECLARED, Protocol};

/// The workloads and services of the file, with their address indexes.
#[derive(Default)]
struct Built {
    workloads: Vec<Arc<Workload>>,
    by_ip: state::FastMap<IpAddr, Arc<Workload>>,
    service_ports: Vec<Arc<ServicePort>>,
    by_vip: state::FastMap<SocketAddr, Arc<ServicePort>>,
    by_host: HashMap<String, HashMap<u16, Arc<ServicePort>>>,
}

/// Compiles a parsed file into the mesh state; every problem goes to `v`.
pub(super) fn compile(v: &mut Validator, raw: Raw) -> MeshState {
    let mut state = MeshState::empty();
    settings(v, &raw, &mut state);
    // Nodes first: a workload's HBONE address depends on its node.
    let mut place = place_on_nodes(v, &raw);
    place_sidecars(v, &raw, &mut place);
    state.waypoints = compile_waypoints(v, &raw, &state.trust_domain);
    let ns_labels = namespace_labels(v, &raw);
    let attach = Attach {
        waypoints: &state.waypoints,
        ns_labels: &ns_labels,
    };
    let mut built = Built::default();
    compile_workloads(v, &raw, &place, &attach, &state, &mut built);
    compile_services(v, &raw, &attach, &mut built);
    state.nodes = assemble_nodes(place.specs, &built.workloads);
    state.workloads = built.workloads;
    state.service_ports = built.service_ports;
    state.by_ip = built.by_ip;
    state.by_vip = built.by_vip;
    state.by_host = built.by_host;
    let src = Sourced {
        policies: Vec::new(),
        assigned: Vec::new(),
        l7: true,
    };
    assemble(v, &mut state, &raw.res, src);
    state
}

/// Mesh-wide settings (`MeshConfig`): trust domain, cluster, root namespace, path
/// normalization.
fn settings(v: &mut Validator, raw: &Raw, state: &mut MeshState) {
    let mesh = raw.mesh.as_ref();
    let loc = mesh.map_or("MeshConfig", |m| m.location.as_str());
    state.trust_domain = match mesh.and_then(|m| m.spec.trust_domain.clone()) {
        None => default_trust_domain(),
        Some(td) => match td.parse::<TrustDomain>() {
            Ok(td) => td,
            Err(e) => {
                v.err(loc, "spec.trustDomain", format!("{td:?}: {e}"));
                default_trust_domain()
            }
        },
    };
    state.cluster_id = mesh
        .and_then(|m| m.spec.cluster_id.clone())
        .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_owned());
    state.root_namespace = mesh
        .and_then(|m| m.spec.root_namespace.clone())
        .unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.to_owned());
    state.default_retry = super::retry::default_policy(
        v,
        loc,
        mesh.and_then(|m| m.spec.default_http_retry_policy.as_ref()),
    );
    state.path_normalization = match mesh.and_then(|m| m.spec.path_normalization.as_ref()) {
        None => mesh_authz::http::PathNormalization::default(),
        Some(p) => match p.normalization.parse() {
            Ok(n) => n,
            Err(e) => {
                v.err(loc, "spec.pathNormalization.normalization", e.to_string());
                mesh_authz::http::PathNormalization::default()
            }
        },
    };
}

/// Labels of the `Namespace`s (`istio.io/use-waypoint`).
fn namespace_labels<'r>(
    v: &mut Validator,
    raw: &'r Raw,
) -> HashMap<&'r str, &'r BTreeMap<String, String>> {
    let mut ns_labels: HashMap<&str, &BTreeMap<String, String>> = HashMap::new();
    for (loc, name, labels) in &raw.namespaces {
        if ns_labels.insert(name.as_str(), labels).is_some() {
            v.err(
                loc,
                "metadata.name",
                format!("duplicate Namespace {name:?}"),
            );
        }
    }
    ns_labels
}

/// The `WorkloadEntry`s: identity, node, waypoint; one workload per address.
fn compile_workloads(
    v: &mut Validator,
    raw: &Raw,
    place: &Placement,
    attach: &Attach<'_>,
    state: &MeshState,
    out: &mut Built,
) {
    let mut seen = HashSet::new();
    for w in &raw.workloads {
        let loc = &w.location;
        if !seen.insert((w.namespace.clone(), w.name.clone())) {
            v.err(
                loc,
                "metadata.name",
                format!("duplicate WorkloadEntry {}/{}", w.namespace, w.name),
            );
        }
        let Some(address) = parse_ip(v, loc, "spec.address", &w.spec.address) else {
            continue;
        };
        let sa = w
            .spec
            .service_account
            .clone()
            .unwrap_or_else(|| "default".into());
        let identity = match SpiffeId::new(&state.trust_domain, &w.namespace, &sa) {
            Ok(id) => id,
            Err(e) => {
                v.err(
                    loc,
                    "spec.serviceAccount",
                    format!("{sa:?} does not form a valid SPIFFE id: {e}"),
                );
                continue;
            }
        };
        let locality = super::locality::parse(w.spec.locality.as_deref().unwrap_or_default())
            .unwrap_or_else(|e| {
                v.err(loc, "spec.locality", e);
                None
            });
        let mut ports = BTreeMap::new();
        for (name, p) in &w.spec.ports {
            if let Some(p) = parse_port(v, loc, &format!("spec.ports.{name}"), *p) {
                ports.insert(name.clone(), p);
            }
        }
        let node = place.node_of.get(&(w.namespace.clone(), w.name.clone()));
        let wl = Arc::new(Workload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            address,
            labels: w.spec.labels.clone(),
            service_account: sa,
            ports,
            node: node.map(|(n, _)| n.clone()),
            hbone_addr: node.map(|(_, p)| SocketAddr::new(address, *p)),
            netns: place
                .netns_of
                .get(&(w.namespace.clone(), w.name.clone()))
                .cloned(),
            telemetry: state::peer_labels(
                &w.name,
                &w.namespace,
                &identity,
                &w.spec.labels,
                &state.cluster_id,
                locality.as_ref(),
            ),
            identity,
            waypoint: attach.resolve(
                v,
                loc,
                &w.namespace,
                &w.labels,
                &w.spec.labels,
                WaypointFor::Workload,
            ),
            locality,
            application_tunnel: None,
        });
        if let Some(other) = out.by_ip.get(&address) {
            v.err(
                loc,
                "spec.address",
                format!(
                    "{address} is also the address of WorkloadEntry {}",
                    other.key()
                ),
            );
            continue;
        }
        if let Some(n) = place.node_addrs.get(&address) {
            v.err(
                loc,
                "spec.address",
                format!("{address} is the address of Node {n:?}"),
            );
        }
        out.by_ip.insert(address, wl.clone());
        out.workloads.push(wl);
    }
}

/// The `ServiceEntry`s: hosts, VIPs, waypoint, and each port with its endpoints.
fn compile_services(v: &mut Validator, raw: &Raw, attach: &Attach<'_>, out: &mut Built) {
    let mut host_owner: HashMap<String, String> = HashMap::new();
    let mut seen = HashSet::new();
    // Istio: a ServiceEntry's workloadSelector selects WorkloadEntries of its own namespace.
    let mut workloads_by_ns: HashMap<String, Vec<Arc<Workload>>> = HashMap::new();
    for w in &out.workloads {
        workloads_by_ns
            .entry(w.namespace.clone())
            .or_default()
            .push(w.clone());
    }
    for s in &raw.services {
        let loc = &s.location;
        let key = format!("{}/{}", s.namespace, s.name);
        if !seen.insert(key.clone()) {
            v.err(
                loc,
                "metadata.name",
                format!("duplicate ServiceEntry {key}"),
            );
        }
        let (hosts, vips) = service_addresses(v, s, &key, &mut host_owner);
        let service = Arc::new(Service {
            target_key: format!("Service/{}/{}", s.namespace, s.name),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            telemetry: mesh_telemetry::metrics::ServiceLabels {
                host: hosts.first().map_or(s.name.as_str(), String::as_str).into(),
                name: s.name.as_str().into(),
                namespace: s.namespace.as_str().into(),
            },
            hosts: hosts.clone(),
            vips: vips.clone(),
            waypoint: attach.resolve(
                v,
                loc,
                &s.namespace,
                &s.labels,
                &BTreeMap::new(),
                WaypointFor::Service,
            ),
            weighted_waypoints: None,
            load_balancing: super::locality::traffic_distribution(&s.annotations).unwrap_or_else(
                |e| {
                    v.err(loc, super::locality::TRAFFIC_DISTRIBUTION_FIELD, e);
                    None
                },
            ),
            visibility: super::Visibility::Public,
            canonical: false,
        });
        let selected: Vec<Arc<Workload>> = match &s.spec.workload_selector {
            Some(sel) => workloads_by_ns
                .get(s.namespace.as_str())
                .into_iter()
                .flatten()
                .filter(|w| {
                    sel.labels
                        .iter()
                        .all(|(k, val)| w.labels.get(k) == Some(val))
                })
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        service_ports(v, s, &service, &selected, (&hosts, &vips), out);
    }
}

/// A service's checked settings, host names (lower case) and VIPs.
fn service_addresses(
    v: &mut Validator,
    s: &Named<ServiceEntrySpec>,
    key: &str,
    host_owner: &mut HashMap<String, String>,
) -> (Vec<String>, Vec<IpAddr>) {
    let loc = &s.location;
    match s.spec.location.as_deref() {
        None | Some("MESH_INTERNAL") => {}
        Some(other) => v.err(
            loc,
            "spec.location",
            format!("{other:?} is not supported (only MESH_INTERNAL)"),
        ),
    }
    match s.spec.resolution.as_deref() {
        None | Some("STATIC") => {}
        Some(other) => v.err(
            loc,
            "spec.resolution",
            format!("{other:?} is not supported (only STATIC)"),
        ),
    }
    if s.spec.hosts.is_empty() {
        v.err(loc, "spec.hosts", "at least one host is required");
    }
    let mut hosts = Vec::new();
    for (i, h) in s.spec.hosts.iter().enumerate() {
        if !is_hostname(h) {
            v.err(
                loc,
                format!("spec.hosts[{i}]"),
                format!("{h:?} is not a host name (wildcards are not supported)"),
            );
            continue;
        }
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        if let Some(owner) = host_owner.insert(h.clone(), key.to_owned())
            && owner != key
        {
            v.err(
                loc,
                format!("spec.hosts[{i}]"),
                format!("{h} is also a host of ServiceEntry {owner}"),
            );
        }
        hosts.push(h);
    }
    let mut vips = Vec::new();
    for (i, a) in s.spec.addresses.iter().enumerate() {
        if let Some(ip) = parse_ip(v, loc, &format!("spec.addresses[{i}]"), a) {
            vips.push(ip);
        }
    }
    if s.spec.ports.is_empty() {
        v.err(loc, "spec.ports", "at least one port is required");
    }
    (hosts, vips)
}

/// The ports of service `s` with their endpoints, added to the indexes.
fn service_ports(
    v: &mut Validator,
    s: &Named<ServiceEntrySpec>,
    service: &Arc<Service>,
    selected: &[Arc<Workload>],
    (hosts, vips): (&[String], &[IpAddr]),
    out: &mut Built,
) {
    let loc = &s.location;
    let mut numbers = HashSet::new();
    for (i, p) in s.spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(number) = parse_port(v, loc, &format!("{field}.number"), p.number) else {
            continue;
        };
        if !numbers.insert(number) {
            v.err(
                loc,
                format!("{field}.number"),
                format!("port {number} is listed twice"),
            );
        }
        if p.name.is_empty() {
            v.err(loc, format!("{field}.name"), "a port name is required");
        }
        // Istio's protocol selection: the declared protocol, else the port name's prefix
        // (`http-web`, `grpc`), else detected from the traffic (`AUTO`, sniffed at the
        // waypoint).
        let by_name = p.name.split('-').next().and_then(Protocol::parse);
        let protocol = match &p.protocol {
            Some(x) => Protocol::parse(x).unwrap_or_else(|| {
                let names: Vec<&str> = DECLARED.iter().map(|(n, _)| *n).collect();
                v.err(
                    loc,
                    format!("{field}.protocol"),
                    format!(
                        "{:?} is not a known protocol ({names:?})",
                        x.to_ascii_uppercase()
                    ),
                );
                Protocol::Auto
            }),
            None => by_name.unwrap_or(Protocol::Auto),
        };
        let target = match p.target_port {
            Some(t) => parse_port(v, loc, &format!("{field}.targetPort"), t).unwrap_or(number),
            None => number,
        };
        // Istio: a WorkloadEntry port named like the service port wins over targetPort.
        let endpoints = selected
            .iter()
            .map(|w| Endpoint {
                workload: w.clone(),
                port: w.ports.get(&p.name).copied().unwrap_or(target),
            })
            .collect();
        let sp = Arc::new(ServicePort::new(
            service.clone(),
            number,
            p.name.clone(),
            protocol,
            endpoints,
        ));
        for vip in vips {
            let addr = SocketAddr::new(*vip, number);
            if out.by_vip.insert(addr, sp.clone()).is_some() {
                v.err(
                    loc,
                    "spec.addresses",
                    format!("{addr} is used by another ServiceEntry"),
                );
            }
            if out.by_ip.contains_key(vip) {
                v.err(
                    loc,
                    "spec.addresses",
                    format!("{vip} is also a workload address"),
                );
            }
        }
        for h in hosts {
            out.by_host
                .entry(h.clone())
                .or_default()
                .insert(number, sp.clone());
        }
        out.service_ports.push(sp);
    }
}

/// The nodes with their workloads.
fn assemble_nodes(
    specs: Vec<(String, Option<IpAddr>, Option<u16>, bool)>,
    workloads: &[Arc<Workload>],
) -> HashMap<String, Arc<Node>> {
    let mut nodes = HashMap::new();
    for (name, addr, hbone_port, service_listeners) in specs {
        let (Some(address), Some(hbone_port)) = (addr, hbone_port) else {
            continue;
        };
        let local: Vec<Arc<Workload>> = workloads
            .iter()
            .filter(|w| w.node.as_deref() == Some(name.as_str()))
            .cloned()
            .collect();
        nodes.insert(
            name.clone(),
            Arc::new(Node {
                name,
                address,
                hbone_port,
                service_listeners,
                workloads: local,
            }),
        );
    }
    nodes
}
