//! Workload-API resources as istiod sends them, built for the path tests of namespace `ns`
//! (`workload_api_tunnels`, `app_tunnel_review`).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::IpAddr;

use mesh_xds::pb::workload as wl;

/// An IP's bytes as the workload API carries them.
pub fn ip_bytes(ip: &str) -> Vec<u8> {
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A workload of namespace `ns` serving `services` (host, port = target port).
pub fn workload(name: &str, ip: &str, node: &str, services: &[(&str, u32)]) -> wl::Workload {
    let services = services
        .iter()
        .map(|(host, port)| {
            let ports = vec![wl::Port {
                service_port: *port,
                target_port: *port,
                app_protocol: 0,
            }];
            (format!("ns/{host}"), wl::PortList { ports })
        })
        .collect::<HashMap<_, _>>();
    wl::Workload {
        uid: format!("Kubernetes//Pod/ns/{name}"),
        name: name.into(),
        namespace: "ns".into(),
        addresses: vec![ip_bytes(ip)],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        service_account: name.into(),
        node: node.into(),
        services,
        ..Default::default()
    }
}

/// A TCP service `name.ns.svc.cluster.local` at `vip:port`.
pub fn service(name: &str, vip: &str, port: u32) -> wl::Service {
    wl::Service {
        name: name.into(),
        namespace: "ns".into(),
        hostname: format!("{name}.ns.svc.cluster.local"),
        addresses: vec![wl::NetworkAddress {
            network: String::new(),
            address: ip_bytes(vip),
            length: None,
        }],
        ports: vec![wl::Port {
            service_port: port,
            target_port: port,
            app_protocol: wl::AppProtocol::Tcp as i32,
        }],
        ..Default::default()
    }
}

/// A resource named as istiod names it (a workload by uid, a service by namespace/host).
pub fn address(a: wl::address::Type) -> (String, wl::Address) {
    let name = match &a {
        wl::address::Type::Workload(w) => w.uid.clone(),
        wl::address::Type::Service(s) => format!("{}/{}", s.namespace, s.hostname),
    };
    (name, wl::Address { r#type: Some(a) })
}
