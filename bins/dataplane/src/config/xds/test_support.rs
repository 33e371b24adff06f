//! Builders shared by the unit tests of the xDS store and of the configuration built from it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_xds::pb::workload as wl;

use super::{XdsSettings, XdsStore};

/// The settings of a ztunnel on node `n1` (10.0.0.1) of cluster `Kubernetes`, trust domain
/// `cluster.local`, root namespace `istio-system`, without service listeners.
pub(crate) fn settings() -> XdsSettings {
    XdsSettings {
        node: "n1".into(),
        node_address: "10.0.0.1".parse().unwrap(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        service_listeners: false,
    }
}

/// An empty store with [`settings`].
pub(crate) fn store() -> XdsStore {
    XdsStore::new(settings())
}

/// Service `name` in `ns` (hostname `<name>.ns.svc.cluster.local`) at `vip`, with one port
/// `port` to `target`.
pub(crate) fn svc(name: &str, vip: [u8; 4], port: u32, target: u32) -> wl::Service {
    wl::Service {
        name: name.into(),
        namespace: "ns".into(),
        hostname: format!("{name}.ns.svc.cluster.local"),
        addresses: vec![wl::NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
            length: None,
        }],
        ports: vec![wl::Port {
            service_port: port,
            target_port: target,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

/// `s` as the `Address` istiod sends, keyed `<namespace>/<hostname>`.
pub(crate) fn addr_s(s: wl::Service) -> (String, wl::Address) {
    (
        format!("{}/{}", s.namespace, s.hostname),
        wl::Address {
            r#type: Some(wl::address::Type::Service(s)),
        },
    )
}

/// Pod `name` in `ns` (service account `name`) at `ip` on `node`, speaking HBONE.
pub(crate) fn pod(name: &str, ip: [u8; 4], node: &str) -> wl::Workload {
    wl::Workload {
        uid: format!("c//Pod/ns/{name}"),
        name: name.into(),
        namespace: "ns".into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        service_account: name.into(),
        node: node.into(),
        ..Default::default()
    }
}

/// `w` as the `Address` istiod sends, keyed by its uid.
pub(crate) fn addr_w(w: wl::Workload) -> (String, wl::Address) {
    (
        w.uid.clone(),
        wl::Address {
            r#type: Some(wl::address::Type::Workload(w)),
        },
    )
}
