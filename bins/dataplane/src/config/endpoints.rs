//! Endpoint choice: a service port's endpoints and how one is picked, per connection (L4,
//! [`ServicePort::pick_with`]) and per request (L7, [`EndpointSet::choose_with`]).
//!
//! Both go through `mesh_l7::balance::pick` over a layout bound to the proxy at config swap
//! ([`EndpointRegistry::bind`](super::endpoint_stats::EndpointRegistry::bind)): nearest
//! locality tier first, healthy and untried endpoints first. An unbound set (a state never
//! applied by a proxy, as in unit tests) balances without locality on fresh stats.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use mesh_l7::balance::Balancing;
use mesh_l7::balance::hash::hash_bytes;
use mesh_l7::balance::locality::{Placement, Rank};
use mesh_l7::balance::pick::{Draw, Endpoints, Layout, pick};
use tokio::time::Instant;

use super::endpoint_stats::{EndpointRegistry, EndpointStats, Here, place_of};
use super::workload::{Service, Workload};

/// One endpoint of a service port: a workload and the port to reach it on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The workload.
    pub workload: Arc<Workload>,
    /// Its port for this service port.
    pub port: u16,
}

impl Endpoint {
    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.workload.address, self.port)
    }

    /// A stable id for hash tables: the same address keeps its place across configs.
    fn id(&self) -> u64 {
        let a = self.addr();
        match a.ip() {
            std::net::IpAddr::V4(ip) => hash_bytes(&[&ip.octets(), &a.port().to_be_bytes()]),
            std::net::IpAddr::V6(ip) => hash_bytes(&[&ip.octets(), &a.port().to_be_bytes()]),
        }
    }
}

fn ranks(eps: &[Endpoint], rule: Option<&Placement>, here: &Here, cluster: &str) -> Vec<Rank> {
    let plain = Rank {
        tier: 0,
        group: None,
    };
    let Some(rule) = rule else {
        return vec![plain; eps.len()];
    };
    let h = here.place();
    eps.iter()
        .map(|e| rule.rank(&h, &place_of(&e.workload, cluster)))
        .collect()
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
    layout: OnceLock<Layout>,
}

/// L4 endpoints are all healthy and untried, at no cost, warm.
struct Plain<'a, H> {
    eps: &'a [Endpoint],
    healthy: H,
    tried: &'a [SocketAddr],
}

impl<H: Fn(SocketAddr) -> bool> Endpoints for Plain<'_, H> {
    fn healthy(&self, i: usize) -> bool {
        self.eps.get(i).is_some_and(|e| (self.healthy)(e.addr()))
    }
    fn tried(&self, i: usize) -> bool {
        self.eps
            .get(i)
            .is_some_and(|e| self.tried.contains(&e.addr()))
    }
    fn cost(&self, _: usize) -> f64 {
        0.0
    }
    fn warmth(&self, _: usize) -> f64 {
        1.0
    }
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
            layout: OnceLock::new(),
        }
    }

    /// Binds the port's locality layout (the service's routing preference) to a proxy.
    pub(crate) fn bind(&self, here: &Here, cluster: &str) {
        let rule = self.service.load_balancing.as_ref();
        let r = ranks(&self.endpoints, rule, here, cluster);
        // Already bound (a state applied twice): the first binding stays.
        let _ = self.layout.set(Layout::build(&r, None, None, &[]));
    }

    /// Picks the next endpoint round-robin (ztunnel balances L4 connections evenly), nearest
    /// locality first; every endpoint counts as healthy.
    pub fn pick(&self) -> Option<&Endpoint> {
        self.pick_with(|_| true, &[])
    }

    /// Picks an endpoint round-robin within the nearest locality tier with a `healthy`
    /// endpoint not in `tried` (falling back to tried ones, then to any: panic mode).
    pub fn pick_with(
        &self,
        healthy: impl Fn(SocketAddr) -> bool,
        tried: &[SocketAddr],
    ) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let layout = self.layout.get_or_init(|| {
            let r = ranks(&self.endpoints, None, &Here::default(), "");
            Layout::build(&r, None, None, &[])
        });
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let view = Plain {
            eps: &self.endpoints,
            healthy,
            tried,
        };
        let draw = Draw {
            turn,
            seed: rand::random(),
            hash: None,
        };
        let i = pick(layout, mesh_l7::LoadBalancer::RoundRobin, &view, draw)?;
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
    /// Hashing, locality and warmup.
    pub balancing: Balancing,
    /// The locality rule: the `DestinationRule`'s, else the service's routing preference.
    placement: Option<Placement>,
    next: AtomicUsize,
    /// Where the proxy is and the endpoints' stats, set by [`bind`](Self::bind) (cheap).
    binding: OnceLock<Binding>,
    /// The layout and hash tables, built from the binding on first use only: a proxy that
    /// never chooses from the set (a ztunnel, an unused subset) never builds them.
    bound: OnceLock<Bound>,
}

/// What a set's layout is built from, kept until its first use.
#[derive(Debug)]
struct Binding {
    here: Arc<Here>,
    stats: Vec<Arc<EndpointStats>>,
    epoch: Instant,
}

#[derive(Debug)]
struct Bound {
    layout: Layout,
    stats: Vec<Arc<EndpointStats>>,
    epoch: Instant,
}

/// Counts one request in flight on an endpoint until dropped; with peak EWMA balancing it
/// also records the latency to the response (dropping it when the response head arrives).
#[derive(Debug)]
pub struct InFlight<'a> {
    stats: &'a EndpointStats,
    ewma: Option<(Instant, Instant)>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Some((epoch, start)) = self.ewma {
            let now = Instant::now();
            let mut e = self.stats.ewma.lock().unwrap_or_else(|p| p.into_inner());
            e.observe(
                now.saturating_duration_since(epoch),
                now.saturating_duration_since(start),
            );
        }
    }
}

struct View<'a, H> {
    set: &'a EndpointSet,
    bound: &'a Bound,
    healthy: H,
    tried: &'a [SocketAddr],
    now: Instant,
}

impl<H: Fn(SocketAddr) -> bool> Endpoints for View<'_, H> {
    fn healthy(&self, i: usize) -> bool {
        self.set
            .endpoints
            .get(i)
            .is_some_and(|e| (self.healthy)(e.addr()))
    }
    fn tried(&self, i: usize) -> bool {
        !self.tried.is_empty()
            && self
                .set
                .endpoints
                .get(i)
                .is_some_and(|e| self.tried.contains(&e.addr()))
    }
    fn cost(&self, i: usize) -> f64 {
        let Some(s) = self.bound.stats.get(i) else {
            return 0.0;
        };
        let active = s.active.load(Ordering::Relaxed);
        if self.set.lb == mesh_l7::LoadBalancer::PeakEwma {
            let e = s.ewma.lock().unwrap_or_else(|p| p.into_inner());
            e.cost(self.now.saturating_duration_since(self.bound.epoch), active)
        } else {
            active as f64
        }
    }
    fn warmth(&self, i: usize) -> f64 {
        let (Some(w), Some(s)) = (&self.set.balancing.warmup, self.bound.stats.get(i)) else {
            return 1.0;
        };
        s.first_seen
            .map_or(1.0, |t| w.factor(self.now.saturating_duration_since(t)))
    }
}

/// What one request brings to the choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct Choice<'a> {
    /// Upstream addresses earlier attempts of the request went to (retries avoid them).
    pub tried: &'a [SocketAddr],
    /// The consistent-hash key, when the set hashes and the request has one.
    pub hash: Option<u64>,
}

impl EndpointSet {
    fn new(
        endpoints: Vec<Endpoint>,
        lb: mesh_l7::LoadBalancer,
        balancing: Balancing,
        placement: Option<Placement>,
    ) -> EndpointSet {
        EndpointSet {
            endpoints,
            lb,
            balancing,
            placement,
            next: AtomicUsize::new(0),
            binding: OnceLock::new(),
            bound: OnceLock::new(),
        }
    }

    fn build(&self, here: &Here, stats: Vec<Arc<EndpointStats>>, epoch: Instant) -> Bound {
        let r = ranks(
            &self.endpoints,
            self.placement.as_ref(),
            here,
            &here.cluster,
        );
        let weights = self
            .placement
            .as_ref()
            .and_then(|p| p.weights(&here.place()));
        let ids: Vec<u64> = self.endpoints.iter().map(Endpoint::id).collect();
        let kind = self.balancing.hash.as_ref().map(|h| h.table);
        Bound {
            layout: Layout::build(&r, weights.as_deref(), kind, &ids),
            stats,
            epoch,
        }
    }

    /// Binds the set to a proxy: where the proxy is (its cluster too) and its endpoints'
    /// stats. O(endpoints); the layout and tables are built on first use.
    pub(crate) fn bind(
        &self,
        reg: &EndpointRegistry,
        here: &Arc<Here>,
        stats: &impl Fn(SocketAddr) -> Arc<EndpointStats>,
    ) {
        // Already bound (a state applied twice): the first binding stays.
        let _ = self.binding.set(Binding {
            here: here.clone(),
            stats: self.endpoints.iter().map(|e| stats(e.addr())).collect(),
            epoch: reg.epoch(),
        });
    }

    /// Whether the layout and tables are built (tests: built on first use only).
    #[cfg(test)]
    pub(crate) fn is_built(&self) -> bool {
        self.bound.get().is_some()
    }

    fn bound(&self) -> &Bound {
        self.bound.get_or_init(|| match self.binding.get() {
            Some(b) => self.build(&b.here, b.stats.clone(), b.epoch),
            None => {
                let fresh = |_| Arc::new(EndpointStats::new(None, std::time::Duration::ZERO));
                self.build(
                    &Here::default(),
                    self.endpoints.iter().map(fresh).collect(),
                    Instant::now(),
                )
            }
        })
    }

    /// Picks an endpoint by the set's balancing and counts a request in flight on it; every
    /// endpoint counts as healthy.
    pub fn choose(&self) -> Option<(&Endpoint, InFlight<'_>)> {
        self.choose_with(|_| true, Choice::default(), Instant::now())
    }

    /// Picks an endpoint: nearest locality tier with a `healthy` endpoint, not one `tried`
    /// when another is available, by the set's balancing (hash key, warmup, costs).
    pub fn choose_with(
        &self,
        healthy: impl Fn(SocketAddr) -> bool,
        req: Choice<'_>,
        now: Instant,
    ) -> Option<(&Endpoint, InFlight<'_>)> {
        let bound = self.bound();
        let view = View {
            set: self,
            bound,
            healthy,
            tried: req.tried,
            now,
        };
        let draw = Draw {
            turn: self.next.fetch_add(1, Ordering::Relaxed),
            seed: rand::random(),
            hash: req.hash,
        };
        let i = pick(&bound.layout, self.lb, &view, draw)?;
        let stats = bound.stats.get(i)?;
        stats.active.fetch_add(1, Ordering::Relaxed);
        let ewma = (self.lb == mesh_l7::LoadBalancer::PeakEwma).then_some((bound.epoch, now));
        Some((self.endpoints.get(i)?, InFlight { stats, ewma }))
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
        let preference = sp.service.load_balancing.as_ref();
        for host in &sp.service.hosts {
            let policy = policies.get(host);
            let lb = policy.map_or_else(mesh_l7::LoadBalancer::default, |p| p.lb);
            let balancing = policy.map(|p| p.balancing.clone()).unwrap_or_default();
            let placement = balancing.locality.clone().or_else(|| preference.cloned());
            out.insert(
                (host.clone(), sp.port, String::new()),
                Arc::new(EndpointSet::new(
                    sp.endpoints.clone(),
                    lb,
                    balancing,
                    placement,
                )),
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
                let placement = sub
                    .balancing
                    .locality
                    .clone()
                    .or_else(|| preference.cloned());
                out.insert(
                    (host.clone(), sp.port, sub.name.clone()),
                    Arc::new(EndpointSet::new(
                        eps,
                        sub.lb,
                        sub.balancing.clone(),
                        placement,
                    )),
                );
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "endpoints_tests.rs"]
mod tests;
