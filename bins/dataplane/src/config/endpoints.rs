//! Endpoint choice: a service port's endpoints and how one is picked, per connection (L4,
//! [`ServicePort::pick`]) and per request (L7, [`EndpointSet::choose`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::state::{Service, Workload};

/// One endpoint of a service port: a workload and the port to reach it on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The workload.
    pub workload: Arc<Workload>,
    /// Its port for this service port.
    pub port: u16,
}

/// A service port with its endpoints resolved at config time.
#[derive(Debug)]
pub struct ServicePort {
    /// The service.
    pub service: Arc<Service>,
    /// Service port number.
    pub port: u16,
    /// Port name.
    pub name: String,
    /// Declared protocol.
    pub protocol: super::protocol::Protocol,
    /// Endpoints, in config order.
    pub endpoints: Vec<Endpoint>,
    next: AtomicUsize,
}

impl ServicePort {
    pub(crate) fn new(
        service: Arc<Service>,
        port: u16,
        name: String,
        protocol: super::protocol::Protocol,
        endpoints: Vec<Endpoint>,
    ) -> Self {
        ServicePort {
            service,
            port,
            name,
            protocol,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks the next endpoint round-robin (ztunnel balances L4 connections evenly).
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i)
    }
}

/// The endpoints of one service port (or of one of its `DestinationRule` subsets) with their
/// load balancing and requests in flight, for per-request (L7) balancing.
#[derive(Debug)]
pub struct EndpointSet {
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Balancing.
    pub lb: mesh_l7::LoadBalancer,
    active: Vec<AtomicUsize>,
    next: AtomicUsize,
}

/// Counts one request in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointSet {
    fn new(endpoints: Vec<Endpoint>, lb: mesh_l7::LoadBalancer) -> EndpointSet {
        EndpointSet {
            active: endpoints.iter().map(|_| AtomicUsize::new(0)).collect(),
            endpoints,
            lb,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks an endpoint by the set's balancing and counts a request in flight on it.
    pub fn choose(&self) -> Option<(&Endpoint, InFlight<'_>)> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let i = mesh_l7::choose(
            self.lb,
            self.endpoints.len(),
            turn,
            rand::random(),
            rand::random(),
            |i| self.active.get(i).map_or(0, |a| a.load(Ordering::Relaxed)),
        )?;
        let active = self.active.get(i)?;
        active.fetch_add(1, Ordering::Relaxed);
        Some((self.endpoints.get(i)?, InFlight(active)))
    }
}

/// The endpoint sets of every service port: all its endpoints (the host's balancing), and
/// each `DestinationRule` subset's (endpoints whose workload carries the subset's labels).
pub(crate) fn endpoint_sets(
    service_ports: &[Arc<ServicePort>],
    policies: &HashMap<String, mesh_l7::DestinationPolicy>,
) -> HashMap<(String, u16, String), Arc<EndpointSet>> {
    let mut out = HashMap::new();
    for sp in service_ports {
        for host in &sp.service.hosts {
            let policy = policies.get(host);
            let lb = policy.map_or_else(mesh_l7::LoadBalancer::default, |p| p.lb);
            out.insert(
                (host.clone(), sp.port, String::new()),
                Arc::new(EndpointSet::new(sp.endpoints.clone(), lb)),
            );
            for sub in policy.map(|p| p.subsets.as_slice()).unwrap_or_default() {
                let eps = sp
                    .endpoints
                    .iter()
                    .filter(|e| {
                        sub.labels
                            .iter()
                            .all(|(k, v)| e.workload.labels.get(k) == Some(v))
                    })
                    .cloned()
                    .collect();
                out.insert(
                    (host.clone(), sp.port, sub.name.clone()),
                    Arc::new(EndpointSet::new(eps, sub.lb)),
                );
            }
        }
    }
    out
}
