//! Which namespaces concern a proxy ([`KubeScope::namespaces`]): where the Kubernetes source
//! watches. Istio's istiod gives a waypoint the routes and policies of the services bound to
//! it (their namespaces), those attached to its own `Gateway` (its namespace) and the mesh-wide
//! ones (the root namespace); a sidecar routes to every service, so it needs every service's
//! namespace. One rule covers both: the namespaces of the services whose routes this proxy
//! applies, plus its own and the root.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::super::state::MeshState;

/// What decides the namespaces of a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeScope {
    /// The proxy's own namespace (its `Gateway`'s, or its workload's).
    pub own_namespace: String,
    /// The proxy's own address: a service whose waypoint is at this address is served here.
    pub own_address: IpAddr,
    /// Whether this proxy routes to every service (its outbound HTTP layer is on).
    pub every_service: bool,
    /// Namespaces watched at most (own and root always); past it the rest are left out,
    /// reported by [`KubeScope::namespaces`].
    pub max_namespaces: usize,
}

impl KubeScope {
    /// The namespaces that concern this proxy in `state`, at most `max_namespaces` (own and
    /// root first, then the others in name order), and how many were left out.
    pub fn namespaces(&self, state: &MeshState) -> (BTreeSet<String>, usize) {
        let mut wanted = BTreeSet::new();
        let ours = |wp: &Option<std::sync::Arc<super::super::Waypoint>>| {
            wp.as_ref().is_some_and(|w| w.address == self.own_address)
        };
        for sp in &state.service_ports {
            if self.every_service || ours(&sp.service.waypoint) {
                wanted.insert(sp.service.namespace.as_str());
            }
        }
        for w in &state.workloads {
            if ours(&w.waypoint) {
                wanted.insert(w.namespace.as_str());
            }
        }
        let mut out = BTreeSet::new();
        out.insert(self.own_namespace.clone());
        out.insert(state.root_namespace.clone());
        let mut left_out = 0;
        for ns in wanted {
            if out.contains(ns) {
                continue;
            }
            if out.len() >= self.max_namespaces.max(2) {
                left_out += 1;
            } else {
                out.insert(ns.to_owned());
            }
        }
        (out, left_out)
    }
}
