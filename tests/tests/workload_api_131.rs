//! Istio 1.31's workload API on the path (in-process ztunnels, states built by the xDS store
//! from workload-API resources, as istiod would send them): a `NAMESPACE`-visible service is
//! reached from its own namespace and is no service for another one, a workload on another
//! network is never dialled (neither as a service endpoint nor directly), and CIDR service
//! addresses route by the longest prefix. Block 127.223.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_dataplane::config::MeshState;
use mesh_dataplane::config::xds::{XdsSettings, XdsStore};
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use mesh_xds::pb::workload as wl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NET: Net = Net { b: 223 };
const INTRUDER: &str = "127.223.1.11";
const FAR: &str = "127.223.1.30";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn na(network: &str, ip: IpAddr, length: Option<u32>) -> wl::NetworkAddress {
    let address = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    wl::NetworkAddress {
        network: network.into(),
        address,
        length,
    }
}

/// A workload as istiod describes a pod: HBONE, on `node`, on `network`.
fn pod(ns: &str, name: &str, at: IpAddr, node: &str, network: &str) -> wl::Workload {
    wl::Workload {
        uid: format!("Kubernetes//Pod/{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        addresses: vec![na("", at, None).address],
        network: network.into(),
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        service_account: name.into(),
        node: node.into(),
        ..Default::default()
    }
}

fn serving(mut w: wl::Workload, ports: &[(&str, u32, u32)]) -> wl::Workload {
    let mut map: HashMap<String, wl::PortList> = HashMap::new();
    for (svc, port, target) in ports {
        map.entry((*svc).to_owned())
            .or_default()
            .ports
            .push(wl::Port {
                service_port: *port,
                target_port: *target,
                app_protocol: 0,
            });
    }
    w.services = map;
    w
}

fn service(name: &str, addresses: Vec<wl::NetworkAddress>, port: u32) -> wl::Service {
    wl::Service {
        name: name.into(),
        namespace: "ns".into(),
        hostname: format!("{name}.ns.svc.cluster.local"),
        addresses,
        ports: vec![wl::Port {
            service_port: port,
            target_port: 0,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

/// What istiod sends every ztunnel: pods on network n1 (client and server in `ns`, an
/// intruder in `other`), one pod on network n2 with the same service, the NAMESPACE-visible
/// service `private` (VIP 127.223.2.1:9000), and two CIDR services on port 7000: `wide`
/// (127.223.0.0/16) and `narrow` (127.223.9.0/24).
fn resources() -> Vec<(String, wl::Address)> {
    let private = "ns/private.ns.svc.cluster.local";
    let wide = "ns/wide.ns.svc.cluster.local";
    let narrow = "ns/narrow.ns.svc.cluster.local";
    let workloads = vec![
        pod("ns", "client", NET.client(), "a", "n1"),
        pod("other", "intruder", ip(INTRUDER), "a", "n1"),
        serving(
            pod("ns", "server", NET.server(), "b", "n1"),
            &[
                (private, 9000, 9000),
                (wide, 7000, 7001),
                (narrow, 7000, 7002),
            ],
        ),
        // Istio's multi-network pod, behind an east-west gateway we do not have (no
        // network_gateway: it would be rejected by name).
        serving(
            pod("ns", "far", ip(FAR), "b", "n2"),
            &[
                (private, 9000, 9000),
                (wide, 7000, 9000),
                (narrow, 7000, 9000),
            ],
        ),
    ];
    let mut private_svc = service("private", vec![na("n1", NET.vip().ip(), None)], 9000);
    private_svc.visibility = wl::service::Visibility::Namespace as i32;
    let services = vec![
        private_svc,
        service("wide", vec![na("n1", ip("127.223.0.0"), Some(16))], 7000),
        service("narrow", vec![na("n1", ip("127.223.9.0"), Some(24))], 7000),
    ];
    let mut out: Vec<(String, wl::Address)> = workloads
        .into_iter()
        .map(|w| {
            (
                w.uid.clone(),
                wl::Address {
                    r#type: Some(wl::address::Type::Workload(w)),
                },
            )
        })
        .collect();
    out.extend(services.into_iter().map(|s| {
        (
            format!("{}/{}", s.namespace, s.hostname),
            wl::Address {
                r#type: Some(wl::address::Type::Service(s)),
            },
        )
    }));
    out
}

/// The state the ztunnel of `node` (at `addr`, on network n1) builds from [`resources`].
fn state(node: &str, addr: IpAddr, listeners: bool) -> MeshState {
    let mut store = XdsStore::new(XdsSettings {
        node: node.into(),
        node_address: addr,
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        service_listeners: listeners,
    })
    .on_network("n1");
    let rejected = store.apply_addresses(resources(), vec![]);
    assert!(rejected.is_empty(), "{rejected:?}");
    store.build()
}

/// A server that writes `tag` to each connection and closes; counts connections.
async fn tag_server(addr: SocketAddr, tag: &'static str) -> Arc<AtomicUsize> {
    let l = TcpListener::bind(addr).await.unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = s.write_all(tag.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    n
}

/// SOCKS5 CONNECT to an IPv4 address through node a, from `src`: the stream, or the reply
/// code.
async fn socks_to(src: IpAddr, dst: SocketAddr) -> Result<TcpStream, u8> {
    let mut s = connect_from(src, NET.socks()).await.map_err(|_| 0xff)?;
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut g = [0u8; 2];
    s.read_exact(&mut g).await.unwrap();
    let IpAddr::V4(v4) = dst.ip() else {
        panic!("IPv4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.octets());
    req.extend_from_slice(&dst.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).await.map_err(|_| 0xfe)?;
    if rep[1] == 0 { Ok(s) } else { Err(rep[1]) }
}

/// Everything the server side sends until it closes (bounded by a timeout).
async fn read_to_end(mut s: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_networks_and_cidrs_on_the_path() {
    let mut mesh = InprocMesh::new(&NET.config());
    let server = echo_server(NET.app()).await;
    let far = echo_server(SocketAddr::new(ip(FAR), 9000)).await;
    let wide = tag_server(SocketAddr::new(NET.server(), 7001), "wide").await;
    let narrow = tag_server(SocketAddr::new(NET.server(), 7002), "narrow").await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;
    mesh.proxy("b")
        .apply(state("b", NET.node_b(), false))
        .await
        .unwrap();
    mesh.proxy("a")
        .apply(state("a", NET.node_a(), true))
        .await
        .unwrap();

    // Its own namespace reaches the NAMESPACE-visible service (on the VIP listener node a
    // binds), and only the endpoint on our network: the n2 pod is never picked.
    for _ in 0..10 {
        let mut s = connect_from(NET.client(), NET.vip()).await.unwrap();
        assert_eq!(exchange(&mut s, b"hello").await, b"hello");
    }
    assert_eq!(server.load(Ordering::SeqCst), 10);
    assert_eq!(far.load(Ordering::SeqCst), 0, "another network's endpoint");

    // Attacker: a workload in another namespace connects to the same VIP. For it the VIP is
    // no service (Istio's `visible_to`): passed through, which here is the proxy's own
    // listener, refused; the service's workload never sees a connection.
    let mut s = connect_from(ip(INTRUDER), NET.vip()).await.unwrap();
    let _ = s.write_all(b"let me in").await;
    assert!(read_to_end(s).await.is_empty());
    // Through SOCKS5 too (no VIP listener in between): not the service either.
    match socks_to(ip(INTRUDER), NET.vip()).await {
        Ok(s) => assert!(read_to_end(s).await.is_empty()),
        Err(code) => assert_ne!(code, 0),
    }
    assert_eq!(
        server.load(Ordering::SeqCst),
        10,
        "the intruder got through"
    );
    mesh.expect_log("a", "this proxy's own listener");

    // Attacker: the n2 pod's address, asked for directly, is refused and never dialled (on
    // our network it may be anyone).
    assert_eq!(
        socks_to(NET.client(), SocketAddr::new(ip(FAR), 9000))
            .await
            .err(),
        Some(4)
    );
    mesh.expect_log("a", "workload on another network");
    assert_eq!(far.load(Ordering::SeqCst), 0);
    let closed = metric(
        &mesh.proxy("a").metrics_text(),
        "istio_tcp_connections_closed_total",
        &[("reporter", "source"), ("response_flags", "NR")],
    );
    assert_eq!(closed, 1.0, "counted once, flag NR");

    // The admin config dump shows each service's visibility.
    let admin = mesh.proxy("a").endpoints().admin.unwrap();
    let dump = http_get(admin, "/config_dump").await;
    assert!(dump.contains(r#""visibility": "NAMESPACE""#), "{dump}");

    // By name (SOCKS5): the NAMESPACE service's host name resolves for its own namespace only.
    let host = "private.ns.svc.cluster.local";
    let s = socks5_connect(NET.client(), NET.socks(), host, 9000)
        .await
        .unwrap();
    drop(s);
    assert!(
        socks5_connect(ip(INTRUDER), NET.socks(), host, 9000)
            .await
            .is_err()
    );

    // CIDR services: the /24 wins inside it, the /16 elsewhere in it; outside both, nothing.
    let via = |dst: &'static str| async move {
        let s = socks_to(NET.client(), dst.parse().unwrap()).await.unwrap();
        String::from_utf8(read_to_end(s).await).unwrap()
    };
    assert_eq!(via("127.223.9.77:7000").await, "narrow");
    assert_eq!(via("127.223.50.5:7000").await, "wide");
    assert_eq!(via("127.223.9.1:7000").await, "narrow");
    assert_eq!(
        (wide.load(Ordering::SeqCst), narrow.load(Ordering::SeqCst)),
        (1, 2)
    );
    // A public CIDR service is visible to every namespace.
    let s = socks_to(ip(INTRUDER), "127.223.9.5:7000".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(read_to_end(s).await, b"narrow");
    // Another port of the range is no service: passed through (nothing listens there).
    assert!(
        socks_to(NET.client(), "127.223.9.77:7999".parse().unwrap())
            .await
            .is_err()
    );
    assert_eq!(far.load(Ordering::SeqCst), 0);
}
