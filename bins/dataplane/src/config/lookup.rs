//! The state's lookups for a known client (Istio 1.31's workload API): VIP and host lookups
//! that honour `visibility` and `canonical`, CIDR service addresses, and workloads on other
//! networks. Each costs the plain index's one hash lookup when the mesh uses none of these
//! (a file-defined mesh never does).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::endpoints::ServicePort;
use super::state::MeshState;
use super::workload::Workload;

impl MeshState {
    /// The service port a client in namespace `client_ns` reaches at `addr`: the services at
    /// that VIP:port it may see (`visibility`), ranked as Istio (its own namespace's, else a
    /// `canonical` one, else the first); else the longest CIDR service address holding `addr`
    /// (Istio's `get_best_by_vip`: a hidden exact VIP falls through to the CIDRs). `None`:
    /// for this client `addr` is not a service.
    pub fn service_for_client(
        &self,
        addr: SocketAddr,
        client_ns: &str,
    ) -> Option<&Arc<ServicePort>> {
        self.vip_for_client(addr, client_ns)
            .or_else(|| self.cidr_for_client(addr, client_ns))
    }

    /// The exact VIP:port part of [`service_for_client`](Self::service_for_client).
    pub fn vip_for_client(&self, addr: SocketAddr, client_ns: &str) -> Option<&Arc<ServicePort>> {
        if self.net.is_empty() {
            return self.by_vip.get(&addr);
        }
        match self.net.vip(addr, Some(client_ns)) {
            Some(choice) => choice,
            None => self.by_vip.get(&addr),
        }
    }

    /// The CIDR part of [`service_for_client`](Self::service_for_client): the longest CIDR
    /// service address holding `addr` that the client may see (its namespace's first).
    pub fn cidr_for_client(&self, addr: SocketAddr, client_ns: &str) -> Option<&Arc<ServicePort>> {
        if self.net.is_empty() {
            return None;
        }
        self.net.cidr(addr, Some(client_ns))
    }

    /// As [`service_by_vip`](Self::service_by_vip) without a client (a waypoint's or an
    /// inbound lookup: nothing hidden, `canonical` first), also matching CIDR addresses.
    pub fn service_at(&self, addr: SocketAddr) -> Option<&Arc<ServicePort>> {
        match self.by_vip.get(&addr) {
            Some(sp) => Some(sp),
            None if self.net.is_empty() => None,
            None => self.net.cidr(addr, None),
        }
    }

    /// The service port for `host:port` as a client in namespace `client_ns` sees it (as
    /// [`service_for_client`](Self::service_for_client), by host name).
    pub fn service_by_host_for_client(
        &self,
        host: &str,
        port: u16,
        client_ns: &str,
    ) -> Option<&Arc<ServicePort>> {
        if self.net.is_empty() {
            return self.service_by_host(host, port);
        }
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        match self.net.host(host, port, Some(client_ns)) {
            Some(choice) => choice,
            None => self.service_by_host(host, port),
        }
    }

    /// The service host a peer's `Forwarded: host=` may name for a connection to `dst`'s
    /// `port` (`destination_service`, an application tunnel's `0xD1`): a host `dst` serves on
    /// that port, or on any port when the peer is `dst`'s own waypoint (istio/ztunnel
    /// `guess_inbound_service` bounds the claim to the workload's services; the port bound
    /// keeps any other peer from relabelling a connection as another service). `None`: not
    /// believed.
    pub fn claimed_service_host(
        &self,
        dst: &Workload,
        port: u16,
        named: &str,
        from_waypoint: bool,
    ) -> Option<&str> {
        let ports = self.by_host.get(&named.to_ascii_lowercase())?;
        let serves = ports.values().any(|sp| {
            sp.endpoints.iter().any(|e| {
                e.workload.name == dst.name
                    && e.workload.namespace == dst.namespace
                    && (from_waypoint || e.port == port)
            })
        });
        let sp = ports.values().next().filter(|_| serves)?;
        sp.service.hosts.first().map(String::as_str)
    }

    /// Whether `ip` is the address of a workload on another network (kept, not reachable: a
    /// connection to it is refused, never sent to that address on ours), and that network.
    pub fn other_network(&self, ip: IpAddr) -> Option<&str> {
        if self.net.is_empty() {
            return None;
        }
        self.net.other_network(ip)
    }
}
