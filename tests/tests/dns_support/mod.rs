//! Shared by the `dns*.rs` tests: a DNS listener of the dataplane's DNS proxy on
//! 127.225.x.x in front of a fake upstream resolver written with hickory-proto, and query
//! helpers.

#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub use std::collections::HashMap;
pub use std::net::{IpAddr, SocketAddr};
pub use std::path::Path;
pub use std::sync::Arc;
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::time::Duration;

pub use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
pub use hickory_proto::rr::rdata::A;
pub use hickory_proto::rr::{Name, RData, Record, RecordType};
pub use mesh_dataplane::config::Visibility;
pub use mesh_dataplane::dns::{
    DnsEndpoint, DnsIndex, DnsLimits, DnsListener, DnsPort, DnsProxy, DnsService, DnsSettings,
    HostSockets,
};
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tokio::net::{TcpListener, TcpStream, UdpSocket};
pub use tokio_util::sync::CancellationToken;

pub const MESH: &str = r#"
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
pub async fn upstream_answer(q: &Message) -> Option<Message> {
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
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<AtomicUsize>,
}

pub async fn upstream(ip: &str) -> Upstream {
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
pub struct Dns {
    pub addr: SocketAddr,
    pub listener: Arc<DnsListener>,
    pub proxy: Arc<DnsProxy>,
    _stop: tokio_util::sync::DropGuard,
}

pub async fn dns(
    ip: &str,
    ns: Option<&str>,
    index: DnsIndex,
    up: SocketAddr,
    limits: DnsLimits,
) -> Dns {
    let proxy = proxy(up, limits);
    let locals: HashMap<IpAddr, String> =
        HashMap::from([("127.225.1.9".parse().unwrap(), "ns1".to_owned())]);
    proxy.publish(index, locals);
    let stop = CancellationToken::new();
    let (addr, listener) = serve(&proxy, ns, ip, &stop).await;
    Dns {
        addr,
        listener,
        proxy,
        _stop: stop.drop_guard(),
    }
}

/// The fake upstream on 127.225.0.53 and a listener for a pod in `ns1` on `ip`, answering
/// from [`mesh_index`] with the default limits.
pub async fn ns1_dns(ip: &str) -> (Upstream, Dns) {
    let up = upstream("127.225.0.53").await;
    let d = dns(ip, Some("ns1"), mesh_index(), up.addr, DnsLimits::default()).await;
    (up, d)
}

/// A capturing DNS proxy forwarding to `up` within `limits` (800 ms forward timeout), with
/// nothing published yet.
pub fn proxy(up: SocketAddr, limits: DnsLimits) -> Arc<DnsProxy> {
    DnsProxy::new(DnsSettings {
        capture: true,
        node_addr: None,
        upstreams: vec![up],
        resolv_conf: None,
        forward_timeout: Duration::from_millis(800),
        cluster_domain: "cluster.local".into(),
        limits,
    })
    .unwrap()
}

/// A listener of `proxy` for the pod in `ns` (or by address with `None`), serving UDP and TCP
/// on `ip` (one port for both) until `stop`.
pub async fn serve(
    proxy: &Arc<DnsProxy>,
    ns: Option<&str>,
    ip: &str,
    stop: &CancellationToken,
) -> (SocketAddr, Arc<DnsListener>) {
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
    tokio::spawn(listener.clone().serve_udp(udp, stop.clone()));
    tokio::spawn(listener.clone().serve_tcp(tcp, stop.clone()));
    (addr, listener)
}

pub fn mesh_index() -> DnsIndex {
    let state = mesh_dataplane::config::parse(Path::new("mesh.yaml"), MESH).unwrap();
    DnsIndex::build(&state, "cluster.local")
}

pub fn query(name: &str, ty: RecordType) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    m
}

pub async fn udp_ask_from(from: &str, server: SocketAddr, q: &Message) -> Message {
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

pub async fn udp_ask(server: SocketAddr, q: &Message) -> Message {
    udp_ask_from("127.225.1.9", server, q).await
}

pub async fn tcp_ask(server: SocketAddr, q: &Message) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let b = q.to_vec().unwrap();
    s.write_u16(b.len() as u16).await.unwrap();
    s.write_all(&b).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

pub fn addrs(m: &Message) -> Vec<IpAddr> {
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

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Starts the ztunnel core of node `a` in `mesh` with its other ports off and `dns_flags`,
/// and asserts that it opened a DNS listener.
pub async fn ztunnel_with_dns(mesh: &mut mesh_tests::inproc::InprocMesh, dns_flags: &[&str]) {
    let mut args = vec![
        "--socks5-port",
        "0",
        "--metrics-port",
        "0",
        "--readiness-port",
        "0",
        "--admin-port",
        "0",
    ];
    args.extend_from_slice(dns_flags);
    mesh.ztunnel("a", &args).await;
    let kinds: Vec<_> = mesh.proxy("a").listening().iter().map(|l| l.kind).collect();
    assert!(
        kinds.contains(&mesh_dataplane::proxy::ListenerKind::Dns),
        "{kinds:?}"
    );
}
