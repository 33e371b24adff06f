//! Property test of the client-dependent lookups against a direct transcription of Istio's
//! ztunnel ranking (`ServiceStore::get_best_by_vip`: `ServiceMatch::find_best_match` over the
//! visible services at the exact VIP, else the best `CidrMatchRank` over the visible CIDR
//! services holding the address), for random services sharing one VIP and nested CIDRs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use mesh_xds::pb::workload as wl;

use super::super::MeshState;
use super::tests_131::{addr, na, store, svc};

/// One random service: namespace, canonical, NAMESPACE-visible, and `None` for the exact
/// VIP 10.0.0.1 or `Some(len)` for the CIDR 10.0.0.0/len.
type Spec = (usize, bool, bool, Option<u8>);

const NAMESPACES: [&str; 4] = ["a", "b", "c", "d"];

fn specs() -> impl Strategy<Value = Vec<Spec>> {
    proptest::collection::vec(
        (
            0..3usize,
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(prop_oneof![Just(8u8), Just(16), Just(24), Just(30)]),
        ),
        1..12,
    )
}

/// The state from `specs`, resource names in spec order (the store's order, Istio's "first").
fn state(specs: &[Spec]) -> MeshState {
    let mut st = store("");
    let resources = specs
        .iter()
        .enumerate()
        .map(|(i, (ns, canonical, private, cidr))| {
            let addresses = match cidr {
                None => vec![na("", [10, 0, 0, 1], None)],
                Some(len) => vec![na("", [10, 0, 0, 0], Some(u32::from(*len)))],
            };
            let mut s = svc(
                NAMESPACES[*ns],
                &format!("s{i:02}"),
                &format!("h{i}.svc"),
                addresses,
            );
            s.canonical = *canonical;
            if *private {
                s.visibility = wl::service::Visibility::Namespace as i32;
            }
            (
                format!("{i:02}"),
                wl::Address {
                    r#type: Some(wl::address::Type::Service(s)),
                },
            )
        })
        .collect();
    assert!(st.apply_addresses(resources, vec![]).is_empty());
    st.build()
}

/// Istio's answer (the index of the spec), transcribed from istio/ztunnel
/// `src/state/service.rs`.
fn istio(specs: &[Spec], exact_vip: bool, client: Option<usize>) -> Option<usize> {
    let visible = |s: &Spec| client.is_none_or(|c| !s.2 || s.0 == c);
    if exact_vip {
        // find_best_match: Done on the client's namespace; a canonical one replaces the
        // candidate; else the first.
        let mut best: Option<(usize, bool)> = None;
        for (i, s) in specs.iter().enumerate() {
            if s.3.is_some() || !visible(s) {
                continue;
            }
            if Some(s.0) == client {
                return Some(i);
            } else if s.1 {
                best = Some((i, true));
            } else if best.is_none() {
                best = Some((i, false));
            }
        }
        if let Some((i, _)) = best {
            return Some(i);
        }
    }
    // get_best_by_cidr_vip: the first with a strictly greater (in_namespace, len, canonical).
    let mut best: Option<((bool, u8, bool), usize)> = None;
    for (i, s) in specs.iter().enumerate() {
        let Some(len) = s.3 else { continue };
        if !visible(s) {
            continue;
        }
        let rank = (client == Some(s.0), len, s.1);
        if best.is_none_or(|(b, _)| rank > b) {
            best = Some((rank, i));
        }
    }
    best.map(|(_, i)| i)
}

fn ours(state: &MeshState, a: &str, client: Option<usize>) -> Option<usize> {
    let sp = match client {
        Some(c) => state.service_for_client(addr(a), NAMESPACES[c]),
        None => state.service_at(addr(a)),
    }?;
    sp.service.name[1..].parse().ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn lookups_rank_as_istio(specs in specs()) {
        let state = state(&specs);
        for client in [None, Some(0), Some(1), Some(2), Some(3)] {
            prop_assert_eq!(
                ours(&state, "10.0.0.1:80", client),
                istio(&specs, true, client),
                "exact VIP, client {:?}", client
            );
            prop_assert_eq!(
                ours(&state, "10.0.0.2:80", client),
                istio(&specs, false, client),
                "CIDR only, client {:?}", client
            );
        }
    }
}
