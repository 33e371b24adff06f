//! Unit tests of the xDS store: conversion, endpoints, waypoints, caching, and patched builds
//! equal to full ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use mesh_identity::SpiffeId;

use mesh_xds::pb::security as sec;
use mesh_xds::pb::workload as wl;

use super::super::{MeshState, WaypointFor};
use super::*;

use super::test_support::{addr_s, addr_w, pod, store, svc};

fn wk(name: &str, ip: [u8; 4], services: &[(&str, u32, u32)]) -> wl::Workload {
    let mut map = HashMap::new();
    for (k, p, t) in services {
        map.entry((*k).to_owned())
            .or_insert_with(wl::PortList::default)
            .ports
            .push(wl::Port {
                service_port: *p,
                target_port: *t,
                app_protocol: 0,
            });
    }
    wl::Workload {
        services: map,
        ..pod(name, ip, "n1")
    }
}

#[test]
fn unsupported_fields_are_rejected_by_name_and_the_rest_applies() {
    let mut s = store();
    // `network` is served since Istio 1.31 support (`tests_131.rs`); reaching another network
    // through its gateway is not.
    let mut net = wk("net", [10, 1, 0, 2], &[]);
    net.network_gateway = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(
            wl::NetworkAddress {
                network: "other".into(),
                address: vec![10, 9, 9, 9],
                length: None,
            },
        )),
        hbone_mtls_port: 15008,
    });
    let mut legacy = wk("legacy", [10, 1, 0, 3], &[]);
    legacy.tunnel_protocol = wl::TunnelProtocol::LegacyIstioMtls as i32;
    let mut bad_ip = wk("bad", [10, 1, 0, 4], &[]);
    bad_ip.addresses = vec![vec![1, 2, 3]];
    let rejected = s.apply_addresses(
        vec![
            addr_w(wk("good", [10, 1, 0, 1], &[])),
            addr_w(net),
            addr_w(legacy),
            addr_w(bad_ip),
        ],
        vec![],
    );
    let reasons: Vec<String> = rejected
        .iter()
        .map(|r| format!("{}: {}", r.name, r.reason))
        .collect();
    assert_eq!(rejected.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("c//Pod/ns/net") && reasons[0].contains("`network_gateway`"));
    assert!(reasons[1].contains("`tunnel_protocol`"));
    assert!(reasons[2].contains("addresses[0]") && reasons[2].contains("3 bytes"));
    let state = s.build();
    assert_eq!(state.workloads.len(), 1);
    assert!(state.workload_by_ip("10.1.0.1".parse().unwrap()).is_some());

    let dry = sec::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        dry_run: true,
        ..Default::default()
    };
    let r = s.apply_authorizations(vec![("ns/p".into(), dry)], vec![]);
    assert!(r[0].reason.contains("`dry_run`"), "{r:?}");
}

#[test]
fn services_take_endpoints_from_workloads() {
    let mut s = store();
    let key = "ns/web.ns.svc.cluster.local";
    let mut sick = wk("sick", [10, 1, 0, 3], &[(key, 80, 8080)]);
    sick.status = wl::WorkloadStatus::Unhealthy as i32;
    let r = s.apply_addresses(
        vec![
            addr_s(svc("web", [10, 96, 0, 1], 80, 9090)),
            // Its own target port wins; 0 falls back to the service's.
            addr_w(wk("a", [10, 1, 0, 1], &[(key, 80, 8080)])),
            addr_w(wk("b", [10, 1, 0, 2], &[(key, 80, 0)])),
            addr_w(sick),
        ],
        vec![],
    );
    assert!(r.is_empty(), "{r:?}");
    let state = s.build();
    let sp = state
        .service_by_vip("10.96.0.1:80".parse().unwrap())
        .unwrap();
    let eps: Vec<(String, u16)> = sp
        .endpoints
        .iter()
        .map(|e| (e.workload.name.clone(), e.port))
        .collect();
    assert_eq!(eps, vec![("a".into(), 8080), ("b".into(), 9090)]);
    assert!(
        state
            .service_by_host("web.ns.svc.cluster.local", 80)
            .is_some()
    );
    // Local HBONE workloads are the node's; removal takes a workload out everywhere.
    assert_eq!(state.node("n1").unwrap().workloads.len(), 3);
    s.apply_addresses(vec![], vec!["c//Pod/ns/a".into()]);
    let state = s.build();
    let sp = state
        .service_by_vip("10.96.0.1:80".parse().unwrap())
        .unwrap();
    assert_eq!(sp.endpoints.len(), 1);
    assert!(state.workload_by_ip("10.1.0.1".parse().unwrap()).is_none());
}

#[test]
fn waypoints_resolve_to_their_workload_or_fail_closed() {
    let mut s = store();
    let wp_key = "ns/wp.ns.svc.cluster.local";
    let mut web = svc("web", [10, 96, 0, 1], 80, 80);
    web.waypoint = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(
            wl::NamespacedHostname {
                namespace: "ns".into(),
                hostname: "wp.ns.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    });
    let mut lost = wk("lost", [10, 1, 0, 9], &[]);
    lost.waypoint = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(
            wl::NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 9, 9],
                length: None,
            },
        )),
        hbone_mtls_port: 0,
    });
    let r = s.apply_addresses(
        vec![
            addr_s(web),
            addr_s(svc("wp", [10, 96, 0, 2], 15008, 15008)),
            addr_w(wk("waypoint", [10, 1, 0, 7], &[(wp_key, 15008, 15008)])),
            addr_w(wk(
                "a",
                [10, 1, 0, 1],
                &[("ns/web.ns.svc.cluster.local", 80, 80)],
            )),
            addr_w(lost),
        ],
        vec![],
    );
    assert!(r.is_empty(), "{r:?}");
    let state = s.build();
    let sp = state
        .service_by_vip("10.96.0.1:80".parse().unwrap())
        .unwrap();
    let wp = sp.service.waypoint.as_ref().unwrap();
    assert_eq!(wp.hbone_addr(), "10.1.0.7:15008".parse().unwrap());
    assert_eq!(
        wp.identity.as_str(),
        "spiffe://cluster.local/ns/ns/sa/waypoint"
    );
    // Only the waypoint may reach the service's endpoints.
    assert_eq!(state.waypoints_of["ns/a"].len(), 1);
    // A waypoint nobody describes: traffic goes nowhere rather than around it.
    let lost = state.workload_by_ip("10.1.0.9".parse().unwrap()).unwrap();
    let wp = lost.waypoint.as_ref().unwrap();
    assert_eq!(wp.hbone_addr(), "10.96.9.9:15008".parse().unwrap());
    assert_eq!(wp.waypoint_for, WaypointFor::None);
}

#[test]
fn unchanged_services_are_reused_changed_ones_rebuilt() {
    let mut s = store();
    let web = "ns/web.ns.svc.cluster.local";
    let db = "ns/db.ns.svc.cluster.local";
    s.apply_addresses(
        vec![
            addr_s(svc("web", [10, 96, 0, 1], 80, 80)),
            addr_s(svc("db", [10, 96, 0, 2], 5432, 5432)),
            addr_w(wk("w1", [10, 1, 0, 1], &[(web, 80, 8080)])),
            addr_w(wk("d1", [10, 1, 0, 2], &[(db, 5432, 5432)])),
        ],
        vec![],
    );
    let port = |st: &MeshState, vip: &str| st.service_by_vip(vip.parse().unwrap()).cloned();
    let a = s.build();
    // w1 changes its target port: web is rebuilt, db is shared.
    s.apply_addresses(
        vec![addr_w(wk("w1", [10, 1, 0, 1], &[(web, 80, 8081)]))],
        vec![],
    );
    let b = s.build();
    let (web_a, web_b) = (
        port(&a, "10.96.0.1:80").unwrap(),
        port(&b, "10.96.0.1:80").unwrap(),
    );
    assert!(!Arc::ptr_eq(&web_a, &web_b));
    assert_eq!(web_b.endpoints[0].port, 8081);
    assert!(Arc::ptr_eq(
        &port(&a, "10.96.0.2:5432").unwrap(),
        &port(&b, "10.96.0.2:5432").unwrap()
    ));
    // d1 leaves: db has no endpoint any more; a removed service disappears.
    s.apply_addresses(vec![], vec!["c//Pod/ns/d1".into()]);
    let c = s.build();
    assert!(port(&c, "10.96.0.2:5432").unwrap().endpoints.is_empty());
    s.apply_addresses(vec![], vec![db.into()]);
    let d = s.build();
    assert!(port(&d, "10.96.0.2:5432").is_none());
    assert!(Arc::ptr_eq(&web_b, &port(&d, "10.96.0.1:80").unwrap()));
    // A second workload on w1's address: nothing cached is trusted, the first by
    // resource name stays the endpoint.
    s.apply_addresses(vec![addr_w(wk("a0", [10, 1, 0, 1], &[]))], vec![]);
    let e = s.build();
    let web_e = port(&e, "10.96.0.1:80").unwrap();
    assert!(!Arc::ptr_eq(&web_b, &web_e));
    assert!(web_e.endpoints.is_empty(), "a0 owns the address now");
}

/// What a proxy reads from a state, in a comparable form.
fn summary(st: &MeshState) -> Vec<String> {
    let mut out = Vec::new();
    for w in &st.workloads {
        out.push(format!(
            "w {} {} {:?} authz={:?}",
            w.key(),
            w.address,
            w.node,
            st.authz.applied(&w.key())
        ));
        let at = st.workload_by_ip(w.address).map(|x| x.key());
        out.push(format!("ip {} {:?}", w.address, at));
    }
    let mut vips: Vec<String> = st
        .vips()
        .map(|(a, sp)| {
            let eps: Vec<String> = sp
                .endpoints
                .iter()
                .map(|e| format!("{}:{}", e.workload.key(), e.port))
                .collect();
            format!("vip {a} {eps:?}")
        })
        .collect();
    vips.sort();
    out.extend(vips);
    let local: Vec<String> = st
        .node("n1")
        .map(|n| n.workloads.iter().map(|w| w.key()).collect())
        .unwrap_or_default();
    out.push(format!("local {local:?}"));
    out
}

/// Patched builds equal full builds of the same resources, through a long random
/// sequence of workload changes (addresses, nodes, services, health, listed policies).
#[test]
fn incremental_builds_equal_full_builds() {
    let mut inc = store();
    let svc_keys = ["ns/s0.ns.svc.cluster.local", "ns/s1.ns.svc.cluster.local"];
    let services = vec![
        addr_s(svc("s0", [10, 96, 0, 1], 80, 8080)),
        addr_s(svc("s1", [10, 96, 0, 2], 90, 0)),
    ];
    let deny = sec::Authorization {
        name: "d".into(),
        namespace: "ns".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        rules: vec![sec::Rule::default()],
        ..Default::default()
    };
    inc.apply_addresses(services.clone(), vec![]);
    inc.apply_authorizations(vec![("ns/d".into(), deny.clone())], vec![]);
    let mut current: BTreeMap<String, wl::Workload> = BTreeMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let _ = inc.build();
    for step in 0..300 {
        let id = next(12);
        let uid = format!("c//Pod/ns/w{id}");
        if next(4) == 0 {
            current.remove(&uid);
            inc.apply_addresses(vec![], vec![uid]);
        } else {
            let svc = svc_keys[next(2) as usize];
            let mut w = wk(
                &format!("w{id}"),
                // Addresses unique per workload id, sometimes moving.
                [10, 1, next(2) as u8, id as u8 + 1],
                &[(
                    svc,
                    if svc.contains("s0") { 80 } else { 90 },
                    next(3) as u32 * 1000,
                )],
            );
            w.node = if next(2) == 0 { "n1" } else { "n2" }.into();
            if next(5) == 0 {
                w.status = wl::WorkloadStatus::Unhealthy as i32;
            }
            if next(3) == 0 {
                w.authorization_policies = vec!["ns/d".into()];
            }
            current.insert(uid.clone(), w.clone());
            inc.apply_addresses(vec![addr_w(w)], vec![]);
        }
        let patched = inc.build();
        let mut fresh = store();
        fresh.apply_addresses(services.clone(), vec![]);
        fresh.apply_authorizations(vec![("ns/d".into(), deny.clone())], vec![]);
        fresh.apply_addresses(current.values().cloned().map(addr_w).collect(), vec![]);
        let full = fresh.build();
        assert_eq!(summary(&patched), summary(&full), "step {step}");
    }
    assert!(
        inc.lock_cache().patched >= 290,
        "{}",
        inc.lock_cache().patched
    );
}

/// A sidecar's own workload is local whatever node istiod names; others are not.
#[test]
fn a_sidecar_serves_its_own_workload() {
    let mut s = XdsStore::new(XdsSettings {
        node: "sidecar/ns/a".into(),
        ..store().settings.clone()
    })
    .serving(Local::OneWorkload {
        workload: "ns/a".into(),
    });
    s.set_l7(Arc::new(Resources::default()));
    s.apply_addresses(
        vec![
            addr_w(wk("a", [10, 1, 0, 1], &[])),
            addr_w(wk("b", [10, 1, 0, 2], &[])),
        ],
        vec![],
    );
    let state = s.build();
    let node = state.node("sidecar/ns/a").unwrap();
    let local: Vec<String> = node.workloads.iter().map(|w| w.key()).collect();
    assert_eq!(local, vec!["ns/a".to_owned()]);
    assert_eq!(
        node.workloads[0].hbone_addr,
        Some("10.1.0.1:15008".parse().unwrap())
    );
}

/// A waypoint is in its own state before istiod names it, with its own identity; the L7
/// kinds of its file are merged with istiod's services, and a route to a host istiod does
/// not have is reported without failing the build.
#[test]
fn a_waypoint_merges_its_l7_file() {
    let identity: SpiffeId = "spiffe://cluster.local/ns/ns/sa/wp".parse().unwrap();
    let mut s = store().serving(Local::Gateway {
        key: "ns/wp".into(),
        identity: identity.clone(),
    });
    let l7 = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: ns}\nspec:\n  hosts: [web.ns.svc.cluster.local]\n  http:\n  - route: [{destination: {host: gone.ns.svc.cluster.local}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: ns}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n";
    s.set_l7(super::super::parse_l7(std::path::Path::new("l7.yaml"), l7).unwrap());
    let state = s.build();
    let wp = &state.waypoints["ns/wp"];
    assert_eq!(wp.identity, identity);
    assert_eq!(wp.address, "10.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(state.waypoint_policies["Gateway/ns/wp"].len(), 1);
    s.apply_addresses(
        vec![
            addr_s(svc("web", [10, 96, 0, 1], 80, 8080)),
            addr_w(wk(
                "w1",
                [10, 1, 0, 1],
                &[("ns/web.ns.svc.cluster.local", 80, 8080)],
            )),
        ],
        vec![],
    );
    let state = s.build();
    assert!(state.routes.contains_key("web.ns.svc.cluster.local"));
    let set = state
        .endpoint_set("web.ns.svc.cluster.local", 80, None)
        .unwrap();
    assert_eq!(set.endpoints.len(), 1);
    assert!(s.lock_cache().issues.contains("gone.ns.svc.cluster.local"));
}

#[test]
fn metric_labels_take_the_workload_cluster_and_locality() {
    // istio/ztunnel `src/proxy/metrics.rs` `with_source` / `with_destination`:
    // `source_cluster` is the workload's `cluster_id`; region and zone from its locality,
    // `unknown` when empty.
    let mut s = store();
    let mut east = wk("east", [10, 1, 0, 1], &[]);
    east.cluster_id = "east".into();
    east.locality = Some(wl::Locality {
        region: "us-east1".into(),
        zone: "us-east1-b".into(),
        subzone: String::new(),
    });
    let local = wk("local", [10, 1, 0, 2], &[]);
    assert!(
        s.apply_addresses(vec![addr_w(east), addr_w(local)], vec![])
            .is_empty()
    );
    let state = s.build();
    let t = |ip: &str| {
        state
            .workload_by_ip(ip.parse().unwrap())
            .unwrap()
            .telemetry
            .clone()
    };
    let e = t("10.1.0.1");
    assert_eq!(
        (&*e.cluster, &*e.region, &*e.zone),
        ("east", "us-east1", "us-east1-b")
    );
    let l = t("10.1.0.2");
    assert_eq!(
        (&*l.cluster, &*l.region, &*l.zone),
        ("Kubernetes", "unknown", "unknown")
    );
}
