//! What a proxy serves, as listener plans: the workloads of a `Node` (inbound HBONE per
//! workload or in-pod, SOCKS5, plaintext, captured outbound, service VIPs) or a waypoint
//! `Gateway` (one HBONE listener). Mechanisms of the core; `crate::roles` picks one per role.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::pods::{Placement, PodTable};
use super::role::{InPodKind, Layers, ListenerAddrs, ListenerKey, NetnsKey, Plan, Role, Serves};
use crate::Error;
use crate::config::MeshState;

/// The listeners of `Node` `node` (a ztunnel's, or a sidecar's node of one workload).
pub(crate) fn node(node: &str) -> Arc<dyn Serves> {
    Arc::new(NodeListeners {
        node: node.to_owned(),
    })
}

impl Default for Role {
    /// A node's L4 proxy for an unnamed node (set the role before starting).
    fn default() -> Role {
        Role::new("ztunnel", node(""), Layers::default())
    }
}

/// The one HBONE listener of waypoint `Gateway` `gateway` (`namespace/name`).
pub(crate) fn gateway(gateway: &str) -> Arc<dyn Serves> {
    Arc::new(GatewayListener {
        gateway: gateway.to_owned(),
    })
}

struct NodeListeners {
    node: String,
}

/// Istio's captured-outbound port, inside each in-pod workload's namespace.
const OUTBOUND_PORT: u16 = 15001;
/// Istio's plaintext inbound port, inside each in-pod workload's namespace.
const PLAINTEXT_PORT: u16 = 15006;
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

impl Serves for NodeListeners {
    fn key(&self) -> &str {
        &self.node
    }

    fn check(&self, state: &MeshState) -> Result<(), Error> {
        match state.node(&self.node) {
            Some(_) => Ok(()),
            None => Err(Error::UnknownNode(self.node.clone())),
        }
    }

    fn plan(
        &self,
        addrs: &ListenerAddrs,
        state: &MeshState,
        pods: &PodTable,
    ) -> Result<Plan, Error> {
        let node = state
            .node(&self.node)
            .ok_or_else(|| Error::UnknownNode(self.node.clone()))?;
        let mut desired: Vec<(ListenerKey, String)> = Vec::new();
        let mut identities = Vec::new();
        for w in &node.workloads {
            let ns = match (&w.netns, pods.placement(w)) {
                (Some(path), _) => Some(NetnsKey::Path(path.clone())),
                (None, Placement::Host) => None,
                (None, Placement::Pod(uid)) => Some(NetnsKey::Pod(uid.to_owned())),
                // ZDS: no pod for it yet, nothing to serve (as Istio, no proxy before the
                // agent hands the pod over).
                (None, Placement::Wait) => continue,
            };
            workload_listeners(&mut desired, w, ns, node.hbone_port);
            identities.push((w.address, w.identity.clone()));
        }
        undescribed_pods(&mut desired, node, pods);
        if let Some(addr) = addrs.socks5 {
            desired.push((ListenerKey::Socks5(addr), format!("node {}", node.name)));
        }
        if let Some(addr) = addrs.plaintext {
            desired.push((
                ListenerKey::Plaintext(addr),
                format!("node {} plaintext inbound", node.name),
            ));
        }
        for addr in [addrs.outbound, addrs.outbound_v6].into_iter().flatten() {
            desired.push((
                ListenerKey::Outbound(addr),
                format!("node {} captured outbound", node.name),
            ));
        }
        if node.service_listeners {
            vip_listeners(&mut desired, state);
        }
        super::dns_listen::plan(&mut desired, addrs);
        Ok(Plan {
            desired,
            identities,
        })
    }

    fn jwks(
        &self,
        layers: Layers,
        state: &MeshState,
    ) -> Vec<(mesh_authz::jwt::KeySource, Duration)> {
        // Only the server-side HTTP layer authenticates requests on a node.
        if !layers.inbound_http {
            return Vec::new();
        }
        let Some(node) = state.node(&self.node) else {
            return Vec::new();
        };
        node.workloads
            .iter()
            .filter_map(|w| state.sidecar_authn.get(&w.key()))
            .flat_map(|a| a.rules())
            .map(|r| (r.keys.clone(), r.timeout))
            .collect()
    }
}

/// A local workload's listeners: inbound HBONE on its address, or, in-pod, inbound HBONE,
/// captured outbound and plaintext inbound inside its network namespace.
fn workload_listeners(
    desired: &mut Vec<(ListenerKey, String)>,
    w: &crate::config::Workload,
    ns: Option<NetnsKey>,
    hbone_port: u16,
) {
    let addr = SocketAddr::new(w.address, hbone_port);
    let Some(ns) = ns else {
        desired.push((ListenerKey::Hbone(addr), w.key()));
        return;
    };
    // A ZDS pod's inbound listeners are on the wildcard address (transparent), as Istio's
    // ztunnel binds them (`*:15008`, `*:15006`): istio-cni's in-pod rules TPROXY inbound to
    // them with the original destination kept.
    let ip = match ns {
        NetnsKey::Pod(_) if w.address.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        NetnsKey::Pod(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        NetnsKey::Path(_) => w.address,
    };
    in_pod_listeners(desired, &w.key(), ns, ip, hbone_port);
}

/// The in-pod listeners of workload `key` in namespace `ns`: inbound HBONE and plaintext on
/// `ip`, captured outbound on the namespace's loopback (one per namespace).
pub(super) fn in_pod_listeners(
    desired: &mut Vec<(ListenerKey, String)>,
    key: &str,
    ns: NetnsKey,
    ip: IpAddr,
    hbone_port: u16,
) {
    let addr = SocketAddr::new(ip, hbone_port);
    let in_pod = |kind, addr| ListenerKey::InPod(ns.clone(), kind, addr);
    desired.push((in_pod(InPodKind::Hbone, addr), format!("{key} (in-pod)")));
    let outbound = in_pod(
        InPodKind::Outbound,
        SocketAddr::new(LOCALHOST, OUTBOUND_PORT),
    );
    if !desired.iter().any(|(k, _)| *k == outbound) {
        desired.push((outbound, format!("{key} captured outbound (in-pod)")));
    }
    desired.push((
        in_pod(InPodKind::Plaintext, SocketAddr::new(ip, PLAINTEXT_PORT)),
        format!("{key} plaintext inbound (in-pod)"),
    ));
}

/// The in-pod listeners of the ZDS pods istiod has not described yet (no workload of this
/// node has their namespace and name): bound when the agent hands the pod over, before it is
/// acked, as Istio's ztunnel does (`src/inpod/statemanager.rs` starts the pod's proxy on the
/// Add), so the pod's captured traffic never meets a closed port. Their connections wait for
/// the workload (`outbound_src`); inbound has no certificate for them until then. The keys are
/// those the workload's own listeners will have (IPv4 wildcard), so nothing is re-bound when
/// istiod describes it. A pod shadowed by a later one of the same name, or whose workload's
/// identity disagrees with it, gets none; nor does one whose namespace already has in-pod
/// listeners (one set per namespace: a second bind of `*:15008` there would fail).
fn undescribed_pods(
    desired: &mut Vec<(ListenerKey, String)>,
    node: &crate::config::Node,
    pods: &PodTable,
) {
    if !pods.enabled {
        return;
    }
    let mut waiting: Vec<_> = pods
        .pods()
        .values()
        .filter(|p| {
            let i = &p.info;
            pods.by_name(&i.namespace, &i.name)
                .is_some_and(|q| q.info.uid == i.uid)
                && !node
                    .workloads
                    .iter()
                    .any(|w| w.namespace == i.namespace && w.name == i.name)
        })
        .collect();
    waiting.sort_by(|a, b| a.info.uid.cmp(&b.info.uid));
    let mut open: Vec<&std::sync::Arc<crate::sockets::Netns>> = desired
        .iter()
        .filter_map(|(k, _)| match k {
            ListenerKey::InPod(NetnsKey::Pod(uid), _, _) => pods.get(uid).map(|p| &p.netns),
            _ => None,
        })
        .collect();
    for p in waiting {
        if open.iter().any(|n| Arc::ptr_eq(n, &p.netns)) {
            continue;
        }
        open.push(&p.netns);
        let key = format!("{}/{}", p.info.namespace, p.info.name);
        let ns = NetnsKey::Pod(p.info.uid.clone());
        let ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        in_pod_listeners(desired, &key, ns, ip, node.hbone_port);
    }
}

/// One listener per service VIP:port, in address order.
fn vip_listeners(desired: &mut Vec<(ListenerKey, String)>, state: &MeshState) {
    let mut vips: Vec<_> = state.vips().collect();
    vips.sort_by_key(|(a, _)| **a);
    for (addr, sp) in vips {
        let what = format!(
            "{}/{} ({})",
            sp.service.namespace,
            sp.service.name,
            sp.service.hosts.first().map_or("", String::as_str)
        );
        desired.push((ListenerKey::Service(*addr), what));
    }
}

struct GatewayListener {
    gateway: String,
}

impl Serves for GatewayListener {
    fn key(&self) -> &str {
        &self.gateway
    }

    fn check(&self, state: &MeshState) -> Result<(), Error> {
        match state.waypoints.contains_key(&self.gateway) {
            true => Ok(()),
            false => Err(Error::UnknownWaypoint(self.gateway.clone())),
        }
    }

    fn plan(
        &self,
        _addrs: &ListenerAddrs,
        state: &MeshState,
        _pods: &PodTable,
    ) -> Result<Plan, Error> {
        let wp = state
            .waypoints
            .get(&self.gateway)
            .ok_or_else(|| Error::UnknownWaypoint(self.gateway.clone()))?;
        Ok(Plan {
            desired: vec![(
                ListenerKey::Waypoint(wp.hbone_addr()),
                format!("waypoint {}", self.gateway),
            )],
            identities: vec![(wp.address, wp.identity.clone())],
        })
    }

    fn jwks(
        &self,
        _layers: Layers,
        state: &MeshState,
    ) -> Vec<(mesh_authz::jwt::KeySource, Duration)> {
        state
            .waypoint_authn
            .values()
            .flat_map(|a| a.rules())
            .map(|r| (r.keys.clone(), r.timeout))
            .collect()
    }
}
