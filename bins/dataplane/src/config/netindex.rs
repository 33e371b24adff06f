//! Lookups whose answer depends on the client (Istio 1.31's workload API): services sharing a
//! VIP or a host name (`canonical`), `NAMESPACE`-visible services, CIDR service addresses
//! (`NetworkAddress.length`, longest-prefix match), and the addresses of workloads on other
//! networks. A leaf module: built once per full xDS build, read per connection with a bounded
//! number of hash lookups (never a scan of the services).
//!
//! Istio's ranking (ztunnel `ServiceStore::get_best_by_vip` / `get_best_by_host`): with a
//! client namespace, only services visible to it; among them one in the client's namespace,
//! else a `canonical` one, else the first. Without a client namespace (a waypoint, an inbound
//! lookup) nothing is filtered: a `canonical` one, else the first. CIDR matches rank
//! `(in the client's namespace, prefix length, canonical)`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::endpoints::ServicePort;
use super::visibility::Visibility;

/// Hashed with foldhash (as the state's address indexes): keys come from the config.
type Fast<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The candidates for one contested key (a VIP:port, a host:port or a CIDR:port), ranked
/// at build time so a lookup is one hash lookup.
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    /// Per namespace, its best service.
    by_ns: HashMap<String, Arc<ServicePort>>,
    /// The best `Public` service: what another namespace sees.
    public: Option<Arc<ServicePort>>,
    /// The best of all: what a lookup without a client sees.
    any: Option<Arc<ServicePort>>,
    /// More than one service, or one that is not public.
    contested: bool,
}

/// How candidates for one key rank, as Istio's two rankings differ in their ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ties {
    /// Exact VIPs and host names (`ServiceMatch::find_best_match`): the first service of the
    /// client's namespace; else the *last* canonical one; else the first.
    Exact,
    /// CIDRs of one length (`CidrMatchRank`, compared with `>`): canonical first, the first
    /// among equals, in the client's namespace as elsewhere.
    Cidr,
}

/// Keeps the better of `slot` and `sp` under `ties`, for a slot not bound to a namespace.
fn better(slot: &mut Option<Arc<ServicePort>>, sp: &Arc<ServicePort>, ties: Ties) {
    let replace = match (slot.as_ref(), ties) {
        (None, _) => true,
        (Some(_), Ties::Exact) => sp.service.canonical,
        (Some(cur), Ties::Cidr) => !cur.service.canonical && sp.service.canonical,
    };
    if replace {
        *slot = Some(sp.clone());
    }
}

impl Candidates {
    /// Adds `sp`; candidates come in resource order (Istio's "first").
    fn add(&mut self, sp: &Arc<ServicePort>, ties: Ties) {
        let s = &sp.service;
        if self.any.is_some() || s.visibility != Visibility::Public {
            self.contested = true;
        }
        match (self.by_ns.get_mut(s.namespace.as_str()), ties) {
            // Exact: the first of the namespace, canonical or not.
            (Some(_), Ties::Exact) => {}
            (Some(cur), Ties::Cidr) => {
                if !cur.service.canonical && s.canonical {
                    *cur = sp.clone();
                }
            }
            (None, _) => {
                self.by_ns.insert(s.namespace.clone(), sp.clone());
            }
        }
        if s.visibility == Visibility::Public {
            better(&mut self.public, sp, ties);
        }
        better(&mut self.any, sp, ties);
    }

    /// The service a client in `ns` (or no client) reaches here.
    fn pick(&self, ns: Option<&str>) -> Option<&Arc<ServicePort>> {
        match ns {
            None => self.any.as_ref(),
            Some(ns) => self.by_ns.get(ns).or(self.public.as_ref()),
        }
    }
}

/// The client-dependent indexes of a mesh state (empty for a file-defined mesh).
#[derive(Debug, Default)]
pub(crate) struct NetIndex {
    /// Contested VIP:ports (shared by services, or holding a `Namespace` service).
    vips: Fast<SocketAddr, Candidates>,
    /// Contested host names, per port.
    hosts: HashMap<String, HashMap<u16, Candidates>>,
    /// CIDR service addresses: (network address, prefix length, port), per family.
    cidrs_v4: Fast<(u32, u8, u16), Candidates>,
    cidrs_v6: Fast<(u128, u8, u16), Candidates>,
    /// The distinct CIDR prefix lengths, longest first, per family.
    lengths_v4: Vec<u8>,
    lengths_v6: Vec<u8>,
    /// Addresses of workloads on other networks (first one's network).
    other_networks: Fast<IpAddr, String>,
    /// Nothing in it: lookups skip it.
    empty: bool,
}

impl NetIndex {
    /// An index with nothing in it.
    pub(crate) fn empty() -> NetIndex {
        NetIndex {
            empty: true,
            ..NetIndex::default()
        }
    }

    /// Whether lookups need it at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }

    /// The service port a client in `ns` reaches at `addr`: `Some(Some(sp))` a contested VIP
    /// resolved, `Some(None)` a contested VIP none of whose services it may see, `None` not
    /// contested (the plain VIP index decides).
    pub(crate) fn vip(
        &self,
        addr: SocketAddr,
        ns: Option<&str>,
    ) -> Option<Option<&Arc<ServicePort>>> {
        self.vips.get(&addr).map(|c| c.pick(ns))
    }

    /// As [`vip`](Self::vip), for a host name (lower case) and port.
    pub(crate) fn host(
        &self,
        host: &str,
        port: u16,
        ns: Option<&str>,
    ) -> Option<Option<&Arc<ServicePort>>> {
        self.hosts.get(host)?.get(&port).map(|c| c.pick(ns))
    }

    /// The CIDR service a client in `ns` reaches at `addr` (not an exact VIP): at most one
    /// hash lookup per distinct prefix length, longest first.
    pub(crate) fn cidr(&self, addr: SocketAddr, ns: Option<&str>) -> Option<&Arc<ServicePort>> {
        let port = addr.port();
        match addr.ip() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                best_cidr(&self.lengths_v4, ns, |len| {
                    self.cidrs_v4.get(&(mask_v4(bits, len), len, port))
                })
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                best_cidr(&self.lengths_v6, ns, |len| {
                    self.cidrs_v6.get(&(mask_v6(bits, len), len, port))
                })
            }
        }
    }

    /// The network of the workload at `ip`, when one on another network has it.
    pub(crate) fn other_network(&self, ip: IpAddr) -> Option<&str> {
        self.other_networks.get(&ip).map(String::as_str)
    }
}

/// The best CIDR match over `lengths` (longest first), `probe` giving each length's
/// candidates: Istio's rank `(in the client's namespace, prefix length, canonical)`.
fn best_cidr<'a>(
    lengths: &[u8],
    ns: Option<&str>,
    probe: impl Fn(u8) -> Option<&'a Candidates>,
) -> Option<&'a Arc<ServicePort>> {
    let mut public = None;
    for &len in lengths {
        let Some(c) = probe(len) else {
            continue;
        };
        match ns {
            // Longest prefix, canonical among equals (ranked at build).
            None => return c.any.as_ref(),
            Some(ns) => {
                // In the client's namespace beats any prefix length: the longest such.
                if let Some(sp) = c.by_ns.get(ns) {
                    return Some(sp);
                }
                if public.is_none() {
                    public = c.public.as_ref();
                }
            }
        }
    }
    public
}

/// `bits` with all but the first `len` bits cleared.
fn mask_v4(bits: u32, len: u8) -> u32 {
    bits.checked_shr(32 - u32::from(len.min(32)))
        .and_then(|b| b.checked_shl(32 - u32::from(len.min(32))))
        .unwrap_or(0)
}

/// As [`mask_v4`], for IPv6.
fn mask_v6(bits: u128, len: u8) -> u128 {
    bits.checked_shr(128 - u32::from(len.min(128)))
        .and_then(|b| b.checked_shl(128 - u32::from(len.min(128))))
        .unwrap_or(0)
}

/// Builds a [`NetIndex`] during a full build, service by service, beside the plain indexes.
#[derive(Debug, Default)]
pub(crate) struct NetIndexBuilder {
    vips: Fast<SocketAddr, Candidates>,
    hosts: HashMap<String, HashMap<u16, Candidates>>,
    cidrs_v4: Fast<(u32, u8, u16), Candidates>,
    cidrs_v6: Fast<(u128, u8, u16), Candidates>,
    other_networks: Fast<IpAddr, String>,
}

impl NetIndexBuilder {
    /// Adds one service's `ports` at its `vips`, `cidrs` and host names. Every VIP:port and
    /// host:port is a candidate; [`finish`](Self::finish) keeps only contested ones.
    pub(crate) fn add(
        &mut self,
        vips: &[IpAddr],
        cidrs: &[ipnet::IpNet],
        ports: &[Arc<ServicePort>],
    ) {
        for sp in ports {
            for vip in vips {
                self.vips
                    .entry(SocketAddr::new(*vip, sp.port))
                    .or_default()
                    .add(sp, Ties::Exact);
            }
            for host in &sp.service.hosts {
                match self.hosts.get_mut(host.as_str()) {
                    Some(ports) => ports.entry(sp.port).or_default().add(sp, Ties::Exact),
                    None => {
                        let mut c = Candidates::default();
                        c.add(sp, Ties::Exact);
                        self.hosts
                            .insert(host.clone(), HashMap::from([(sp.port, c)]));
                    }
                }
            }
            for net in cidrs {
                let len = net.prefix_len();
                let c = match net.network() {
                    IpAddr::V4(v4) => self
                        .cidrs_v4
                        .entry((mask_v4(u32::from(v4), len), len, sp.port))
                        .or_default(),
                    IpAddr::V6(v6) => self
                        .cidrs_v6
                        .entry((mask_v6(u128::from(v6), len), len, sp.port))
                        .or_default(),
                };
                c.add(sp, Ties::Cidr);
            }
        }
    }

    /// Records a workload at `ip` on another network.
    pub(crate) fn other_network(&mut self, ip: IpAddr, network: &str) {
        self.other_networks
            .entry(ip)
            .or_insert_with(|| network.to_owned());
    }

    /// Takes the other-network workloads `other` recorded.
    pub(crate) fn other_networks_of(&mut self, other: NetIndexBuilder) {
        for (ip, network) in other.other_networks {
            self.other_networks.entry(ip).or_insert(network);
        }
    }

    /// The index, keeping contested keys only; the plain indexes' entries for them are set to
    /// the choice without a client (canonical first), so lookups that have no client (a
    /// waypoint's, an inbound one) rank as Istio's.
    pub(crate) fn finish(
        self,
        by_vip: &mut Fast<SocketAddr, Arc<ServicePort>>,
        by_host: &mut HashMap<String, HashMap<u16, Arc<ServicePort>>>,
    ) -> NetIndex {
        let mut vips = self.vips;
        vips.retain(|_, c| c.contested);
        for (addr, c) in &vips {
            if let Some(sp) = c.any.as_ref().filter(|sp| sp.service.canonical) {
                by_vip.insert(*addr, sp.clone());
            }
        }
        let mut hosts = self.hosts;
        for (host, ports) in &mut hosts {
            ports.retain(|_, c| c.contested);
            for (port, c) in ports.iter() {
                if let Some(sp) = c.any.as_ref().filter(|sp| sp.service.canonical)
                    && let Some(entry) = by_host.get_mut(host.as_str())
                {
                    entry.insert(*port, sp.clone());
                }
            }
        }
        hosts.retain(|_, ports| !ports.is_empty());
        let lengths_v4 = longest_first(self.cidrs_v4.keys().map(|k| k.1));
        let lengths_v6 = longest_first(self.cidrs_v6.keys().map(|k| k.1));
        let empty = vips.is_empty()
            && hosts.is_empty()
            && self.cidrs_v4.is_empty()
            && self.cidrs_v6.is_empty()
            && self.other_networks.is_empty();
        NetIndex {
            vips,
            hosts,
            cidrs_v4: self.cidrs_v4,
            cidrs_v6: self.cidrs_v6,
            lengths_v4,
            lengths_v6,
            other_networks: self.other_networks,
            empty,
        }
    }
}

/// The distinct prefix lengths, longest first.
fn longest_first(lengths: impl Iterator<Item = u8>) -> Vec<u8> {
    let mut v: Vec<u8> = lengths.collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_prefix() {
        assert_eq!(mask_v4(0x7fdf_0905, 24), 0x7fdf_0900);
        assert_eq!(mask_v4(0x7fdf_0905, 32), 0x7fdf_0905);
        assert_eq!(mask_v4(0x7fdf_0905, 0), 0);
        assert_eq!(mask_v4(0xffff_ffff, 1), 0x8000_0000);
        assert_eq!(mask_v6(u128::MAX, 64), u128::MAX << 64);
        assert_eq!(mask_v6(u128::MAX, 0), 0);
        assert_eq!(mask_v6(u128::MAX, 128), u128::MAX);
    }

    proptest::proptest! {
        // The mask agrees with ipnet's network address for every address and length.
        #[test]
        fn masks_match_ipnet(bits: u32, len in 0u8..=32, bits6: u128, len6 in 0u8..=128) {
            let net = ipnet::Ipv4Net::new(bits.into(), len).unwrap();
            proptest::prop_assert_eq!(mask_v4(bits, len), u32::from(net.network()));
            let net6 = ipnet::Ipv6Net::new(bits6.into(), len6).unwrap();
            proptest::prop_assert_eq!(mask_v6(bits6, len6), u128::from(net6.network()));
        }
    }
}
