//! The DNS proxy (15053) in-process: a listener of the dataplane's DNS proxy on this test's
//! loopback block (127.225.x.x) in front of a fake upstream resolver (`dns_support`). Answers
//! for mesh names in every Kubernetes form, SRV for a headless service, forwarding (and its
//! timeout), NXDOMAIN, visibility, UDP and TCP, truncation then TCP retry, a ztunnel core's
//! node listener and its metrics. Attacks are in `dns_attacks.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dns_support/mod.rs"]
mod dns_support;

use dns_support::*;

#[tokio::test]
async fn a_records_in_every_kubernetes_form_over_udp_and_tcp() {
    let (up, d) = ns1_dns("127.225.0.1").await;
    // Istio ztunnel src/dns/server.rs `lookup`: short name, name.ns, name.ns.svc, FQDN and
    // the search-expanded forms resolve relative to the asking pod's namespace.
    for name in [
        "web.",
        "web.ns1.",
        "web.ns1.svc.",
        "web.ns1.svc.cluster.local.",
        "web.ns1.ns1.svc.cluster.local.",
    ] {
        for tcp in [false, true] {
            let q = query(name, RecordType::A);
            let m = match tcp {
                false => udp_ask(d.addr, &q).await,
                true => tcp_ask(d.addr, &q).await,
            };
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(m.metadata.authoritative, "{name}");
            assert_eq!(addrs(&m), vec![ip("127.225.2.1")], "{name} tcp={tcp}");
            assert_eq!(m.answers[0].ttl, 30, "Istio's TTL");
        }
    }
    // A ServiceEntry host with its VIP; NODATA for the other family.
    let m = udp_ask(d.addr, &query("api.example.com.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.2")]);
    let m = udp_ask(d.addr, &query("api.example.com.", RecordType::AAAA)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(up.received.load(Ordering::SeqCst), 0, "nothing forwarded");
}

#[tokio::test]
async fn srv_for_a_headless_service() {
    let (_up, d) = ns1_dns("127.225.0.2").await;
    // istio/istio#55979: `_headless._tcp.<svc>.<ns>.svc.` failed under ztunnel's DNS proxy.
    // Kubernetes DNS (dns-pod-service "SRV records"): one SRV per endpoint, with the
    // endpoint's port and name.
    for name in [
        "_tcp-pg._tcp.db.ns1.svc.",
        "_tcp-pg._tcp.db.ns1.svc.cluster.local.",
    ] {
        let m = udp_ask(d.addr, &query(name, RecordType::SRV)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        let mut srv: Vec<(String, u16)> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.target.to_ascii(), s.port)),
                _ => None,
            })
            .collect();
        srv.sort();
        assert_eq!(
            srv,
            vec![
                ("127-225-1-5.db.ns1.svc.cluster.local.".into(), 15432),
                ("127-225-1-6.db.ns1.svc.cluster.local.".into(), 15432)
            ]
        );
        // The targets resolve, in the answer's additional section and on their own.
        assert_eq!(
            m.additionals
                .iter()
                .filter(|r| r.record_type() == RecordType::A)
                .count(),
            2
        );
    }
    let m = udp_ask(
        d.addr,
        &query("127-225-1-6.db.ns1.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(addrs(&m), vec![ip("127.225.1.6")]);
    // The headless service name itself: its endpoints.
    let m = udp_ask(d.addr, &query("db.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.1.5"), ip("127.225.1.6")]);
    // A port the service does not have: NXDOMAIN, as CoreDNS.
    let m = udp_ask(d.addr, &query("_http._tcp.db.ns1.svc.", RecordType::SRV)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn other_names_are_forwarded_and_nxdomain_relayed() {
    let (up, d) = ns1_dns("127.225.0.3").await;
    for tcp in [false, true] {
        let q = query("upstream.example.", RecordType::A);
        let m = match tcp {
            false => udp_ask(d.addr, &q).await,
            true => tcp_ask(d.addr, &q).await,
        };
        assert_eq!(addrs(&m), vec![ip("192.0.2.1")], "tcp={tcp}");
        assert!(!m.metadata.authoritative || m.answers[0].ttl == 60);
        let m = udp_ask(d.addr, &query("nothing.example.", RecordType::A)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(up.received.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_silent_upstream_times_out_with_servfail() {
    let (_up, d) = ns1_dns("127.225.0.4").await;
    let start = tokio::time::Instant::now();
    let m = udp_ask(d.addr, &query("silent.example.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn namespace_visible_service_is_hidden_from_other_namespaces() {
    let up = upstream("127.225.0.53").await;
    let secret = DnsService {
        namespace: "ns2".into(),
        hosts: vec!["secret.ns2.svc.cluster.local".into()],
        vips: vec![ip("127.225.2.9")],
        visibility: Visibility::Namespace,
        canonical: false,
        ports: vec![DnsPort {
            name: "http".into(),
            port: 80,
            endpoints: vec![DnsEndpoint {
                address: ip("127.225.1.20"),
                port: 80,
            }],
        }],
    };
    let index = || DnsIndex::from_services("cluster.local", vec![secret.clone()]);
    let same = dns(
        "127.225.0.5",
        Some("ns2"),
        index(),
        up.addr,
        DnsLimits::default(),
    )
    .await;
    let other = dns(
        "127.225.0.6",
        Some("ns1"),
        index(),
        up.addr,
        DnsLimits::default(),
    )
    .await;
    let q = query("secret.ns2.svc.cluster.local.", RecordType::A);
    assert_eq!(
        addrs(&udp_ask(same.addr, &q).await),
        vec![ip("127.225.2.9")]
    );
    // From ns1 the mesh does not know the name: forwarded, and upstream says NXDOMAIN.
    let m = udp_ask(other.addr, &q).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(addrs(&m).is_empty());
    assert_eq!(up.received.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let up = upstream("127.225.0.53").await;
    let eps: Vec<DnsEndpoint> = (1..=80)
        .map(|i| DnsEndpoint {
            address: ip(&format!("127.225.3.{i}")),
            port: 80,
        })
        .collect();
    let big = DnsService {
        namespace: "ns1".into(),
        hosts: vec!["big.ns1.svc.cluster.local".into()],
        vips: vec![],
        visibility: Visibility::Public,
        canonical: false,
        ports: vec![DnsPort {
            name: "http".into(),
            port: 80,
            endpoints: eps,
        }],
    };
    let index = DnsIndex::from_services("cluster.local", vec![big]);
    let d = dns(
        "127.225.0.7",
        Some("ns1"),
        index,
        up.addr,
        DnsLimits::default(),
    )
    .await;
    // RFC 1035 4.2.1 / RFC 7766: over UDP without EDNS, 512 bytes at most: TC, no answers…
    let q = query("big.", RecordType::A);
    let m = udp_ask(d.addr, &q).await;
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    // …with EDNS, at most our 1232 bytes: still too small for 80 records.
    let mut e = query("big.", RecordType::A);
    e.set_edns(Edns::new());
    assert!(udp_ask(d.addr, &e).await.metadata.truncation);
    // …and the client's retry over TCP gets everything.
    let m = tcp_ask(d.addr, &q).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 80);
}

#[tokio::test]
async fn node_listener_answers_local_workloads_only() {
    let up = upstream("127.225.0.53").await;
    let d = dns(
        "127.225.0.11",
        None,
        mesh_index(),
        up.addr,
        DnsLimits::default(),
    )
    .await;
    // A local workload (127.225.1.9 in ns1) by its address…
    let m = udp_ask_from("127.225.1.9", d.addr, &query("web.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.1")]);
    // …anyone else gets SERVFAIL, as Istio's ztunnel answers an unknown source: not an open
    // resolver.
    let m = udp_ask_from("127.225.1.99", d.addr, &query("web.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(up.received.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_serves_dns_on_its_node_address() {
    // The real wiring: `--dns-port` opens the node listener of a ztunnel core, which answers
    // from the applied state and relays the rest to `--dns-upstream`.
    let up = upstream("127.225.0.53").await;
    let net = mesh_tests::Net { b: 225 };
    let mut mesh = mesh_tests::inproc::InprocMesh::new(&net.config());
    let upstream_flag = up.addr.to_string();
    ztunnel_with_dns(
        &mut mesh,
        &["--dns-port", "15053", "--dns-upstream", &upstream_flag],
    )
    .await;
    let server = SocketAddr::new(net.node_a(), 15053);
    let client = net.client().to_string();
    // The mesh's service host, for the node's workload `ns/client`.
    let m = udp_ask_from(&client, server, &query("server.ns.svc.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![net.vip().ip()]);
    // Anything else goes upstream.
    let m = udp_ask_from(&client, server, &query("upstream.example.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.1")]);
    assert_eq!(up.received.load(Ordering::SeqCst), 1);
    // Not a workload of this node: SERVFAIL, nothing relayed.
    let m = udp_ask_from(
        "127.225.1.99",
        server,
        &query("upstream.example.", RecordType::A),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(up.received.load(Ordering::SeqCst), 1);
    // Istio's ztunnel DNS metrics, with the asking workload's canonical labels.
    let text = mesh.proxy("a").metrics_text();
    let labels = [
        ("request_query_type", "a"),
        ("request_protocol", "udp"),
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "latest"),
    ];
    assert_eq!(
        mesh_tests::metric(&text, "istio_dns_requests_total", &labels),
        2.0
    );
    assert_eq!(
        mesh_tests::metric(&text, "istio_dns_upstream_requests_total", &labels),
        1.0
    );
    mesh.procs[0].stop().await;
}
