//! Unit tests of `Workload.hostname` in the xDS conversion. Semantics checked against
//! istio/ztunnel `src/state.rs` (`pick_workload_destination_or_resolve`): a workload's
//! `addresses` are used whenever it has any; its `hostname` is resolved only when it has none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_xds::pb::workload as wl;

use super::test_support::{addr_w, store};

fn address(w: wl::Workload) -> Vec<(String, wl::Address)> {
    vec![addr_w(w)]
}

// Istio's ztunnel (src/state.rs, pick_workload_destination_or_resolve): "If the user requested
// the pod by a specific IP, use that directly", then any of `workload_ips`; `hostname` is looked
// up only when there is no IP. A workload with both is served at its address, never resolved.
#[test]
fn hostname_with_addresses_uses_the_addresses() {
    let mut s = store();
    let w = wl::Workload {
        uid: "c//ServiceEntry/ns/db".into(),
        name: "db".into(),
        namespace: "ns".into(),
        hostname: "db.example.com".into(),
        addresses: vec![vec![10, 228, 0, 9]],
        ..Default::default()
    };
    let r = s.apply_addresses(address(w), vec![]);
    assert!(r.is_empty(), "{r:?}");
    let state = s.build();
    let got = state.workload_by_ip("10.228.0.9".parse().unwrap());
    assert_eq!(got.map(|w| w.key()), Some("ns/db".to_owned()));
}

// Without addresses the hostname would have to be resolved at connect time: not served yet, so
// rejected by name (never taken for an address-less endpoint), and the rest of the update
// still applies.
#[test]
fn hostname_only_is_rejected_and_the_rest_applies() {
    let mut s = store();
    let mut both = address(wl::Workload {
        uid: "c//ServiceEntry/ns/db".into(),
        name: "db".into(),
        namespace: "ns".into(),
        hostname: "db.example.com".into(),
        ..Default::default()
    });
    both.extend(address(wl::Workload {
        uid: "c//Pod/ns/web".into(),
        name: "web".into(),
        namespace: "ns".into(),
        addresses: vec![vec![10, 228, 0, 10]],
        ..Default::default()
    }));
    let r = s.apply_addresses(both, vec![]);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].reason.contains("`hostname`"), "{}", r[0].reason);
    let state = s.build();
    assert!(
        state
            .workload_by_ip("10.228.0.10".parse().unwrap())
            .is_some()
    );
    assert!(!state.workloads.iter().any(|w| w.name == "db"));
}
