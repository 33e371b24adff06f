//! The DNS view of a mesh state ([`DnsIndex`]): every service host name, and every endpoint
//! host name of a Kubernetes headless service, in hash maps built once per state, so a query is
//! a few map lookups, never a scan of the services.
//!
//! What is indexed follows Istio's ztunnel (`src/dns/server.rs`): a host with VIPs answers with
//! its VIPs; a host without VIPs is answered only when it is a Kubernetes service name
//! (`*.svc.<cluster domain>`, a headless service: its endpoints' addresses), else it is left
//! to the upstream resolvers (Istio ztunnel #909: a `ServiceEntry` without addresses is not
//! headless).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{MeshState, Visibility};

/// One endpoint of a service port, as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEndpoint {
    /// The endpoint workload's address.
    pub address: IpAddr,
    /// Its port for this service port (the target port).
    pub port: u16,
}

/// One service port, as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPort {
    /// The port name (`_<name>._tcp` in SRV names).
    pub name: String,
    /// The service port.
    pub port: u16,
    /// Its endpoints.
    pub endpoints: Vec<DnsEndpoint>,
}

/// A service, as DNS sees it: the input of [`DnsIndex::from_services`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsService {
    /// Its namespace.
    pub namespace: String,
    /// Its host names.
    pub hosts: Vec<String>,
    /// Its VIPs (empty: headless, or a `ServiceEntry` without addresses).
    pub vips: Vec<IpAddr>,
    /// Who may resolve it.
    pub visibility: Visibility,
    /// Preferred among services sharing a host name (workload API `canonical`).
    pub canonical: bool,
    /// Its ports.
    pub ports: Vec<DnsPort>,
}

/// A host name the proxy answers for.
#[derive(Debug)]
pub(crate) struct HostEntry {
    pub(crate) namespace: String,
    pub(crate) visibility: Visibility,
    pub(crate) canonical: bool,
    /// The addresses A/AAAA queries get: the VIPs, or a headless service's endpoints.
    pub(crate) addrs: Vec<IpAddr>,
    /// Whether it is a Kubernetes service name (SRV records are answered only for those).
    pub(crate) kube: bool,
    pub(crate) headless: bool,
    /// The host name, lower case, without the trailing dot.
    pub(crate) host: String,
    pub(crate) ports: Vec<DnsPort>,
}

impl HostEntry {
    fn visible_to(&self, client_namespace: &str) -> bool {
        self.visibility
            .visible_to(&self.namespace, client_namespace)
    }
}

/// An endpoint host name of a headless service (`<a-b-c-d>.<svc>.<ns>.svc.<domain>`).
#[derive(Debug)]
pub(crate) struct PodEntry {
    pub(crate) namespace: String,
    pub(crate) visibility: Visibility,
    pub(crate) address: IpAddr,
}

/// The lookup tables of one mesh state; immutable once built.
#[derive(Debug, Default)]
pub struct DnsIndex {
    domain: String,
    hosts: HashMap<String, Vec<Arc<HostEntry>>>,
    pods: HashMap<String, Vec<PodEntry>>,
    /// Whether any host is a wildcard (`*.example.com`): only then are wildcard forms tried.
    wildcards: bool,
}

/// Kubernetes' DNS name of an endpoint without a hostname: its address with `-` for the
/// separators (CoreDNS `kubernetes` plugin: `1-2-3-4`, `2001-db8--1`).
pub(crate) fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

impl DnsIndex {
    /// The index of `state`'s services, Kubernetes names under `domain` (`cluster.local`).
    pub fn build(state: &MeshState, domain: &str) -> DnsIndex {
        DnsIndex::from_services(domain, services_of(state))
    }

    /// The index of `services`, Kubernetes names under `domain`.
    pub fn from_services(domain: &str, services: Vec<DnsService>) -> DnsIndex {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let kube_suffix = format!(".svc.{domain}");
        let mut index = DnsIndex {
            domain,
            ..DnsIndex::default()
        };
        for svc in services {
            index.add(svc, &kube_suffix);
        }
        index
    }

    fn add(&mut self, svc: DnsService, kube_suffix: &str) {
        let mut endpoint_addrs: Vec<IpAddr> = svc
            .ports
            .iter()
            .flat_map(|p| p.endpoints.iter().map(|e| e.address))
            .collect();
        endpoint_addrs.sort_unstable();
        endpoint_addrs.dedup();
        for host in &svc.hosts {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            let kube = host.ends_with(kube_suffix);
            let headless = svc.vips.is_empty();
            // Istio ztunnel: a host without VIPs is answered only as a Kubernetes headless
            // service; any other is forwarded.
            if headless && !kube {
                continue;
            }
            let addrs = if headless {
                endpoint_addrs.clone()
            } else {
                svc.vips.clone()
            };
            if headless {
                for ip in &endpoint_addrs {
                    self.pods
                        .entry(format!("{}.{host}", dashed(*ip)))
                        .or_default()
                        .push(PodEntry {
                            namespace: svc.namespace.clone(),
                            visibility: svc.visibility,
                            address: *ip,
                        });
                }
            }
            self.wildcards |= host.starts_with("*.");
            let entry = HostEntry {
                namespace: svc.namespace.clone(),
                visibility: svc.visibility,
                canonical: svc.canonical,
                addrs,
                kube,
                headless,
                host: host.clone(),
                ports: svc.ports.clone(),
            };
            self.hosts.entry(host).or_default().push(Arc::new(entry));
        }
    }

    /// Whether any host is a wildcard.
    pub(crate) fn has_wildcards(&self) -> bool {
        self.wildcards
    }

    /// The cluster domain, lower case, without dots at the ends.
    pub(crate) fn domain(&self) -> &str {
        &self.domain
    }

    /// The service host `name` (lower case, no trailing dot) visible to a client in
    /// `client_namespace`: the one in the client's namespace, else a canonical one, else the
    /// first (Istio ztunnel `ServiceMatch::find_best_match`).
    pub(crate) fn host(&self, name: &str, client_namespace: &str) -> Option<&Arc<HostEntry>> {
        let all = self.hosts.get(name)?;
        let mut visible = all.iter().filter(|e| e.visible_to(client_namespace));
        let first = visible.next()?;
        let mut best = first;
        for e in std::iter::once(first).chain(visible) {
            if e.namespace == client_namespace {
                return Some(e);
            }
            if e.canonical && !best.canonical {
                best = e;
            }
        }
        Some(best)
    }

    /// The addresses of endpoint host `name` visible to a client in `client_namespace`.
    pub(crate) fn pod(&self, name: &str, client_namespace: &str) -> Option<IpAddr> {
        self.pods
            .get(name)?
            .iter()
            .find(|p| p.visibility.visible_to(&p.namespace, client_namespace))
            .map(|p| p.address)
    }
}

/// `state`'s services with their ports and endpoints, in config order.
fn services_of(state: &MeshState) -> Vec<DnsService> {
    let mut order: Vec<*const crate::config::Service> = Vec::new();
    let mut by_service: HashMap<*const crate::config::Service, DnsService> = HashMap::new();
    for sp in &state.service_ports {
        let key = Arc::as_ptr(&sp.service);
        let svc = by_service.entry(key).or_insert_with(|| {
            order.push(key);
            DnsService {
                namespace: sp.service.namespace.clone(),
                hosts: sp.service.hosts.clone(),
                vips: sp.service.vips.clone(),
                visibility: sp.service.visibility,
                canonical: sp.service.canonical,
                ports: Vec::new(),
            }
        });
        svc.ports.push(DnsPort {
            name: sp.name.to_ascii_lowercase(),
            port: sp.port,
            endpoints: sp
                .endpoints
                .iter()
                .map(|e| DnsEndpoint {
                    address: e.workload.address,
                    port: e.port,
                })
                .collect(),
        });
    }
    order
        .into_iter()
        .filter_map(|k| by_service.remove(&k))
        .collect()
}
