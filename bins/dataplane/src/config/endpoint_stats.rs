//! Per-endpoint state that outlives a config: when the proxy first saw an endpoint (warmup),
//! its requests in flight and its latency estimate (peak EWMA), in a map keyed by endpoint
//! address ([`EndpointRegistry`]), one per proxy.
//!
//! [`EndpointRegistry::bind`] (in [`super::bind`], which reads the state) runs at each config swap, before the new state is published: it
//! prunes the endpoints that left, adds the new ones (first seen now; those of the first
//! config are warm), and binds every endpoint set and service port of the new state to this
//! proxy: the stats of its endpoints and its locality layout. Requests then never touch the
//! map. Bounded: entries only for endpoints of the current config, at most [`MAX_TRACKED`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_l7::balance::ewma::PeakEwma;
use mesh_l7::balance::locality::{Locality, Place};
use tokio::time::Instant;

use super::workload::Workload;

/// Most endpoints tracked; beyond, new endpoints get fresh (unshared) stats.
pub(crate) const MAX_TRACKED: usize = 65_536;

/// One endpoint's state.
#[derive(Debug)]
pub(crate) struct EndpointStats {
    /// When the proxy first saw it (`None`: it was there from the start, warm).
    pub first_seen: Option<Instant>,
    /// Requests in flight.
    pub active: std::sync::atomic::AtomicUsize,
    /// Latency estimate (read and updated without awaiting).
    pub ewma: Mutex<PeakEwma>,
}

impl EndpointStats {
    pub(crate) fn new(first_seen: Option<Instant>, since_epoch: Duration) -> EndpointStats {
        EndpointStats {
            first_seen,
            active: std::sync::atomic::AtomicUsize::new(0),
            ewma: Mutex::new(PeakEwma::new(since_epoch)),
        }
    }
}

/// The endpoint stats of one proxy, kept across config swaps.
#[derive(Debug)]
pub struct EndpointRegistry {
    epoch: Instant,
    map: Mutex<Option<HashMap<SocketAddr, Arc<EndpointStats>>>>,
}

impl Default for EndpointRegistry {
    fn default() -> Self {
        EndpointRegistry {
            epoch: Instant::now(),
            map: Mutex::new(None),
        }
    }
}

/// Where the proxy is, for locality rules: the node it runs on and the locality and labels of
/// the first workload there with a locality (a ztunnel's node's; a sidecar's own), or for a
/// waypoint (`node` is its Gateway's `namespace/name`) the workload at its address (its pod).
#[derive(Debug, Clone, Default)]
pub struct Here {
    /// Node name.
    pub node: String,
    /// Locality.
    pub locality: Option<Locality>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Cluster.
    pub cluster: String,
}

impl Here {
    /// As a [`Place`].
    pub fn place(&self) -> Place<'_> {
        Place {
            locality: self.locality.as_ref(),
            node: Some(self.node.as_str()),
            cluster: &self.cluster,
            network: "",
            labels: Some(&self.labels),
        }
    }
}

/// An endpoint's [`Place`].
pub(crate) fn place_of<'a>(w: &'a Workload, cluster: &'a str) -> Place<'a> {
    Place {
        locality: w.locality.as_ref(),
        node: w.node.as_deref(),
        cluster,
        network: "",
        labels: Some(&w.labels),
    }
}

impl EndpointRegistry {
    /// The time base of latency estimates.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// How many endpoints are tracked.
    pub fn tracked(&self) -> usize {
        let guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map_or(0, HashMap::len)
    }

    /// Time since [`epoch`](Self::epoch).
    pub fn since_epoch(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    /// The stats of `addrs`, made for the new ones; every other entry is dropped.
    pub(super) fn stats_for(
        &self,
        addrs: &[SocketAddr],
        now: Instant,
    ) -> HashMap<SocketAddr, Arc<EndpointStats>> {
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // The first config's endpoints are not warming (Envoy: hosts present when the cluster
        // initializes skip slow start).
        let first = guard.is_none();
        let old = guard.take().unwrap_or_default();
        let mut next = HashMap::with_capacity(addrs.len().min(MAX_TRACKED));
        for a in addrs {
            if next.contains_key(a) {
                continue;
            }
            let s = match old.get(a) {
                Some(s) => s.clone(),
                None if next.len() >= MAX_TRACKED => continue,
                None => Arc::new(EndpointStats::new(
                    (!first).then_some(now),
                    self.since_epoch(now),
                )),
            };
            next.insert(*a, s);
        }
        let out = next.clone();
        *guard = Some(next);
        out
    }
}
