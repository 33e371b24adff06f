//! The sans-IO xDS bookkeeping ([`mesh_xds::Session`]) driven directly: properties over
//! random sequences of responses, handler verdicts and stream restarts, checked against a
//! model (a map of accepted versions per type), plus edge cases.
//!
//! Properties:
//! - every response is answered by exactly one ACK or NACK carrying its nonce and type;
//! - a NACK never replaces the last accepted version of a resource it rejects;
//! - a resumed stream sends exactly the accepted versions (no removed, no rejected ones),
//!   the node on its first request only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_xds::session::{Received, nack_detail};
use mesh_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, NodeInfo, Rejection, Session};
use proptest::prelude::*;

const UNSUBSCRIBED: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const TYPES: [&str; 3] = [ADDRESS_TYPE, AUTHORIZATION_TYPE, UNSUBSCRIBED];
const NAMES: [&str; 5] = ["ns/a", "ns/b", "ns/c", "ns/d", "ns/e"];

fn session() -> Session {
    Session::new(
        NodeInfo::ztunnel("10.0.0.1", "z", "istio-system", "n1", "Kubernetes"),
        [ADDRESS_TYPE, AUTHORIZATION_TYPE],
    )
}

#[derive(Debug, Clone, Copy)]
enum Body {
    /// Of the response's type.
    Good,
    /// Of another type.
    WrongType,
    /// Missing.
    Missing,
}

#[derive(Debug, Clone)]
enum Op {
    Response {
        type_url: &'static str,
        nonce: u8,
        resources: Vec<(&'static str, u8, Body)>,
        removes: Vec<&'static str>,
        /// Names the handler refuses (some may not be in the update).
        refused: Vec<&'static str>,
    },
    Restart,
}

fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&NAMES[..])
}

fn op() -> impl Strategy<Value = Op> {
    let body = prop_oneof![
        6 => Just(Body::Good),
        1 => Just(Body::WrongType),
        1 => Just(Body::Missing),
    ];
    let response = (
        prop::sample::select(&TYPES[..]),
        0u8..4,
        prop::collection::vec((name(), 0u8..4, body), 0..5),
        prop::collection::vec(name(), 0..3),
        prop::collection::vec(name(), 0..2),
    )
        .prop_map(
            |(type_url, nonce, resources, removes, refused)| Op::Response {
                type_url,
                nonce,
                resources,
                removes,
                refused,
            },
        );
    prop_oneof![8 => response, 1 => Just(Op::Restart)]
}

fn response(
    type_url: &str,
    nonce: &str,
    resources: &[(&str, u8, Body)],
    removes: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources: resources
            .iter()
            .map(|(n, v, body)| Resource {
                name: (*n).into(),
                version: format!("v{v}"),
                resource: match body {
                    Body::Good => Some(Any {
                        type_url: type_url.into(),
                        value: vec![1],
                    }),
                    Body::WrongType => Some(Any {
                        type_url: UNSUBSCRIBED.into(),
                        value: vec![1],
                    }),
                    Body::Missing => None,
                },
                ..Default::default()
            })
            .collect(),
        removed_resources: removes.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

/// Feeds one response and a handler refusing `refused`; the requests sent in answer and the
/// names the handler was given.
fn feed(
    s: &mut Session,
    resp: DeltaDiscoveryResponse,
    refused: &[&str],
) -> (Vec<DeltaDiscoveryRequest>, Vec<String>) {
    match s.receive(resp) {
        Received::Reply(r) => (vec![*r], Vec::new()),
        Received::Apply(u) => {
            let given: Vec<String> = u.upserts.iter().map(|(n, _)| n.clone()).collect();
            let rejected = refused
                .iter()
                .map(|n| Rejection {
                    name: (*n).into(),
                    reason: "refused by the test".into(),
                })
                .collect();
            (s.complete(u.ticket, rejected).into_iter().collect(), given)
        }
    }
}

type Model = HashMap<&'static str, HashMap<String, String>>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bookkeeping_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut s = session();
        let mut model: Model = HashMap::new();
        let first = s.start();
        prop_assert_eq!(first.len(), 2);
        for op in ops {
            match op {
                Op::Restart => {
                    // Resume sends exactly the accepted versions: no removed, no rejected.
                    let reqs = s.start();
                    prop_assert_eq!(reqs.len(), 2);
                    for (i, r) in reqs.iter().enumerate() {
                        prop_assert_eq!(r.node.is_some(), i == 0);
                        prop_assert!(r.response_nonce.is_empty());
                        let want = model.get(r.type_url.as_str()).cloned().unwrap_or_default();
                        prop_assert_eq!(&r.initial_resource_versions, &want, "{}", r.type_url);
                    }
                }
                Op::Response { type_url, nonce, resources, removes, refused } => {
                    let nonce = format!("n{nonce}");
                    let before = model.clone();
                    let resp = response(type_url, &nonce, &resources, &removes);
                    let (replies, given) = feed(&mut s, resp, &refused);
                    // Exactly one answer, carrying the nonce and the type.
                    prop_assert_eq!(replies.len(), 1);
                    let reply = &replies[0];
                    prop_assert_eq!(&reply.response_nonce, &nonce);
                    prop_assert_eq!(&reply.type_url, type_url);
                    prop_assert!(reply.initial_resource_versions.is_empty());
                    if type_url == UNSUBSCRIBED {
                        prop_assert!(nack_detail(reply).is_some_and(|d| d.contains("not subscribed")));
                        prop_assert!(given.is_empty());
                        continue;
                    }
                    // The model: bad bodies and the handler's refusals are rejected.
                    let mut rejected: HashSet<&str> = refused.iter().copied().collect();
                    for (n, _, body) in &resources {
                        if !matches!(body, Body::Good) {
                            rejected.insert(n);
                        }
                    }
                    let known = model.entry(type_url).or_default();
                    for n in &removes {
                        known.remove(*n);
                    }
                    for (n, v, body) in &resources {
                        if matches!(body, Body::Good) && !rejected.contains(n) {
                            known.insert((*n).to_owned(), format!("v{v}"));
                        }
                    }
                    // Only decodable bodies reach the handler.
                    let good: Vec<String> = resources
                        .iter()
                        .filter(|(_, _, b)| matches!(b, Body::Good))
                        .map(|(n, _, _)| (*n).to_owned())
                        .collect();
                    prop_assert_eq!(given, good);
                    // ACK exactly when nothing was rejected; a NACK names each rejection.
                    match nack_detail(reply) {
                        None => prop_assert!(rejected.is_empty()),
                        Some(detail) => {
                            prop_assert!(!rejected.is_empty());
                            for n in &rejected {
                                prop_assert!(detail.contains(&format!("{n}: ")), "{detail}");
                            }
                        }
                    }
                    // A NACK never replaces the last accepted version.
                    for n in &rejected {
                        if !removes.contains(n) {
                            let old = before.get(type_url).and_then(|m| m.get(*n));
                            prop_assert_eq!(s.accepted(type_url).unwrap().get(*n), old, "{}", n);
                        }
                    }
                }
            }
            for t in [ADDRESS_TYPE, AUTHORIZATION_TYPE] {
                let want = model.get(t).cloned().unwrap_or_default();
                prop_assert_eq!(s.accepted(t).unwrap(), &want);
            }
        }
    }
}

#[test]
fn subscriptions_carry_the_node_once_and_nothing_known() {
    let mut s = session();
    let reqs = s.start();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].type_url, ADDRESS_TYPE);
    assert_eq!(reqs[1].type_url, AUTHORIZATION_TYPE);
    let node = reqs[0].node.as_ref().expect("node on the first request");
    assert!(node.id.starts_with("ztunnel~10.0.0.1~"), "{}", node.id);
    assert!(reqs[1].node.is_none());
    assert!(reqs.iter().all(|r| r.initial_resource_versions.is_empty()));
}

#[test]
fn a_repeated_type_is_subscribed_once() {
    let mut s = Session::new(NodeInfo::default(), [ADDRESS_TYPE, ADDRESS_TYPE]);
    assert_eq!(s.start().len(), 1);
    assert_eq!(s.type_urls().collect::<Vec<_>>(), [ADDRESS_TYPE]);
}

#[test]
fn duplicate_nonces_are_each_answered() {
    let mut s = session();
    s.start();
    let one = [("ns/a", 1, Body::Good)];
    let (r1, _) = feed(&mut s, response(ADDRESS_TYPE, "n1", &one, &[]), &[]);
    let two = [("ns/a", 2, Body::Good)];
    let (r2, _) = feed(&mut s, response(ADDRESS_TYPE, "n1", &two, &[]), &["ns/a"]);
    assert_eq!(r1.len(), 1);
    assert_eq!(r2.len(), 1);
    assert_eq!(r1[0].response_nonce, "n1");
    assert_eq!(r2[0].response_nonce, "n1");
    assert!(nack_detail(&r1[0]).is_none());
    assert!(nack_detail(&r2[0]).is_some());
    // The second (refused) one did not replace the first.
    assert_eq!(s.accepted(ADDRESS_TYPE).unwrap()["ns/a"], "v1");
}

#[test]
fn removal_of_an_unknown_name_is_acked_and_handed_over() {
    let mut s = session();
    s.start();
    let (r, _) = feed(
        &mut s,
        response(ADDRESS_TYPE, "n1", &[("ns/a", 1, Body::Good)], &[]),
        &[],
    );
    assert!(nack_detail(&r[0]).is_none());
    let Received::Apply(u) = s.receive(response(ADDRESS_TYPE, "n2", &[], &["ns/zz"])) else {
        panic!("an update");
    };
    assert_eq!(u.removes, ["ns/zz"]);
    let ack = s.complete(u.ticket, Vec::new()).expect("an answer");
    assert_eq!(ack.response_nonce, "n2");
    assert!(nack_detail(&ack).is_none());
    let known: Vec<_> = s.accepted(ADDRESS_TYPE).unwrap().keys().cloned().collect();
    assert_eq!(known, ["ns/a"]);
}

#[test]
fn a_response_for_an_unsubscribed_type_is_nacked_without_effect() {
    let mut s = session();
    s.start();
    let resp = response(UNSUBSCRIBED, "n7", &[("c1", 1, Body::Good)], &[]);
    let Received::Reply(nack) = s.receive(resp) else {
        panic!("an immediate NACK");
    };
    assert_eq!(nack.type_url, UNSUBSCRIBED);
    assert_eq!(nack.response_nonce, "n7");
    let detail = nack_detail(&nack).expect("NACK");
    assert!(detail.contains("not subscribed"), "{detail}");
    assert!(s.accepted(UNSUBSCRIBED).is_none());
    let resumed = s.start();
    assert!(
        resumed
            .iter()
            .all(|r| r.initial_resource_versions.is_empty())
    );
    assert!(resumed.iter().all(|r| r.type_url != UNSUBSCRIBED));
}

#[test]
fn bodies_of_another_type_or_none_are_rejected_before_the_handler() {
    let mut s = session();
    s.start();
    let resources = [
        ("ns/a", 1, Body::Good),
        ("ns/b", 1, Body::WrongType),
        ("ns/c", 1, Body::Missing),
    ];
    let (r, given) = feed(&mut s, response(ADDRESS_TYPE, "n1", &resources, &[]), &[]);
    assert_eq!(given, ["ns/a"]);
    let detail = nack_detail(&r[0]).expect("NACK");
    assert!(detail.contains("ns/b: resource of type"), "{detail}");
    assert!(detail.contains("ns/c: no resource body"), "{detail}");
    assert!(!detail.contains("ns/a"), "{detail}");
    let known: Vec<_> = s.accepted(ADDRESS_TYPE).unwrap().keys().cloned().collect();
    assert_eq!(known, ["ns/a"]);
}

#[test]
fn a_ticket_of_an_earlier_stream_records_but_is_not_answered() {
    let mut s = session();
    s.start();
    let resp = response(ADDRESS_TYPE, "n1", &[("ns/a", 3, Body::Good)], &[]);
    let Received::Apply(u) = s.receive(resp) else {
        panic!("an update");
    };
    s.start();
    assert!(s.complete(u.ticket, Vec::new()).is_none());
    // The handler applied it: the next resume knows it.
    let resumed = s.start();
    assert_eq!(resumed[0].initial_resource_versions["ns/a"], "v3");
}
