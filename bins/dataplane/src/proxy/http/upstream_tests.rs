//! Route destinations as the client's namespace sees them (Istio 1.31's `visibility`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use mesh_xds::pb::workload as wl;

use super::route_destination;
use crate::config::MeshState;
use crate::config::xds::{XdsSettings, XdsStore};

/// Service `hidden` of namespace `b` (visibility NAMESPACE, port 80 → 8080) with one endpoint
/// in `b`, and service `open` of `b` (visible everywhere), on the workload API.
fn state() -> MeshState {
    let mut st = XdsStore::new(XdsSettings {
        node: "n1".into(),
        node_address: "127.224.200.1".parse().unwrap(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        service_listeners: false,
    });
    let port = || wl::Port {
        service_port: 80,
        target_port: 8080,
        app_protocol: 0,
    };
    let svc = |name: &str, vip: u8, visibility: wl::service::Visibility| wl::Service {
        name: name.into(),
        namespace: "b".into(),
        hostname: format!("{name}.b.svc.cluster.local"),
        addresses: vec![wl::NetworkAddress {
            network: String::new(),
            address: vec![127, 224, 201, vip],
            length: None,
        }],
        ports: vec![port()],
        visibility: visibility as i32,
        ..Default::default()
    };
    let services = ["b/hidden.b.svc.cluster.local", "b/open.b.svc.cluster.local"];
    let pod = wl::Workload {
        uid: "c//Pod/b/pod".into(),
        name: "pod".into(),
        namespace: "b".into(),
        addresses: vec![vec![127, 224, 202, 1]],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        service_account: "pod".into(),
        node: "n1".into(),
        services: (services.iter())
            .map(|k| {
                (
                    (*k).to_owned(),
                    wl::PortList {
                        ports: vec![port()],
                    },
                )
            })
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    };
    let addr = |name: &str, t| (name.to_owned(), wl::Address { r#type: Some(t) });
    use wl::address::Type::{Service as S, Workload as W};
    use wl::service::Visibility::{Namespace, Public};
    let rejected = st.apply_addresses(
        vec![
            addr(services[0], S(svc("hidden", 1, Namespace))),
            addr(services[1], S(svc("open", 2, Public))),
            addr("c//Pod/b/pod", W(pod)),
        ],
        vec![],
    );
    assert!(rejected.is_empty(), "{rejected:?}");
    // A role that proxies HTTP (endpoint sets are built for it).
    st.set_l7(std::sync::Arc::default());
    st.build()
}

fn dest(host: &str, port: Option<u16>) -> mesh_l7::Destination {
    mesh_l7::Destination {
        host: host.into(),
        subset: None,
        port,
        weight: 1,
        headers: Default::default(),
    }
}

// Istio (proto/workload.proto, Service.visibility): NAMESPACE "is only visible to workloads in
// the same namespace"; istio/ztunnel `src/state/service.rs` `visible_to`. Attacker: a
// VirtualService/HTTPRoute of namespace `a` whose destination is `b`'s hidden service reaches
// it as if it were unknown (503 NR), with the route's port or without (the host's port).
#[test]
fn a_route_cannot_reach_a_service_hidden_from_the_client() {
    let state = state();
    let hidden = "hidden.b.svc.cluster.local";
    assert!(route_destination(&state, &dest(hidden, Some(80)), 80, "a").is_none());
    assert!(route_destination(&state, &dest(hidden, None), 9999, "a").is_none());
    // Its own namespace sees it; a visible service of `b` is reachable from `a`.
    let (set, sp) = route_destination(&state, &dest(hidden, None), 80, "b").unwrap();
    assert_eq!(sp.service.namespace, "b");
    assert_eq!(set.endpoints.len(), 1);
    let open = "open.b.svc.cluster.local";
    assert!(route_destination(&state, &dest(open, Some(80)), 80, "a").is_some());
}
