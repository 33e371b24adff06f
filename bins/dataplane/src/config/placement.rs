//! Where each workload of a mesh file runs: the `Node`s (their addresses, HBONE ports, the
//! workloads and in-pod network namespaces each lists) and the workloads with a sidecar, each
//! its own node.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::parse::{Raw, parse_ip, parse_port};
use super::{DEFAULT_HBONE_PORT, SIDECAR_LABEL, sidecar_node_name};
use crate::config::errors::Validator;

/// `(namespace, name)` of a workload.
pub(super) type Key = (String, String);

/// Where each workload runs, from the `Node`s (and sidecar labels) of the file.
#[derive(Default)]
pub(super) struct Placement {
    /// Workload → (node name, HBONE port).
    pub(super) node_of: HashMap<Key, (String, u16)>,
    /// Workload → its network namespace (in-pod).
    pub(super) netns_of: HashMap<Key, std::path::PathBuf>,
    /// Node address → node name.
    pub(super) node_addrs: HashMap<IpAddr, String>,
    /// (name, address, HBONE port, service listeners) of each node.
    pub(super) specs: Vec<(String, Option<IpAddr>, Option<u16>, bool)>,
}

/// The `Node`s: their addresses and HBONE ports, and which workloads each runs.
pub(super) fn place_on_nodes(v: &mut Validator, raw: &Raw) -> Placement {
    let mut place = Placement::default();
    let Placement {
        node_of,
        netns_of,
        node_addrs,
        specs: node_specs,
    } = &mut place;
    let mut node_names = HashSet::new();
    let wl_keys: HashSet<(String, String)> = raw
        .workloads
        .iter()
        .map(|w| (w.namespace.clone(), w.name.clone()))
        .collect();
    for n in &raw.nodes {
        if !node_names.insert(n.name.clone()) {
            v.err(
                &n.location,
                "metadata.name",
                format!("duplicate Node {:?}", n.name),
            );
        }
        let addr = parse_ip(v, &n.location, "spec.address", &n.spec.address);
        if let Some(a) = addr
            && let Some(other) = node_addrs.insert(a, n.name.clone())
        {
            v.err(
                &n.location,
                "spec.address",
                format!("{a} is also the address of Node {other:?}"),
            );
        }
        let hbone_port = match n.spec.hbone_port {
            None => Some(DEFAULT_HBONE_PORT),
            Some(p) => parse_port(v, &n.location, "spec.hbonePort", p),
        };
        for (i, w) in n.spec.workloads.iter().enumerate() {
            let (ns, name) = w.split_once('/').unwrap_or(("default", w.as_str()));
            let key = (ns.to_owned(), name.to_owned());
            let field = format!("spec.workloads[{i}]");
            if !wl_keys.contains(&key) {
                v.err(&n.location, field, format!("no WorkloadEntry {ns}/{name}"));
            } else if let Some((other, _)) = node_of.get(&key) {
                v.err(
                    &n.location,
                    field,
                    format!("{ns}/{name} is already on Node {other:?}"),
                );
            } else {
                node_of.insert(
                    key,
                    (n.name.clone(), hbone_port.unwrap_or(DEFAULT_HBONE_PORT)),
                );
            }
        }
        for (w, path) in &n.spec.netns {
            let (ns, name) = w.split_once('/').unwrap_or(("default", w.as_str()));
            let key = (ns.to_owned(), name.to_owned());
            let field = format!("spec.netns.{w}");
            if node_of.get(&key).map(|(node, _)| node.as_str()) != Some(n.name.as_str()) {
                v.err(
                    &n.location,
                    field,
                    format!("{ns}/{name} is not one of this node's workloads"),
                );
            } else if !path.starts_with('/') {
                v.err(
                    &n.location,
                    field,
                    format!("{path:?} is not an absolute path to a network namespace"),
                );
            } else {
                netns_of.insert(key, std::path::PathBuf::from(path));
            }
        }
        node_specs.push((n.name.clone(), addr, hbone_port, n.spec.service_listeners));
    }
    place
}

/// Workloads with a sidecar: each is its own node.
pub(super) fn place_sidecars(v: &mut Validator, raw: &Raw, place: &mut Placement) {
    // A workload with a sidecar (Istio's `sidecar.istio.io/inject: "true"` label) is its own
    // node: its sidecar serves only it, at its address, with HBONE on 15008 as a ztunnel would,
    // so peers reach sidecar and ambient workloads alike.
    for w in &raw.workloads {
        if w.spec.labels.get(SIDECAR_LABEL).map(String::as_str) != Some("true") {
            continue;
        }
        let key = (w.namespace.clone(), w.name.clone());
        if let Some((other, _)) = place.node_of.get(&key) {
            v.err(
                &w.location,
                format!("metadata.labels.{SIDECAR_LABEL}"),
                format!(
                    "{}/{} has a sidecar and cannot also be on Node {other:?}",
                    w.namespace, w.name
                ),
            );
            continue;
        }
        let name = sidecar_node_name(&w.namespace, &w.name);
        place
            .node_of
            .insert(key, (name.clone(), DEFAULT_HBONE_PORT));
        let addr = w.spec.address.parse::<IpAddr>().ok();
        place
            .specs
            .push((name, addr, Some(DEFAULT_HBONE_PORT), false));
    }
}
