//! Unit tests of `Service.weighted_waypoints` in the xDS store: conversion, bounds,
//! resolution, the per-connection choice and which waypoints the destination accepts.
//! Semantics checked against istio/ztunnel `src/state.rs` (`sample_weighted_waypoint` and its
//! test `test_sample_weighted_waypoint`) and `proto/workload.proto` (`WeightedWaypoint`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use mesh_xds::pb::workload as wl;

use super::super::{MeshState, WaypointFor};
use super::*;

use super::test_support::{addr_s, addr_w, pod, store, svc};

fn workload(name: &str, ip: [u8; 4], service: Option<(&str, u32)>) -> (String, wl::Address) {
    let mut services = HashMap::new();
    if let Some((key, port)) = service {
        services.insert(
            key.to_owned(),
            wl::PortList {
                ports: vec![wl::Port {
                    service_port: port,
                    target_port: port,
                    app_protocol: 0,
                }],
            },
        );
    }
    addr_w(wl::Workload {
        services,
        ..pod(name, ip, "n2")
    })
}

fn by_host(host: &str) -> wl::GatewayAddress {
    wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(
            wl::NamespacedHostname {
                namespace: "ns".into(),
                hostname: format!("{host}.ns.svc.cluster.local"),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

fn weighted(entries: &[(&str, u32)]) -> Vec<wl::WeightedWaypoint> {
    entries
        .iter()
        .map(|(h, w)| wl::WeightedWaypoint {
            destination: Some(by_host(h)),
            weight: *w,
        })
        .collect()
}

/// Waypoints wp1 (10.1.0.3) and wp2 (10.1.0.4), each a service with one workload, and the
/// service `web` (10.96.0.1:80, endpoint `a`) with `waypoint` and `weighted_waypoints`.
fn mesh(waypoint: Option<&str>, entries: &[(&str, u32)]) -> (XdsStore, Vec<mesh_xds::Rejection>) {
    let mut s = store();
    let mut web = svc("web", [10, 96, 0, 1], 80, 80);
    web.waypoint = waypoint.map(by_host);
    web.weighted_waypoints = weighted(entries);
    let r = s.apply_addresses(
        vec![
            addr_s(web),
            addr_s(svc("wp1", [10, 96, 0, 3], 15008, 15008)),
            addr_s(svc("wp2", [10, 96, 0, 4], 15008, 15008)),
            workload(
                "wp1",
                [10, 1, 0, 3],
                Some(("ns/wp1.ns.svc.cluster.local", 15008)),
            ),
            workload(
                "wp2",
                [10, 1, 0, 4],
                Some(("ns/wp2.ns.svc.cluster.local", 15008)),
            ),
            workload(
                "a",
                [10, 1, 0, 1],
                Some(("ns/web.ns.svc.cluster.local", 80)),
            ),
        ],
        vec![],
    );
    (s, r)
}

fn web(state: &MeshState) -> Arc<crate::config::ServicePort> {
    state
        .service_by_vip("10.96.0.1:80".parse().unwrap())
        .unwrap()
        .clone()
}

/// How many of `n` new connections go through each waypoint (by name).
fn split(state: &MeshState, n: usize) -> HashMap<String, usize> {
    let sp = web(state);
    let mut out = HashMap::new();
    for _ in 0..n {
        let wp = sp.service.waypoint_for_connection().unwrap();
        *out.entry(wp.name.clone()).or_default() += 1;
    }
    out
}

#[test]
fn connections_split_by_weight_and_every_waypoint_is_accepted() {
    let (s, r) = mesh(Some("wp1"), &[("wp1", 1), ("wp2", 3)]);
    assert!(r.is_empty(), "{r:?}");
    let state = s.build();
    let c = split(&state, 400);
    assert_eq!((c["wp1"], c["wp2"]), (100, 300), "{c:?}");
    let sp = web(&state);
    // `waypoint` stays the primary; both serve the service, both reach its endpoints.
    assert_eq!(sp.service.waypoint.as_ref().unwrap().name, "wp1");
    assert!(sp.service.served_by("ns", "wp1") && sp.service.served_by("ns", "wp2"));
    assert!(!sp.service.served_by("ns", "web"));
    let accepted: Vec<&str> = state.waypoints_of["ns/a"]
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(accepted, ["wp1", "wp2"]);
    // Resolved to the workloads that run them, with their identities.
    let wp2 = &state.waypoints["ns/wp2"];
    assert_eq!(wp2.hbone_addr(), "10.1.0.4:15008".parse().unwrap());
    assert_eq!(wp2.identity.as_str(), "spiffe://cluster.local/ns/ns/sa/wp2");
}

// Istio: "A weight of 0 means the waypoint is described (and may be validated/reported) but
// receives no traffic" (proto/workload.proto, WeightedWaypoint.weight).
#[test]
fn weight_zero_gets_no_connection_but_is_still_accepted() {
    let (s, r) = mesh(None, &[("wp1", 0), ("wp2", 5)]);
    assert!(r.is_empty(), "{r:?}");
    let state = s.build();
    assert_eq!(split(&state, 100).get("wp1"), None);
    // Without `waypoint`, the first weighted entry with a weight is the service's waypoint.
    assert_eq!(web(&state).service.waypoint.as_ref().unwrap().name, "wp2");
    assert_eq!(state.waypoints_of["ns/a"].len(), 2);
}

// Istio (`sample_weighted_waypoint`): all weights 0 is not samplable, the single `waypoint`
// applies. Without one Istio would go direct; we fail closed.
#[test]
fn all_zero_falls_back_to_waypoint_else_fails_closed() {
    let (s, r) = mesh(Some("wp2"), &[("wp1", 0), ("wp2", 0)]);
    assert!(r.is_empty(), "{r:?}");
    let state = s.build();
    assert_eq!(split(&state, 10)["wp2"], 10);
    assert!(web(&state).service.weighted_waypoints.is_none());

    let (s, r) = mesh(None, &[("wp1", 0), ("wp2", 0)]);
    assert!(r.is_empty(), "{r:?}");
    let state = s.build();
    let sp = web(&state);
    let wp = sp.service.waypoint_for_connection().unwrap();
    assert_eq!(wp.waypoint_for, WaypointFor::None, "{wp:?}");
    assert_eq!(wp.namespace, "unresolved-waypoint");
}

// Istio: an unknown waypoint is `UnknownWaypoint` (the connection fails), never skipped.
#[test]
fn unknown_weighted_waypoint_fails_closed() {
    let (s, r) = mesh(None, &[("nowhere", 1)]);
    assert!(r.is_empty(), "{r:?}");
    let state = s.build();
    let wp = web(&state)
        .service
        .waypoint_for_connection()
        .unwrap()
        .clone();
    assert_eq!(wp.waypoint_for, WaypointFor::None);
    assert_eq!(wp.namespace, "unresolved-waypoint");
}

// Attacker (or a broken control plane): a huge table is refused by name; an entry without a
// destination too (Istio: `MissingGatewayAddress`).
#[test]
fn oversized_or_incomplete_tables_are_rejected_by_name() {
    let many: Vec<(String, u32)> = (0..10_000).map(|i| (format!("w{i}"), 1)).collect();
    let many: Vec<(&str, u32)> = many.iter().map(|(h, w)| (h.as_str(), *w)).collect();
    let (s, r) = mesh(None, &many);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].name, "ns/web.ns.svc.cluster.local");
    assert!(
        r[0].reason
            .contains("weighted_waypoints: 10000 entries (at most 64)"),
        "{}",
        r[0].reason
    );
    assert!(
        s.build()
            .service_by_vip("10.96.0.1:80".parse().unwrap())
            .is_none()
    );

    let mut web = svc("web", [10, 96, 0, 1], 80, 80);
    web.weighted_waypoints = vec![wl::WeightedWaypoint {
        destination: None,
        weight: 1,
    }];
    let r = store().apply_addresses(vec![addr_s(web)], vec![]);
    assert!(
        r[0].reason
            .contains("weighted_waypoints[0].destination: missing"),
        "{r:?}"
    );
}

// Attacker: u32::MAX weights neither overflow nor skew the split.
#[test]
fn maximal_weights_split_evenly() {
    let (s, r) = mesh(None, &[("wp1", u32::MAX), ("wp2", u32::MAX)]);
    assert!(r.is_empty(), "{r:?}");
    let c = split(&s.build(), 1000);
    assert_eq!((c["wp1"], c["wp2"]), (500, 500), "{c:?}");
}

// Hostname workloads (Istio: `hostname` without `addresses`, resolved by DNS at connect time)
// are not served yet: rejected by name, never taken for an address-less endpoint.
#[test]
fn hostname_only_workloads_are_rejected_by_name() {
    let w = wl::Workload {
        uid: "c//ServiceEntry/ns/db".into(),
        name: "db".into(),
        namespace: "ns".into(),
        hostname: "db.example.com".into(),
        ..Default::default()
    };
    let r = store().apply_addresses(
        vec![(
            w.uid.clone(),
            wl::Address {
                r#type: Some(wl::address::Type::Workload(w)),
            },
        )],
        vec![],
    );
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].reason.contains(
            "unsupported Istio field `hostname` (\"db.example.com\") without `addresses`"
        ),
        "{}",
        r[0].reason
    );
}
