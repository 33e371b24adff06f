//! The workload API's network-scoped fields (Istio 1.31): each workload and service address
//! names its network, and a ztunnel serves only its own (Istio keys addresses by
//! `network/IP`). Also the service fields that choose among services sharing an address or a
//! host name: `visibility`, `canonical`, and CIDR addresses (`NetworkAddress.length`).
//!
//! What is on another network is kept in the store but never indexed for reaching it: a
//! multi-network mesh reaches such workloads through a network gateway, which this data plane
//! does not support (`network_gateway` is rejected by name).

use std::net::IpAddr;

use mesh_xds::pb::workload as wl;

use super::super::Visibility;
use super::store::{GatewayRef, ServiceScope};

/// The host addresses of service `s` on network `ours` (its VIPs) and its scope. An address
/// of the wrong length, a prefix length longer than the address, or an unknown visibility is
/// an error naming the field.
pub(super) fn service_scope(
    s: &wl::Service,
    ours: &str,
) -> Result<(Vec<IpAddr>, ServiceScope), String> {
    let visibility = match wl::service::Visibility::try_from(s.visibility) {
        Ok(wl::service::Visibility::Public) => Visibility::Public,
        Ok(wl::service::Visibility::Namespace) => Visibility::Namespace,
        // Istio's ztunnel falls back to PUBLIC; a value we do not know might hide the service
        // from someone, so it is refused rather than widened.
        Err(_) => return Err(format!("visibility: unknown value {}", s.visibility)),
    };
    let mut scope = ServiceScope {
        visibility,
        canonical: s.canonical,
        ingress_use_waypoint: s.ingress_use_waypoint,
        ..ServiceScope::default()
    };
    let mut vips = Vec::new();
    for (i, a) in s.addresses.iter().enumerate() {
        let net = address(a).map_err(|e| format!("addresses[{i}]{e}"))?;
        let host = net.prefix_len() == net.max_prefix_len();
        if a.network != ours {
            scope.other_networks.push((a.network.clone(), net));
        } else if host {
            vips.push(net.addr());
        } else {
            scope.cidrs.push(net.trunc());
        }
    }
    Ok((vips, scope))
}

/// One `NetworkAddress` as a prefix (a host address when `length` is absent, as Istio).
fn address(a: &wl::NetworkAddress) -> Result<ipnet::IpNet, String> {
    let ip = match a.address.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(a.address.as_slice()).map_err(|_| ": bad IPv4")?),
        16 => IpAddr::from(<[u8; 16]>::try_from(a.address.as_slice()).map_err(|_| ": bad IPv6")?),
        n => {
            return Err(format!(
                ": an address of {n} bytes is neither IPv4 nor IPv6"
            ));
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = a.length.unwrap_or(max);
    u8::try_from(len)
        .ok()
        .and_then(|l| ipnet::IpNet::new(ip, l).ok())
        .ok_or_else(|| format!(".length: /{len} is not a prefix length for {ip}"))
}

/// The workload's network when it is not `ours` (Istio: `network` empty is the default
/// network, a name of its own; a workload is ours only on exactly our network).
pub(super) fn other_network(w: &wl::Workload, ours: &str) -> Option<String> {
    (w.network != ours).then(|| w.network.clone())
}

/// The gateway `g` names as seen from network `ours`: an address on our network (Istio keys
/// it `network/IP`; an address without a network is on the default network `""`), or a host
/// name; `None` for an address on another network (reachable only through a network gateway).
pub(super) fn on_our_network(g: &GatewayRef, ours: &str) -> Option<GatewayRef> {
    match g {
        GatewayRef::Address(..) if !ours.is_empty() => None,
        GatewayRef::OtherNetwork(net, ip, port) if net == ours => {
            Some(GatewayRef::Address(*ip, *port))
        }
        GatewayRef::OtherNetwork(..) => None,
        g => Some(g.clone()),
    }
}
