//! Binding a new mesh state to this proxy's endpoint stats and place ([`Here`]): the part
//! of [`EndpointRegistry`] that reads the whole [`MeshState`], kept apart from the registry
//! so that the endpoint sets (which the state holds) do not depend on the state.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::endpoint_stats::{EndpointRegistry, EndpointStats, Here};
use super::state::MeshState;

impl Here {
    /// The proxy on `node` in `state`.
    pub fn of(state: &MeshState, node: &str) -> Here {
        let own = state
            .node(node)
            .and_then(|n| n.workloads.iter().find(|w| w.locality.is_some()))
            .or_else(|| {
                // A sidecar's node may have no `Node` entry: its workloads.
                state
                    .workloads
                    .iter()
                    .find(|w| w.node.as_deref() == Some(node) && w.locality.is_some())
            })
            .or_else(|| {
                let wp = state.waypoints.get(node)?;
                state.workload_by_ip(wp.address)
            });
        Here {
            node: node.to_owned(),
            locality: own.and_then(|w| w.locality.clone()),
            labels: own.map(|w| w.labels.clone()).unwrap_or_default(),
            cluster: state.cluster_id.clone(),
        }
    }
}

impl EndpointRegistry {
    /// Binds `state`'s endpoint sets and service ports to this proxy (on `node`), pruning the
    /// endpoints that left. Call before publishing `state`. O(endpoints): a set's layout and
    /// hash tables are built when it is first chosen from, so a proxy that never uses a set
    /// (a ztunnel, an unused subset) never builds them.
    pub fn bind(&self, state: &MeshState, node: &str) {
        let now = Instant::now();
        let here = Arc::new(Here::of(state, node));
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for set in state.endpoint_sets.values() {
            addrs.extend(set.endpoints.iter().map(|e| e.addr()));
        }
        let stats = self.stats_for(&addrs, now);
        let lookup = |a: SocketAddr| {
            stats
                .get(&a)
                .cloned()
                .unwrap_or_else(|| Arc::new(EndpointStats::new(None, self.since_epoch(now))))
        };
        for set in state.endpoint_sets.values() {
            set.bind(self, &here, &lookup);
        }
        for sp in &state.service_ports {
            sp.bind(&here, &state.cluster_id);
        }
    }
}
