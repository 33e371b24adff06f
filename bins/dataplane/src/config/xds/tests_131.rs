//! Unit tests of Istio 1.31's workload-API fields in the store: networks,
//! `ingress_use_waypoint`, the rejections by name, and the helpers `tests_131_lookup.rs`
//! (`canonical`, `visibility`, CIDR service addresses) shares.
//! Each corner case cites the Istio source it mirrors (istio/ztunnel `src/state/service.rs`,
//! `src/state/workload.rs`, `proto/workload.proto`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;

use mesh_xds::pb::workload as wl;

use super::super::MeshState;
use super::*;

pub(super) fn store(network: &str) -> XdsStore {
    XdsStore::new(XdsSettings {
        node: "n1".into(),
        node_address: "127.223.0.1".parse().unwrap(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        service_listeners: false,
    })
    .on_network(network)
}

pub(super) fn wk(
    ns: &str,
    name: &str,
    ip: [u8; 4],
    network: &str,
    services: &[&str],
) -> wl::Workload {
    let mut map = HashMap::new();
    for k in services {
        map.insert(
            (*k).to_owned(),
            wl::PortList {
                ports: vec![wl::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        );
    }
    wl::Workload {
        uid: format!("c//Pod/{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        addresses: vec![ip.to_vec()],
        network: network.into(),
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        service_account: name.into(),
        node: "n1".into(),
        services: map,
        ..Default::default()
    }
}

pub(super) fn na(network: &str, ip: [u8; 4], length: Option<u32>) -> wl::NetworkAddress {
    wl::NetworkAddress {
        network: network.into(),
        address: ip.to_vec(),
        length,
    }
}

pub(super) fn svc(
    ns: &str,
    name: &str,
    host: &str,
    addresses: Vec<wl::NetworkAddress>,
) -> wl::Service {
    wl::Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: host.into(),
        addresses,
        ports: vec![wl::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

pub(super) fn w(w: wl::Workload) -> (String, wl::Address) {
    (
        w.uid.clone(),
        wl::Address {
            r#type: Some(wl::address::Type::Workload(w)),
        },
    )
}

pub(super) fn s(s: wl::Service) -> (String, wl::Address) {
    (
        format!("{}/{}/{}", s.namespace, s.name, s.hostname),
        wl::Address {
            r#type: Some(wl::address::Type::Service(s)),
        },
    )
}

pub(super) fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

/// The service (`namespace/name`) a client in `ns` reaches at `a`.
pub(super) fn seen(st: &MeshState, a: &str, ns: &str) -> Option<String> {
    st.service_for_client(addr(a), ns)
        .map(|sp| format!("{}/{}", sp.service.namespace, sp.service.name))
}

// Istio keys workloads by `network/IP` (proto/workload.proto, `Address`: "Aliases are keyed by
// network/IP address"); a ztunnel looks destinations up on its own network.
#[test]
fn our_network_is_served_another_is_kept_but_not_indexed() {
    let mut st = store("n1");
    let rejected = st.apply_addresses(
        vec![
            w(wk("a", "ours", [127, 223, 1, 1], "n1", &["a/web.a.svc"])),
            w(wk("a", "theirs", [127, 223, 1, 2], "n2", &["a/web.a.svc"])),
            // The default network ("") is a network of its own: not ours when we are n1.
            w(wk("a", "default", [127, 223, 1, 3], "", &["a/web.a.svc"])),
            // The same IP on another network: ours wins, no shared-address conflict.
            w(wk("a", "twin", [127, 223, 1, 1], "n2", &[])),
            s(svc(
                "a",
                "web",
                "web.a.svc",
                vec![na("n1", [127, 223, 10, 1], None)],
            )),
        ],
        vec![],
    );
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(st.len().0, 4, "every workload is kept in the store");
    let state = st.build();
    assert_eq!(state.workloads.len(), 1);
    let ours = state
        .workload_by_ip("127.223.1.1".parse().unwrap())
        .unwrap();
    assert_eq!(ours.name, "ours");
    assert!(
        state
            .workload_by_ip("127.223.1.2".parse().unwrap())
            .is_none()
    );
    assert_eq!(
        state.other_network("127.223.1.2".parse().unwrap()),
        Some("n2")
    );
    assert_eq!(
        state.other_network("127.223.1.3".parse().unwrap()),
        Some("")
    );
    let sp = state.service_by_vip(addr("127.223.10.1:80")).unwrap();
    let eps: Vec<&str> = sp
        .endpoints
        .iter()
        .map(|e| e.workload.name.as_str())
        .collect();
    assert_eq!(
        eps,
        ["ours"],
        "endpoints on other networks are never picked"
    );
    assert_eq!(state.nodes["n1"].workloads.len(), 1);
}

// A ztunnel without NETWORK (the default network, "") serves `network: ""` exactly as before,
// and keeps `network: n1` workloads apart.
#[test]
fn default_network_serves_empty_network_as_before() {
    let mut st = store("");
    st.apply_addresses(
        vec![
            w(wk("a", "plain", [127, 223, 2, 1], "", &[])),
            w(wk("a", "far", [127, 223, 2, 2], "n1", &[])),
        ],
        vec![],
    );
    let state = st.build();
    assert!(
        state
            .workload_by_ip("127.223.2.1".parse().unwrap())
            .is_some()
    );
    assert!(
        state
            .workload_by_ip("127.223.2.2".parse().unwrap())
            .is_none()
    );
    assert_eq!(state.other_network("127.223.2.1".parse().unwrap()), None);
}

// A workload arriving on another network after a full build: the patched build must not put
// it in the address index (patch.rs falls back to a full build).
#[test]
fn other_network_workload_in_a_patched_build_stays_out() {
    let mut st = store("n1");
    st.apply_addresses(
        vec![w(wk("a", "ours", [127, 223, 3, 1], "n1", &[]))],
        vec![],
    );
    let _ = st.build();
    st.apply_addresses(vec![w(wk("a", "far", [127, 223, 3, 2], "n2", &[]))], vec![]);
    let state = st.build();
    assert!(
        state
            .workload_by_ip("127.223.3.2".parse().unwrap())
            .is_none()
    );
    assert_eq!(
        state.other_network("127.223.3.2".parse().unwrap()),
        Some("n2")
    );
    // ...and a later workload-only change still sees it kept apart.
    st.apply_addresses(
        vec![w(wk("a", "more", [127, 223, 3, 3], "n1", &[]))],
        vec![],
    );
    let state = st.build();
    assert!(
        state
            .workload_by_ip("127.223.3.3".parse().unwrap())
            .is_some()
    );
    assert_eq!(
        state.other_network("127.223.3.2".parse().unwrap()),
        Some("n2")
    );
}

// `network_gateway` (reaching another network through its east-west gateway) is not
// supported: rejected by name, the rest of the update applies.
#[test]
fn network_gateway_is_rejected_by_name() {
    let mut st = store("n1");
    let mut far = wk("a", "far", [127, 223, 4, 2], "n2", &[]);
    far.network_gateway = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(na(
            "n2",
            [127, 223, 4, 9],
            None,
        ))),
        hbone_mtls_port: 15008,
    });
    let rejected = st.apply_addresses(
        vec![w(far), w(wk("a", "ours", [127, 223, 4, 1], "n1", &[]))],
        vec![],
    );
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].reason.contains("`network_gateway`"),
        "{rejected:?}"
    );
    assert!(
        st.build()
            .workload_by_ip("127.223.4.1".parse().unwrap())
            .is_some()
    );
}

// A waypoint address on our network resolves; one on another network is never dialled: the
// traffic that must go through it fails closed (an unresolved waypoint).
#[test]
fn waypoint_on_another_network_fails_closed() {
    let mut st = store("n1");
    let gw = |net: &str| wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(na(
            net,
            [127, 223, 5, 9],
            None,
        ))),
        hbone_mtls_port: 15008,
    };
    let mut near = svc(
        "a",
        "near",
        "near.a.svc",
        vec![na("n1", [127, 223, 15, 1], None)],
    );
    near.waypoint = Some(gw("n1"));
    let mut far = svc(
        "a",
        "far",
        "far.a.svc",
        vec![na("n1", [127, 223, 15, 2], None)],
    );
    far.waypoint = Some(gw("n2"));
    let rejected = st.apply_addresses(
        vec![
            w(wk("a", "wp", [127, 223, 5, 9], "n1", &[])),
            s(near),
            s(far),
        ],
        vec![],
    );
    assert!(rejected.is_empty(), "{rejected:?}");
    let state = st.build();
    let near = state.service_by_vip(addr("127.223.15.1:80")).unwrap();
    assert_eq!(near.service.waypoint.as_ref().unwrap().name, "wp");
    let far = state.service_by_vip(addr("127.223.15.2:80")).unwrap();
    let wp = far.service.waypoint.as_ref().unwrap();
    assert_eq!(wp.namespace, "unresolved-waypoint");
    assert_ne!(
        wp.address,
        "127.223.5.9".parse::<std::net::IpAddr>().unwrap()
    );
}

// Service addresses on other networks are kept but are not VIPs here.
#[test]
fn service_addresses_on_other_networks_are_not_vips() {
    let mut st = store("n1");
    st.apply_addresses(
        vec![s(svc(
            "a",
            "web",
            "web.a.svc",
            vec![
                na("n2", [127, 223, 16, 1], None),
                na("n1", [127, 223, 16, 2], None),
            ],
        ))],
        vec![],
    );
    let state = st.build();
    assert!(state.service_by_vip(addr("127.223.16.1:80")).is_none());
    assert!(state.service_by_vip(addr("127.223.16.2:80")).is_some());
    assert_eq!(
        state.service_by_hostname("web.a.svc").unwrap().vips,
        ["127.223.16.2".parse::<std::net::IpAddr>().unwrap()]
    );
}

// A known field whose value we cannot honour is rejected by name: a prefix longer than the
// address, an unknown visibility (Istio falls back to PUBLIC; hiding nothing we were asked
// to hide is refused instead).
#[test]
fn bad_lengths_and_unknown_visibility_are_rejected_by_name() {
    let mut st = store("");
    let long = svc(
        "p",
        "long",
        "long.svc",
        vec![na("", [127, 223, 50, 0], Some(33))],
    );
    let mut vis = svc("p", "vis", "vis.svc", vec![na("", [127, 223, 50, 1], None)]);
    vis.visibility = 7;
    let rejected = st.apply_addresses(vec![s(long), s(vis)], vec![]);
    let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(rejected.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("addresses[0].length") && reasons[0].contains("/33"));
    assert!(reasons[1].contains("visibility") && reasons[1].contains('7'));
}

// Istio's ztunnel does not act on `ingress_use_waypoint` (istiod turns it into the ingress
// gateway's config); it is accepted and the service is served with its waypoint as usual.
#[test]
fn ingress_use_waypoint_is_accepted() {
    let mut st = store("");
    let mut web = svc(
        "a",
        "web",
        "web.a.svc",
        vec![na("", [127, 223, 60, 1], None)],
    );
    web.ingress_use_waypoint = true;
    assert!(st.apply_addresses(vec![s(web)], vec![]).is_empty());
    assert!(st.build().service_by_vip(addr("127.223.60.1:80")).is_some());
}

// A file-defined mesh and a mesh using none of the fields keep the plain lookups only.
#[test]
fn plain_meshes_have_an_empty_index() {
    let mut st = store("");
    st.apply_addresses(
        vec![s(svc(
            "a",
            "web",
            "web.a.svc",
            vec![na("", [127, 223, 70, 1], None)],
        ))],
        vec![],
    );
    let state = st.build();
    assert!(state.net.is_empty());
    assert_eq!(seen(&state, "127.223.70.1:80", "b").unwrap(), "a/web");
}
