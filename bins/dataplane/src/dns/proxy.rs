//! The DNS proxy of one proxy process ([`DnsProxy`]): its settings, the upstream relay and
//! the index of the current state, shared by all its listeners.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use super::forward::Forwarder;
use super::index::DnsIndex;
use super::metrics::{DnsMetrics, Source};
use super::resolv;
use super::settings::{DnsError, DnsLimits, DnsSettings};
use crate::config::MeshState;

/// What the listeners answer from, published at each applied state.
#[derive(Debug, Default)]
struct Published {
    index: Arc<DnsIndex>,
    /// The local workloads' namespaces by address (for the node listener).
    locals: HashMap<IpAddr, String>,
    /// Their canonical service and revision, for the metrics' source labels.
    sources: HashMap<IpAddr, Source>,
}

/// The DNS proxy of one proxy process: its settings, the upstream relay and the index of the
/// current state, shared by all its listeners.
#[derive(Debug)]
pub struct DnsProxy {
    settings: DnsSettings,
    forwarder: Arc<Forwarder>,
    published: ArcSwap<Published>,
    metrics: DnsMetrics,
    /// Queries with the upstreams, all listeners together (`max_forwarded_total`).
    forwarding: Arc<Semaphore>,
    /// Open TCP clients, all listeners together (`max_tcp_connections_total`).
    tcp_clients: Arc<Semaphore>,
}

impl DnsProxy {
    /// A proxy with `settings` (its upstreams read from `settings.resolv_conf` when set) and
    /// an empty index.
    ///
    /// # Errors
    /// [`DnsError::ResolvConf`] when the `resolv.conf` cannot be read or names no server.
    pub fn new(settings: DnsSettings) -> Result<Arc<DnsProxy>, DnsError> {
        DnsProxy::with_metrics(settings, DnsMetrics::default())
    }

    /// [`DnsProxy::new`], recording into `metrics`.
    ///
    /// # Errors
    /// As [`DnsProxy::new`].
    pub fn with_metrics(
        mut settings: DnsSettings,
        metrics: DnsMetrics,
    ) -> Result<Arc<DnsProxy>, DnsError> {
        if let Some(path) = &settings.resolv_conf {
            settings.upstreams = resolv::load(path)?;
        }
        let forwarder = Forwarder::new(settings.upstreams.clone(), settings.forward_timeout);
        let cap = |n: usize| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)));
        let forwarding = cap(settings.limits.max_forwarded_total);
        let tcp_clients = cap(settings.limits.max_tcp_connections_total);
        Ok(Arc::new(DnsProxy {
            settings,
            forwarder,
            published: ArcSwap::from_pointee(Published::default()),
            metrics,
            forwarding,
            tcp_clients,
        }))
    }

    /// Its settings.
    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// The listener bounds.
    pub fn limits(&self) -> &DnsLimits {
        &self.settings.limits
    }

    /// The proxy-wide forwarded-query slots, shared by its listeners.
    pub(super) fn forwarding(&self) -> &Arc<Semaphore> {
        &self.forwarding
    }

    /// The proxy-wide TCP client slots, shared by its listeners.
    pub(super) fn tcp_clients(&self) -> &Arc<Semaphore> {
        &self.tcp_clients
    }

    /// Its metrics.
    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    /// The upstream relay.
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// Rebuilds the index for `state` (called when a state is applied) and the namespaces of
    /// `node`'s workloads.
    pub fn update(&self, state: &MeshState, node: &str) {
        let index = DnsIndex::build(state, &self.settings.cluster_domain);
        let workloads = state.node(node).map(|n| n.workloads.as_slice());
        let locals = workloads
            .unwrap_or_default()
            .iter()
            .map(|w| (w.address, w.namespace.clone()))
            .collect();
        let sources = workloads
            .unwrap_or_default()
            .iter()
            .map(|w| (w.address, source(w)))
            .collect();
        self.published.store(Arc::new(Published {
            index: Arc::new(index),
            locals,
            sources,
        }));
    }

    /// Publishes `index`, and `locals` (client address → namespace) for listeners that know
    /// their clients by address.
    pub fn publish(&self, index: DnsIndex, locals: HashMap<IpAddr, String>) {
        self.published.store(Arc::new(Published {
            index: Arc::new(index),
            locals,
            sources: HashMap::new(),
        }));
    }

    /// The current index.
    pub fn index(&self) -> Arc<DnsIndex> {
        self.published.load().index.clone()
    }

    /// The namespace of the local workload at `ip`.
    pub fn namespace_of(&self, ip: IpAddr) -> Option<String> {
        self.published.load().locals.get(&ip).cloned()
    }

    /// The metrics' source labels of the local workload at `ip`.
    pub fn source_of(&self, ip: IpAddr) -> Source {
        self.published
            .load()
            .sources
            .get(&ip)
            .cloned()
            .unwrap_or_default()
    }
}

/// `w`'s canonical service and revision.
pub fn source(w: &crate::config::Workload) -> Source {
    Source {
        service: Arc::from(w.canonical_service()),
        revision: Arc::from(w.canonical_revision()),
    }
}
