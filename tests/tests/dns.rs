//! The DNS proxy (15053) in-process: a listener of the dataplane's DNS proxy on this test's
//! loopback block (127.225.x.x) in front of a fake upstream resolver written here with
//! hickory-proto. Answers for mesh names in every Kubernetes form, SRV for a headless service,
//! forwarding (and its timeout), NXDOMAIN, visibility, UDP and TCP, truncation then TCP retry;
//! and what an attacker tries: a query flood from one client, forged upstream answers,
//! garbage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use mesh_dataplane::config::Visibility;
use mesh_dataplane::dns::{
    DnsEndpoint, DnsIndex, DnsLimits, DnsListener, DnsPort, DnsProxy, DnsService, DnsSettings,
    HostSockets,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-0, namespace: ns1, labels: {app: db}}
spec: {address: 127.225.1.5, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-1, namespace: ns1, labels: {app: db}}
spec: {address: 127.225.1.6, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: ns1}
spec:
  hosts: [web.ns1.svc.cluster.local]
  addresses: [127.225.2.1]
  ports: [{number: 80, name: http}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: ns1}
spec:
  hosts: [db.ns1.svc.cluster.local]
  ports: [{number: 5432, name: tcp-pg, targetPort: 15432}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: ns2}
spec:
  hosts: [api.example.com]
  addresses: [127.225.2.2]
  ports: [{number: 443, name: tls, protocol: TLS}]
"#;

/// The fake upstream's behaviour, by query name.
async fn upstream_answer(q: &Message) -> Option<Message> {
    let name = q.queries[0].name().to_ascii();
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.queries = q.queries.clone();
    match name.as_str() {
        "silent.example." => return None,
        "upstream.example." => {
            let a = RData::A(A("192.0.2.1".parse().unwrap()));
            m.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, a));
        }
        _ => m.metadata.response_code = ResponseCode::NXDomain,
    }
    Some(m)
}

/// A fake resolver on UDP and TCP at one address; counts the queries it received.
struct Upstream {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
}

async fn upstream(ip: &str) -> Upstream {
    let udp = UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            r.fetch_add(1, Ordering::SeqCst);
            let q = Message::from_vec(&buf[..n]).unwrap();
            // A forger first: another socket answers with the right ID, and the right socket
            // answers with a wrong ID; then the real answer.
            if q.queries[0].name().to_ascii() == "spoof.example." {
                let forged = |id, ip: &str| {
                    let mut m = Message::response(id, OpCode::Query);
                    m.queries = q.queries.clone();
                    let a = RData::A(A(ip.parse().unwrap()));
                    m.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, a));
                    m.to_vec().unwrap()
                };
                let other = UdpSocket::bind("127.225.0.54:0").await.unwrap();
                other
                    .send_to(&forged(q.metadata.id, "6.6.6.6"), peer)
                    .await
                    .unwrap();
                let wrong = q.metadata.id.wrapping_add(1);
                udp.send_to(&forged(wrong, "6.6.6.7"), peer).await.unwrap();
                udp.send_to(&forged(q.metadata.id, "192.0.2.9"), peer)
                    .await
                    .unwrap();
                continue;
            }
            if let Some(a) = upstream_answer(&q).await {
                udp.send_to(&a.to_vec().unwrap(), peer).await.unwrap();
            }
        }
    });
    let r = received.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let r = r.clone();
            tokio::spawn(async move {
                let len = s.read_u16().await.unwrap();
                let mut buf = vec![0u8; usize::from(len)];
                s.read_exact(&mut buf).await.unwrap();
                r.fetch_add(1, Ordering::SeqCst);
                let q = Message::from_vec(&buf).unwrap();
                if let Some(a) = upstream_answer(&q).await {
                    let b = a.to_vec().unwrap();
                    s.write_u16(b.len() as u16).await.unwrap();
                    s.write_all(&b).await.unwrap();
                }
            });
        }
    });
    Upstream { addr, received }
}

/// A DNS listener for the pod in `ns` (or by address with `None`) on `ip`, answering from
/// `index`, forwarding to `up`.
struct Dns {
    addr: SocketAddr,
    listener: Arc<DnsListener>,
    proxy: Arc<DnsProxy>,
    _stop: tokio_util::sync::DropGuard,
}

async fn dns(
    ip: &str,
    ns: Option<&str>,
    index: DnsIndex,
    up: SocketAddr,
    limits: DnsLimits,
) -> Dns {
    let proxy = DnsProxy::new(DnsSettings {
        capture: true,
        node_addr: None,
        upstreams: vec![up],
        resolv_conf: None,
        forward_timeout: Duration::from_millis(800),
        cluster_domain: "cluster.local".into(),
        limits,
    })
    .unwrap();
    let locals: HashMap<IpAddr, String> =
        HashMap::from([("127.225.1.9".parse().unwrap(), "ns1".to_owned())]);
    proxy.publish(index, locals);
    let listener = DnsListener::new(
        proxy.clone(),
        ns.map(str::to_owned),
        Arc::new(HostSockets::default()),
    );
    let udp = UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(listener.clone().serve_udp(udp, stop.clone()));
    tokio::spawn(listener.clone().serve_tcp(tcp, stop.clone()));
    Dns {
        addr,
        listener,
        proxy,
        _stop: stop.drop_guard(),
    }
}

fn mesh_index() -> DnsIndex {
    let state = mesh_dataplane::config::parse(Path::new("mesh.yaml"), MESH).unwrap();
    DnsIndex::build(&state, "cluster.local")
}

fn query(name: &str, ty: RecordType) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    m
}

async fn udp_ask_from(from: &str, server: SocketAddr, q: &Message) -> Message {
    let s = UdpSocket::bind((from.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    s.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .expect("an answer over UDP")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    m
}

async fn udp_ask(server: SocketAddr, q: &Message) -> Message {
    udp_ask_from("127.225.1.9", server, q).await
}

async fn tcp_ask(server: SocketAddr, q: &Message) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let b = q.to_vec().unwrap();
    s.write_u16(b.len() as u16).await.unwrap();
    s.write_all(&b).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
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

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_records_in_every_kubernetes_form_over_udp_and_tcp() {
    let up = upstream("127.225.0.53").await;
    let d = dns(
        "127.225.0.1",
        Some("ns1"),
        mesh_index(),
        up.addr,
        DnsLimits::default(),
    )
    .await;
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
    let up = upstream("127.225.0.53").await;
    let d = dns(
        "127.225.0.2",
        Some("ns1"),
        mesh_index(),
        up.addr,
        DnsLimits::default(),
    )
    .await;
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
    let up = upstream("127.225.0.53").await;
    let d = dns(
        "127.225.0.3",
        Some("ns1"),
        mesh_index(),
        up.addr,
        DnsLimits::default(),
    )
    .await;
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
    let up = upstream("127.225.0.53").await;
    let d = dns(
        "127.225.0.4",
        Some("ns1"),
        mesh_index(),
        up.addr,
        DnsLimits::default(),
    )
    .await;
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
async fn attack_query_flood_stays_within_the_forward_cap() {
    let up = upstream("127.225.0.53").await;
    let limits = DnsLimits {
        max_forwarded: 8,
        ..DnsLimits::default()
    };
    let d = dns("127.225.0.8", Some("ns1"), mesh_index(), up.addr, limits).await;
    // One client floods names the upstream never answers: each would hold a task, a socket
    // and a buffer for the whole forward timeout.
    let s = Arc::new(UdpSocket::bind("127.225.1.9:0").await.unwrap());
    let reader = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut servfail = 0;
            let mut buf = vec![0u8; 4096];
            // Every answer comes before the forward timeout (800 ms): none arrives later.
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(400), s.recv(&mut buf)).await
            {
                let m = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
                servfail += 1;
            }
            servfail
        })
    };
    // In bursts of 50, so the kernel's socket buffers drop nothing.
    for _ in 0..8 {
        for _ in 0..50 {
            let q = query("silent.example.", RecordType::A);
            s.send_to(&q.to_vec().unwrap(), d.addr).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // All but the cap are answered SERVFAIL at once.
    assert_eq!(reader.await.unwrap(), 392);
    assert_eq!(
        up.received.load(Ordering::SeqCst),
        8,
        "at most the cap upstream"
    );
    let over = d.listener.stats().over_forward_cap.load(Ordering::Relaxed);
    assert_eq!(over, 392);
    // The mesh's own names are still answered during the flood.
    let m = udp_ask(d.addr, &query("web.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.1")]);
}

#[tokio::test]
async fn attack_forged_upstream_answers_are_dropped() {
    let up = upstream("127.225.0.53").await;
    let d = dns(
        "127.225.0.9",
        Some("ns1"),
        mesh_index(),
        up.addr,
        DnsLimits::default(),
    )
    .await;
    // RFC 5452: an answer from another address (dropped by the connected socket) or with
    // another ID (dropped by the check) never reaches the client; the real one does.
    let m = udp_ask(d.addr, &query("spoof.example.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("192.0.2.9")]);
    assert!(d.proxy.forwarder().dropped_answers() >= 1);
}

#[tokio::test]
async fn attack_garbage_and_responses_get_no_answer() {
    let up = upstream("127.225.0.53").await;
    let d = dns(
        "127.225.0.10",
        Some("ns1"),
        mesh_index(),
        up.addr,
        DnsLimits::default(),
    )
    .await;
    let s = UdpSocket::bind("127.225.1.9:0").await.unwrap();
    let mut resp = query("web.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    for bytes in [
        vec![0xff; 3],
        vec![0u8; 5000],
        (0..200u8).collect(),
        resp.to_vec().unwrap(),
    ] {
        s.send_to(&bytes, d.addr).await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let r = tokio::time::timeout(Duration::from_millis(300), s.recv(&mut buf)).await;
    assert!(r.is_err(), "no reflection of garbage");
    assert!(d.listener.stats().dropped.load(Ordering::Relaxed) >= 3);
    // Still serving.
    let m = udp_ask(d.addr, &query("web.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.1")]);
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

#[tokio::test]
async fn attack_tcp_idle_and_connection_cap() {
    let up = upstream("127.225.0.53").await;
    let limits = DnsLimits {
        max_tcp_connections: 4,
        tcp_idle_timeout: Duration::from_millis(300),
        ..DnsLimits::default()
    };
    let d = dns("127.225.0.12", Some("ns1"), mesh_index(), up.addr, limits).await;
    // Slowloris: connections that never send a query hold a slot until the idle timeout.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(d.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fifth = TcpStream::connect(d.addr).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(1), fifth.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "over the cap: closed at once"
    );
    assert!(d.listener.stats().tcp_refused.load(Ordering::Relaxed) >= 1);
    // After the idle timeout the slots are free again.
    for mut c in idle {
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "idle client closed");
    }
    let m = tcp_ask(d.addr, &query("web.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("127.225.2.1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_serves_dns_on_its_node_address() {
    // The real wiring: `--dns-port` opens the node listener of a ztunnel core, which answers
    // from the applied state and relays the rest to `--dns-upstream`.
    let up = upstream("127.225.0.53").await;
    let net = mesh_tests::Net { b: 225 };
    let mut mesh = mesh_tests::inproc::InprocMesh::new(&net.config());
    let upstream_flag = up.addr.to_string();
    mesh.ztunnel(
        "a",
        &[
            "--socks5-port",
            "0",
            "--metrics-port",
            "0",
            "--readiness-port",
            "0",
            "--admin-port",
            "0",
            "--dns-port",
            "15053",
            "--dns-upstream",
            &upstream_flag,
        ],
    )
    .await;
    let kinds: Vec<_> = mesh.proxy("a").listening().iter().map(|l| l.kind).collect();
    assert!(
        kinds.contains(&mesh_dataplane::proxy::ListenerKind::Dns),
        "{kinds:?}"
    );
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
