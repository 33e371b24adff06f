//! Fuzzing the decoding of workload-API resources (`istio.workload.Address`,
//! `istio.security.Authorization`) as the client's typed handler does it, over arbitrary
//! bytes and over valid messages encoded then mutated (tags, lengths, varints).
//!
//! Properties: no panic, every decode within the time bound, and
//! - a decoded message re-encodes canonically: decoding that again gives the same message,
//!   of the same encoded length (unknown fields are dropped on the first decode);
//! - the typed handler rejects a resource, by its name, exactly when it does not decode, and
//!   hands every other one over decoded.
//!
//! The conversion of decoded resources into the mesh state is fuzzed in
//! `bins/dataplane/tests/fuzz_xds.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/mutate.rs"]
mod mutate;

use std::sync::{Arc, Mutex};

use mesh_xds::pb::security as sec;
use mesh_xds::pb::workload as wl;
use mesh_xds::{ADDRESS_TYPE, Handler, Rejection, Typed};
use proptest::prelude::*;
use prost::Message;

fn seeds() -> Vec<Vec<u8>> {
    let mut services = std::collections::HashMap::new();
    services.insert(
        "ns/web.ns.svc.cluster.local".to_owned(),
        wl::PortList {
            ports: vec![wl::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: wl::AppProtocol::Http11 as i32,
            }],
        },
    );
    let workload = wl::Address {
        r#type: Some(wl::address::Type::Workload(wl::Workload {
            uid: "c//Pod/ns/a".into(),
            name: "a".into(),
            namespace: "ns".into(),
            addresses: vec![vec![10, 0, 0, 1], vec![0xfd; 16]],
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            service_account: "sa".into(),
            node: "n1".into(),
            services,
            authorization_policies: vec!["ns/p".into()],
            waypoint: Some(wl::GatewayAddress {
                destination: Some(wl::gateway_address::Destination::Hostname(
                    wl::NamespacedHostname {
                        namespace: "ns".into(),
                        hostname: "wp.ns.svc.cluster.local".into(),
                    },
                )),
                hbone_mtls_port: 15008,
            }),
            capacity: Some(3),
            ..Default::default()
        })),
    };
    let service = wl::Address {
        r#type: Some(wl::address::Type::Service(wl::Service {
            name: "web".into(),
            namespace: "ns".into(),
            hostname: "web.ns.svc.cluster.local".into(),
            addresses: vec![wl::NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 1],
                length: Some(32),
            }],
            ports: vec![wl::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
            ..Default::default()
        })),
    };
    let auth = sec::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    principals: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Prefix(
                            "cluster.local/ns/".into(),
                        )),
                    }],
                    source_ips: vec![sec::Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    destination_ports: vec![80, 443],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    vec![
        workload.encode_to_vec(),
        service.encode_to_vec(),
        auth.encode_to_vec(),
    ]
}

const DICT: &[&[u8]] = &[
    b"\x0a",
    b"\x12",
    b"\x1a",
    b"\x2a",
    b"\x08",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x10",
    b"\x00",
    b"\x0f",
    b"\xa2\x01",
];

fn canonical<M: Message + Default + PartialEq + std::fmt::Debug>(
    b: &[u8],
) -> Result<(), TestCaseError> {
    if let Ok(m) = mutate::timed("decode", b.len(), || M::decode(b)) {
        let once = m.encode_to_vec();
        let again = M::decode(once.as_slice()).unwrap();
        prop_assert_eq!(&again, &m);
        // Same length, not same bytes: `map` fields encode in hash order.
        prop_assert_eq!(again.encoded_len(), once.len());
    }
    Ok(())
}

fn inputs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![mutate::bytes(400), mutate::near(seeds(), DICT)]
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn decoding_is_canonical(b in inputs()) {
        canonical::<wl::Address>(&b)?;
        canonical::<sec::Authorization>(&b)?;
    }

    #[test]
    fn typed_handler_rejects_exactly_what_does_not_decode(
        bs in prop::collection::vec(inputs(), 0..5),
    ) {
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = got.clone();
        let h = Typed::<wl::Address, _>::new(ADDRESS_TYPE, move |u, _| {
            seen.lock().unwrap().extend(u.into_iter().map(|(n, _)| n));
            Vec::<Rejection>::new()
        });
        let upserts: Vec<(String, Vec<u8>)> =
            bs.iter().enumerate().map(|(i, b)| (format!("r{i}"), b.clone())).collect();
        let n = bs.iter().map(Vec::len).sum();
        let rejected = mutate::timed("Typed::apply", n, || {
            got.lock().unwrap().clear();
            h.apply(upserts.clone(), vec![])
        });
        for (name, b) in &upserts {
            let decodes = wl::Address::decode(b.as_slice()).is_ok();
            let r = rejected.iter().find(|r| &r.name == name);
            prop_assert_eq!(r.is_none(), decodes, "{}", name);
            if let Some(r) = r {
                prop_assert!(r.reason.contains(ADDRESS_TYPE));
            }
            prop_assert_eq!(got.lock().unwrap().contains(name), decodes);
        }
    }
}
