//! Fuzzing what istiod sends: `istio.workload.Address` and `istio.security.Authorization`
//! resources decoded by the xDS client's typed handler (`mesh_xds::Typed`, prost) from
//! arbitrary bytes and from valid messages encoded then mutated, then converted by
//! `XdsStore` (`apply_addresses`, `apply_authorizations`) and built into a `MeshState`.
//!
//! Properties: no panic, every apply and build within the time bound, and
//! - every resource is either rejected by its name or held, never both, never neither
//!   (except an unconvertible Authorization, which is both: rejected and held as a DENY);
//! - fail closed: each Authorization rejected by conversion, unless `dry_run`, is listed in
//!   the built state's `failed_policies`;
//! - every workload of the built state is found by its address;
//! - removing every resource empties the store and the state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/mutate.rs"]
mod mutate;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use mesh_dataplane::config::xds::{XdsSettings, XdsStore};
use mesh_xds::pb::security as sec;
use mesh_xds::pb::workload as wl;
use mesh_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, Handler, Rejection, Typed};
use proptest::prelude::*;
use prost::Message;

fn store() -> Arc<Mutex<XdsStore>> {
    Arc::new(Mutex::new(XdsStore::new(XdsSettings {
        node: "n1".into(),
        node_address: "10.0.0.1".parse().unwrap(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        service_listeners: true,
    })))
}

/// The two typed handlers the dataplane registers, over one store.
fn handlers(s: &Arc<Mutex<XdsStore>>) -> (impl Handler, impl Handler) {
    let (a, b) = (s.clone(), s.clone());
    (
        Typed::<wl::Address, _>::new(ADDRESS_TYPE, move |u, r| {
            a.lock().unwrap().apply_addresses(u, r)
        }),
        Typed::<sec::Authorization, _>::new(AUTHORIZATION_TYPE, move |u, r| {
            b.lock().unwrap().apply_authorizations(u, r)
        }),
    )
}

fn ip() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (0u8..4).prop_map(|i| vec![10, 0, 0, i]),
        2 => any::<[u8; 4]>().prop_map(|a| a.to_vec()),
        1 => any::<[u8; 16]>().prop_map(|a| a.to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "ns", "web", "wp", "istio-system"]).prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

fn port() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 1u32..100, 1 => any::<u32>()]
}

fn gateway() -> impl Strategy<Value = Option<wl::GatewayAddress>> {
    use wl::gateway_address::Destination;
    prop::option::of(
        (
            prop_oneof![
                (name(), name()).prop_map(|(namespace, h)| Destination::Hostname(
                    wl::NamespacedHostname {
                        namespace,
                        hostname: format!("{h}.ns.svc.cluster.local"),
                    }
                )),
                ip().prop_map(|address| Destination::Address(wl::NetworkAddress {
                    network: String::new(),
                    address,
                    length: None,
                })),
            ],
            port(),
        )
            .prop_map(|(d, p)| wl::GatewayAddress {
                destination: Some(d),
                hbone_mtls_port: p,
            }),
    )
}

fn ports() -> impl Strategy<Value = Vec<wl::Port>> {
    prop::collection::vec(
        (port(), port(), 0i32..7).prop_map(|(s, t, a)| wl::Port {
            service_port: s,
            target_port: t,
            app_protocol: a,
        }),
        0..3,
    )
}

fn workload() -> impl Strategy<Value = wl::Workload> {
    (
        (name(), name(), prop::collection::vec(ip(), 0..3), 0i32..4),
        (
            prop::sample::select(vec!["", "cluster.local", "other.td", "bad td"]),
            name(),
            gateway(),
            prop::sample::select(vec!["", "n1", "n2"]),
        ),
        (
            prop::collection::hash_map(
                name().prop_map(|h| format!("ns/{h}.ns.svc.cluster.local")),
                ports(),
                0..3,
            ),
            prop::collection::vec(name().prop_map(|p| format!("ns/{p}")), 0..3),
            0i32..3,
            name(),
        ),
    )
        .prop_map(
            |((n, namespace, addresses, tp), (td, sa, waypoint, node), (svcs, pols, st, cn))| {
                wl::Workload {
                    uid: format!("c//Pod/{namespace}/{n}"),
                    name: n,
                    namespace,
                    addresses,
                    tunnel_protocol: tp,
                    trust_domain: td.into(),
                    service_account: sa,
                    waypoint,
                    node: node.into(),
                    canonical_name: cn,
                    services: svcs
                        .into_iter()
                        .map(|(k, ports)| (k, wl::PortList { ports }))
                        .collect::<HashMap<_, _>>(),
                    authorization_policies: pols,
                    status: st,
                    ..Default::default()
                }
            },
        )
}

fn service() -> impl Strategy<Value = wl::Service> {
    (
        name(),
        prop::collection::vec((ip(), prop::option::of(0u32..130)), 0..3),
        ports(),
        gateway(),
    )
        .prop_map(|(n, addrs, ports, waypoint)| wl::Service {
            hostname: format!("{n}.ns.svc.cluster.local"),
            name: n,
            namespace: "ns".into(),
            addresses: addrs
                .into_iter()
                .map(|(address, length)| wl::NetworkAddress {
                    network: String::new(),
                    address,
                    length,
                })
                .collect(),
            ports,
            waypoint,
            ..Default::default()
        })
}

fn address() -> impl Strategy<Value = wl::Address> {
    prop_oneof![
        workload().prop_map(|w| wl::Address {
            r#type: Some(wl::address::Type::Workload(w))
        }),
        service().prop_map(|s| wl::Address {
            r#type: Some(wl::address::Type::Service(s))
        }),
        Just(wl::Address { r#type: None }),
    ]
}

fn string_matches() -> impl Strategy<Value = Vec<sec::StringMatch>> {
    use sec::string_match::MatchType;
    prop::collection::vec(
        prop::option::of(prop_oneof![
            name().prop_map(MatchType::Exact),
            name().prop_map(MatchType::Prefix),
            name().prop_map(MatchType::Suffix),
            Just(MatchType::Presence(())),
        ])
        .prop_map(|match_type| sec::StringMatch { match_type }),
        0..2,
    )
}

fn cidrs() -> impl Strategy<Value = Vec<sec::Address>> {
    prop::collection::vec(
        (ip(), 0u32..140).prop_map(|(address, length)| sec::Address { address, length }),
        0..2,
    )
}

fn matches() -> impl Strategy<Value = sec::Match> {
    (
        (
            string_matches(),
            string_matches(),
            string_matches(),
            string_matches(),
        ),
        (cidrs(), cidrs(), cidrs()),
        (
            prop::collection::vec(port(), 0..2),
            prop::collection::vec(port(), 0..2),
            prop::collection::vec(
                (name(), name()).prop_map(|(namespace, service_account)| {
                    sec::ServiceAccountMatch {
                        namespace,
                        service_account,
                    }
                }),
                0..2,
            ),
        ),
    )
        .prop_map(
            |((ns, nns, pr, npr), (src, nsrc, dst), (ports, nports, sas))| sec::Match {
                namespaces: ns,
                not_namespaces: nns,
                principals: pr,
                not_principals: npr,
                source_ips: src,
                not_source_ips: nsrc,
                destination_ips: dst,
                destination_ports: ports,
                not_destination_ports: nports,
                service_accounts: sas,
                ..Default::default()
            },
        )
}

fn authorization() -> impl Strategy<Value = sec::Authorization> {
    let rule = prop::collection::vec(
        prop::collection::vec(matches(), 0..3).prop_map(|matches| sec::Clause { matches }),
        0..3,
    )
    .prop_map(|clauses| sec::Rule { clauses });
    (
        name(),
        name(),
        0i32..4,
        0i32..3,
        prop::collection::vec(rule, 0..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(n, namespace, scope, action, rules, dry_run)| sec::Authorization {
                name: n,
                namespace,
                scope,
                action,
                rules,
                dry_run,
                ..Default::default()
            },
        )
}

const DICT: &[&[u8]] = &[
    b"\x0a",
    b"\x12",
    b"\x1a\x04\x0a\x00\x00\x01",
    b"\x08\x01",
    b"\xff\xff\xff\xff\x0f",
    b"\x80",
    b"\x00",
];

/// Applies `upserts` (distinct names) through the handlers and checks the bookkeeping.
fn check(addresses: Vec<Vec<u8>>, authorizations: Vec<Vec<u8>>) -> Result<(), TestCaseError> {
    let s = store();
    let (ha, hp) = handlers(&s);
    let named = |p: &str, v: Vec<Vec<u8>>| -> Vec<(String, Vec<u8>)> {
        v.into_iter()
            .enumerate()
            .map(|(i, b)| (format!("{p}{i}"), b))
            .collect()
    };
    let a_up = named("a", addresses);
    let p_up = named("p", authorizations);
    let len = a_up.iter().chain(&p_up).map(|(_, b)| b.len()).sum();
    let ra = mutate::timed("apply addresses", len, || ha.apply(a_up.clone(), vec![]));
    let rp = mutate::timed("apply authorizations", len, || {
        hp.apply(p_up.clone(), vec![])
    });
    let names = |r: &[Rejection]| r.iter().map(|r| r.name.clone()).collect::<BTreeSet<_>>();
    let (na, np) = (names(&ra), names(&rp));
    prop_assert_eq!(na.len(), ra.len(), "a resource rejected twice");
    prop_assert_eq!(np.len(), rp.len(), "a resource rejected twice");
    prop_assert!(na.iter().all(|n| a_up.iter().any(|(u, _)| u == n)));
    prop_assert!(np.iter().all(|n| p_up.iter().any(|(u, _)| u == n)));
    // Which rejected Authorizations must be held (fail closed): decoded, not dry-run.
    let mut held_failed = BTreeSet::new();
    for (n, b) in &p_up {
        if np.contains(n)
            && let Ok(a) = sec::Authorization::decode(b.as_slice())
            && !a.dry_run
        {
            held_failed.insert(n.clone());
        }
    }
    let state = {
        let st = s.lock().unwrap();
        let (w, sv, p) = st.len();
        prop_assert_eq!(w + sv + ra.len(), a_up.len());
        prop_assert_eq!(p + rp.len(), p_up.len() + held_failed.len());
        mutate::timed("build", len, || st.build())
    };
    let failed: BTreeSet<String> = state.failed_policies.keys().cloned().collect();
    prop_assert_eq!(failed, held_failed, "not failing closed");
    for w in &state.workloads {
        prop_assert!(
            state.workload_by_ip(w.address).is_some(),
            "{} not indexed",
            w.name
        );
    }
    // Removing everything empties the store and the state.
    ha.apply(vec![], a_up.iter().map(|(n, _)| n.clone()).collect());
    hp.apply(vec![], p_up.iter().map(|(n, _)| n.clone()).collect());
    let st = s.lock().unwrap();
    prop_assert_eq!(st.len(), (0, 0, 0));
    let empty = st.build();
    prop_assert!(empty.workloads.is_empty() && empty.failed_policies.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn arbitrary_bytes(
        a in prop::collection::vec(mutate::bytes(200), 0..4),
        p in prop::collection::vec(mutate::bytes(200), 0..4),
    ) {
        check(a, p)?;
    }

    #[test]
    fn valid_resources(
        a in prop::collection::vec(address(), 0..8),
        p in prop::collection::vec(authorization(), 0..4),
    ) {
        check(
            a.iter().map(Message::encode_to_vec).collect(),
            p.iter().map(Message::encode_to_vec).collect(),
        )?;
    }

    #[test]
    fn mutated_resources(
        a in prop::collection::vec(
            mutate::mutated(address().prop_map(|m| m.encode_to_vec()), DICT), 0..6),
        p in prop::collection::vec(
            mutate::mutated(authorization().prop_map(|m| m.encode_to_vec()), DICT), 0..4),
    ) {
        check(a, p)?;
    }
}
