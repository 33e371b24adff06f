//! Fuzzing the HBONE CONNECT header parsers (`ConnectHeaders::from_header_map`,
//! `parse_forwarded_for`, `Baggage::parse`, `valid_traceparent`) over arbitrary header values
//! (repeated headers included) and over the headers a valid `ConnectHeaders` encodes to,
//! mutated.
//!
//! Properties: no panic, every call within the time bound (inputs up to 64 KiB), and
//! - a `traceparent` kept is valid; `client` is what `parse_forwarded_for` reads from the
//!   first `Forwarded` value;
//! - re-encoding what was parsed invents nothing (every field is the parsed one or dropped)
//!   and is a fixed point (parse ∘ encode is the identity on its output);
//! - unmutated headers decode to what was encoded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/mutate.rs"]
mod mutate;

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_hbone::headers::{
    BAGGAGE, Baggage, ConnectHeaders, FORWARDED, TRACEPARENT, parse_forwarded_for,
    valid_traceparent,
};
use proptest::prelude::*;

const DICT: &[&[u8]] = &[
    b"for=",
    b"host=",
    b";",
    b",",
    b"\"",
    b"[::1]:80",
    b"10.0.0.1:1",
    b"unknown",
    b"k8s.",
    b".name=",
    b"k8s.cluster.name=",
    b"service.name=",
    b"service.version=",
    b"00-",
    b"-01",
    b"ff",
    b"4bf92f3577b34da6a3ce929d0e0e4736",
    b"00f067aa0ba902b7",
];

fn names() -> impl Strategy<Value = HeaderName> {
    prop::sample::select(vec![FORWARDED, BAGGAGE, TRACEPARENT])
}

/// Headers with arbitrary values (those `http` accepts), names repeated.
fn arbitrary_map() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((names(), mutate::bytes(300)), 0..6).prop_map(build)
}

fn build(values: Vec<(HeaderName, Vec<u8>)>) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (n, v) in values {
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            m.append(n, v);
        }
    }
    m
}

fn opt_token() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[A-Za-z0-9._-]{1,20}")
}

fn valid_headers() -> impl Strategy<Value = ConnectHeaders> {
    (
        any::<IpAddr>(),
        any::<u16>(),
        prop::option::of("[a-z0-9.-]{1,40}"),
        (
            opt_token(),
            opt_token(),
            // `k8s.<kind>.name=<name>`: both or neither.
            prop::option::of(("[a-z0-9_-]{1,20}", "[A-Za-z0-9._-]{1,20}")),
        ),
        (opt_token(), opt_token(), opt_token(), opt_token()),
        prop::option::of("00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]"),
    )
        .prop_map(
            |(ip, port, host, (cluster, namespace, workload), (svc, ver, region, zone), tp)| {
                ConnectHeaders {
                    client: Some(SocketAddr::new(ip, port)),
                    host,
                    baggage: Baggage {
                        cluster,
                        namespace,
                        workload_kind: workload.as_ref().map(|w| w.0.clone()),
                        workload_name: workload.map(|w| w.1),
                        service_name: svc,
                        service_version: ver,
                        region,
                        zone,
                    },
                    traceparent: tp,
                }
            },
        )
}

/// A valid `ConnectHeaders` encoded, then each value mutated (possibly several times).
fn near_map() -> impl Strategy<Value = HeaderMap> {
    let values = valid_headers().prop_map(|h| {
        h.to_header_map()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
            .collect::<Vec<_>>()
    });
    (
        values,
        prop::collection::vec(prop::collection::vec(mutate::mutation(DICT), 0..5), 3),
        prop::collection::vec(0usize..3, 0..3),
    )
        .prop_map(|(values, muts, dups)| {
            let mut out: Vec<(HeaderName, Vec<u8>)> = values
                .into_iter()
                .zip(muts)
                .map(|((n, v), ms)| (n, mutate::apply(v, &ms)))
                .collect();
            // A header sent twice (the first value is what counts).
            for d in dups {
                if let Some(x) = out.get(d % out.len().max(1)).cloned() {
                    out.push(x);
                }
            }
            build(out)
        })
}

fn len(m: &HeaderMap) -> usize {
    m.values().map(|v| v.len()).sum()
}

/// The properties that hold for any header map.
fn check(m: &HeaderMap) -> Result<ConnectHeaders, TestCaseError> {
    let h = mutate::timed("from_header_map", len(m), || {
        ConnectHeaders::from_header_map(m)
    });
    if let Some(t) = &h.traceparent {
        prop_assert!(valid_traceparent(t));
    }
    let fwd = m.get(FORWARDED).and_then(|v| v.to_str().ok());
    prop_assert_eq!(h.client, fwd.and_then(parse_forwarded_for));
    if h.host.is_some() {
        prop_assert!(fwd.is_some());
    }
    // Re-encoding invents nothing and is a fixed point.
    let again = mutate::timed("to/from_header_map", len(m), || {
        ConnectHeaders::from_header_map(&h.to_header_map())
    });
    prop_assert_eq!(again.client, h.client);
    if let Some(host) = &again.host {
        prop_assert_eq!(Some(host), h.host.as_ref());
    }
    for (a, b) in baggage_fields(&again.baggage)
        .into_iter()
        .zip(baggage_fields(&h.baggage))
    {
        if a.is_some() {
            prop_assert_eq!(a, b);
        }
    }
    let third = ConnectHeaders::from_header_map(&again.to_header_map());
    prop_assert_eq!(&third.baggage, &again.baggage);
    prop_assert_eq!(&third.host, &again.host);
    prop_assert_eq!(third.client, again.client);
    Ok(h)
}

fn baggage_fields(b: &Baggage) -> [Option<&String>; 8] {
    [
        b.cluster.as_ref(),
        b.namespace.as_ref(),
        b.workload_kind.as_ref(),
        b.workload_name.as_ref(),
        b.service_name.as_ref(),
        b.service_version.as_ref(),
        b.region.as_ref(),
        b.zone.as_ref(),
    ]
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn arbitrary_headers(m in arbitrary_map()) {
        check(&m)?;
    }

    #[test]
    fn near_valid_headers(m in near_map()) {
        check(&m)?;
    }

    #[test]
    fn valid_headers_round_trip(h in valid_headers()) {
        let got = check(&h.to_header_map())?;
        prop_assert_eq!(got.client, h.client);
        prop_assert_eq!(got.host, h.host);
        prop_assert_eq!(got.baggage, h.baggage);
        // A valid traceparent is kept; otherwise a fresh one is sent.
        match h.traceparent.filter(|t| valid_traceparent(t)) {
            Some(t) => prop_assert_eq!(got.traceparent, Some(t)),
            None => prop_assert!(got.traceparent.is_some()),
        }
    }

    #[test]
    fn single_parsers_on_large_text(b in prop_oneof![
        mutate::bytes(2000),
        mutate::near(vec![
            b"for=\"10.0.0.1:80\";host=a.b,for=x".to_vec(),
            b"k8s.cluster.name=c,k8s.deployment.name=d;p=1,service.name=s".to_vec(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
        ], DICT),
    ]) {
        let s = mutate::text(&b);
        mutate::timed("parse_forwarded_for", s.len(), || parse_forwarded_for(&s));
        let bag = mutate::timed("Baggage::parse", s.len(), || Baggage::parse(&s));
        if let Some(v) = bag.to_header_value() {
            let v = v.to_str().unwrap().to_owned();
            let again = Baggage::parse(&v);
            prop_assert_eq!(Baggage::parse(again.to_header_value().unwrap().to_str().unwrap()), again);
        }
        if mutate::timed("valid_traceparent", s.len(), || valid_traceparent(&s)) {
            prop_assert_eq!(s.len(), 55);
        }
    }
}
