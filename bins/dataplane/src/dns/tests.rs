//! The resolver core: state in, query in, answer out.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;

use super::*;
use crate::config::Visibility;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(ns: &str, host: &str, vips: &[&str], eps: &[&str]) -> DnsService {
    DnsService {
        namespace: ns.into(),
        hosts: vec![host.into()],
        vips: vips.iter().map(|v| ip(v)).collect(),
        visibility: Visibility::Public,
        canonical: false,
        ports: vec![DnsPort {
            name: "http".into(),
            port: 80,
            endpoints: eps
                .iter()
                .map(|e| DnsEndpoint {
                    address: ip(e),
                    port: 8080,
                })
                .collect(),
        }],
    }
}

fn index() -> DnsIndex {
    let mut hidden = svc("ns2", "secret.ns2.svc.cluster.local", &["10.0.0.9"], &[]);
    hidden.visibility = Visibility::Namespace;
    DnsIndex::from_services(
        "cluster.local",
        vec![
            svc(
                "ns1",
                "web.ns1.svc.cluster.local",
                &["10.0.0.1", "fd00::1"],
                &["10.1.0.1"],
            ),
            svc("ns2", "api.ns2.svc.cluster.local", &["10.0.0.2"], &[]),
            svc(
                "ns1",
                "db.ns1.svc.cluster.local",
                &[],
                &["10.1.0.5", "10.1.0.6"],
            ),
            svc("ns1", "ext.example.com", &["240.0.0.1"], &[]),
            svc("ns1", "novip.example.com", &[], &["10.1.0.7"]),
            svc("ns1", "*.wild.example", &["240.0.0.2"], &[]),
            hidden,
        ],
    )
}

fn query(name: &str, ty: RecordType) -> Message {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    m
}

fn ask(ns: &str, name: &str, ty: RecordType) -> Option<Message> {
    match resolve(&index(), ns, &query(name, ty)) {
        Outcome::Answer(m) => Some(*m),
        Outcome::Forward => None,
    }
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_kubernetes_form_from_the_pods_namespace() {
    // Istio ztunnel server.rs `lookup` cases: short name, name.ns, name.ns.svc, FQDN, and
    // the search-expanded forms a stub resolver sends.
    for name in [
        "web.",
        "web.ns1.",
        "web.ns1.svc.",
        "web.ns1.svc.cluster.local.",
        "web.ns1.ns1.svc.cluster.local.",
        "web.ns1.svc.cluster.local.ns1.svc.cluster.local.",
    ] {
        let m = ask("ns1", name, RecordType::A).unwrap_or_else(|| panic!("{name} forwarded"));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.authoritative);
        assert_eq!(addrs(&m), vec![ip("10.0.0.1")], "{name}");
        assert_eq!(m.answers[0].ttl, answer::TTL);
        assert_eq!(m.answers[0].name, Name::from_ascii(name).unwrap());
    }
    // Istio: the short name of a service in another namespace is not the asker's: forwarded.
    assert!(ask("ns2", "web.", RecordType::A).is_none());
    assert!(ask("ns2", "web.ns1.", RecordType::A).is_some());
}

#[test]
fn aaaa_and_nodata() {
    let m = ask("ns1", "web.ns1.svc.cluster.local.", RecordType::AAAA).unwrap();
    assert_eq!(addrs(&m), vec![ip("fd00::1")]);
    // A name that exists without an address of the family: NODATA (NOERROR, no answers),
    // never NXDOMAIN (Istio: "This is not NXDOMAIN, since we found the host").
    let m = ask("ns2", "api.ns2.svc.cluster.local.", RecordType::AAAA).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn service_entry_hosts_and_wildcards() {
    let m = ask("ns9", "ext.example.com.", RecordType::A).unwrap();
    assert_eq!(addrs(&m), vec![ip("240.0.0.1")]);
    let m = ask("ns9", "a.wild.example.", RecordType::A).unwrap();
    assert_eq!(addrs(&m), vec![ip("240.0.0.2")]);
    // Istio ztunnel #909: a ServiceEntry host without addresses is not headless: forwarded.
    assert!(ask("ns1", "novip.example.com.", RecordType::A).is_none());
    assert!(ask("ns1", "www.google.com.", RecordType::A).is_none());
    // Types other than A/AAAA/SRV are forwarded, as Istio.
    assert!(ask("ns1", "web.ns1.svc.cluster.local.", RecordType::TXT).is_none());
}

#[test]
fn headless_answers_endpoints_and_srv() {
    let m = ask("ns1", "db.", RecordType::A).unwrap();
    assert_eq!(addrs(&m), vec![ip("10.1.0.5"), ip("10.1.0.6")]);
    // The endpoint names SRV targets point at resolve too.
    let m = ask("ns1", "10-1-0-6.db.ns1.svc.cluster.local.", RecordType::A).unwrap();
    assert_eq!(addrs(&m), vec![ip("10.1.0.6")]);
    // istio/istio#55979: `_port._tcp.<svc>.<ns>.svc.` (and every other form) answers SRV,
    // one record per endpoint with its target port, as Kubernetes DNS does.
    for name in [
        "_http._tcp.db.ns1.svc.",
        "_http._tcp.db.",
        "_http._tcp.db.ns1.svc.cluster.local.",
        "_http._tcp.db.ns1.svc.ns1.svc.cluster.local.",
    ] {
        let m = ask("ns1", name, RecordType::SRV).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        let mut targets: Vec<(String, u16)> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.target.to_ascii(), s.port)),
                _ => None,
            })
            .collect();
        targets.sort();
        assert_eq!(
            targets,
            vec![
                ("10-1-0-5.db.ns1.svc.cluster.local.".to_owned(), 8080),
                ("10-1-0-6.db.ns1.svc.cluster.local.".to_owned(), 8080)
            ]
        );
        assert_eq!(m.additionals.len(), 2, "glue A records");
    }
    // CoreDNS: an unknown port name or protocol under a service is NXDOMAIN.
    let m = ask("ns1", "_grpc._tcp.db.ns1.svc.", RecordType::SRV).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask("ns1", "_http._udp.db.", RecordType::SRV).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // A service with a VIP: one SRV to the service name.
    let m = ask("ns1", "_http._tcp.web.", RecordType::SRV).unwrap();
    assert_eq!(m.answers.len(), 1);
    // Not a mesh name: forwarded.
    assert!(ask("ns1", "_x._tcp.example.org.", RecordType::SRV).is_none());
}

#[test]
fn namespace_visibility_hides_the_name() {
    assert!(ask("ns2", "secret.", RecordType::A).is_some());
    // From another namespace the service does not exist here: forwarded like any unknown.
    assert!(ask("ns1", "secret.ns2.svc.cluster.local.", RecordType::A).is_none());
    assert!(ask("ns1", "secret.ns2.", RecordType::A).is_none());
}

#[test]
fn edns_and_header() {
    let mut q = query("web.ns1.", RecordType::A);
    q.set_edns(Edns::new());
    let Outcome::Answer(m) = resolve(&index(), "ns1", &q) else {
        panic!("forwarded")
    };
    assert_eq!(m.metadata.id, 7);
    assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), answer::EDNS_PAYLOAD);
    let mut two = query("web.", RecordType::A);
    two.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
    let Outcome::Answer(m) = resolve(&index(), "ns1", &two) else {
        panic!()
    };
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn truncation_keeps_the_question() {
    let eps: Vec<String> = (0..60).map(|i| format!("10.2.0.{i}")).collect();
    let refs: Vec<&str> = eps.iter().map(String::as_str).collect();
    let idx = DnsIndex::from_services(
        "cluster.local",
        vec![svc("ns1", "big.ns1.svc.cluster.local", &[], &refs)],
    );
    let Outcome::Answer(m) = resolve(&idx, "ns1", &query("big.", RecordType::A)) else {
        panic!()
    };
    assert_eq!(m.answers.len(), 60);
    let udp = server::encode(&m, 512).unwrap();
    let t = Message::from_vec(&udp).unwrap();
    assert!(t.metadata.truncation);
    assert!(t.answers.is_empty());
    assert_eq!(t.queries, m.queries);
    let tcp = Message::from_vec(&server::encode(&m, 65_535).unwrap()).unwrap();
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
}

#[test]
fn dns_jumps_come_before_the_tcp_capture() {
    let spec = crate::capture::CaptureSpec {
        dns_port: Some(15053),
        ..crate::capture::CaptureSpec::default()
    };
    let r = crate::capture::rules(&spec, false);
    let pos = |s: &str| r.find(s).unwrap_or(usize::MAX);
    assert!(
        pos("-A OUTPUT -p tcp --dport 53 -j MESH_DNS") < pos("-A OUTPUT -p tcp -j MESH_OUTPUT")
    );
    assert!(
        !crate::capture::rules(&crate::capture::CaptureSpec::default(), false).contains("MESH_DNS")
    );
}

proptest! {
    // Fuzz-style: random bytes, and random well-formed queries, never panic the core.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let idx = index();
        if let Ok(m) = Message::from_vec(&bytes) {
            let _ = resolve(&idx, "ns1", &m);
        }
    }

    #[test]
    fn random_names_never_panic(labels in proptest::collection::vec("[a-z0-9_*-]{1,12}", 1..9),
                                ty in prop_oneof![Just(RecordType::A), Just(RecordType::AAAA),
                                                  Just(RecordType::SRV), Just(RecordType::TXT)]) {
        let name = format!("{}.", labels.join("."));
        if let Ok(n) = Name::from_ascii(&name) {
            let mut m = Message::new(1, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(n, ty));
            let _ = resolve(&index(), "ns1", &m);
        }
    }

    // The listener's whole query handler (decode, resolve, encode) on valid queries with
    // random bytes overwritten: an answer, a query to forward, or a drop; never a panic.
    #[test]
    fn mutated_queries_never_panic_the_handler(
        flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..8),
        udp in any::<bool>(),
    ) {
        let proxy = DnsProxy::new(DnsSettings {
            capture: true,
            node_addr: None,
            upstreams: Vec::new(),
            resolv_conf: None,
            forward_timeout: std::time::Duration::from_secs(1),
            cluster_domain: "cluster.local".into(),
            limits: DnsLimits::default(),
        })
        .unwrap();
        proxy.publish(index(), Default::default());
        let l = DnsListener::new(proxy, Some("ns1".into()), std::sync::Arc::new(HostSockets::default()));
        let mut q = query("_http._tcp.db.ns1.svc.", RecordType::SRV);
        q.set_edns(Edns::new());
        let mut bytes = q.to_vec().unwrap();
        for (at, b) in flips {
            if let Some(x) = bytes.get_mut(at) {
                *x = b;
            }
        }
        match l.decide(&bytes, ip("10.0.0.1"), udp) {
            server::Step::Reply(b) => prop_assert!(!udp || b.len() <= 1232),
            server::Step::Forward(..) | server::Step::Drop => {}
        }
    }
}
