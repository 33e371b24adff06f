//! Istio 1.31's workload API on the data path (in-process ztunnels fed by the xDS store, as
//! istiod's resources arrive): `Service.weighted_waypoints` splits connections between two
//! waypoints by weight and never moves a live connection (waypoints are fakes written here:
//! HBONE servers with the waypoints' identities that count the CONNECTs they get);
//! `Workload.application_tunnel: PROXY` delivers each connection to the workload's tunnel port
//! preceded by a PROXY v2 header (parsed here with the `ppp` crate) with Istio's TLVs.
//! Loopback block 127.224.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_dataplane::config::MeshState;
use mesh_dataplane::config::xds::{XdsSettings, XdsStore};
use mesh_hbone::{H2Settings, accept_tls, serve_connection};
use mesh_identity::{CertStore, LocalCa, SpiffeId, server_config};
use mesh_tests::connect_from;
use mesh_tests::inproc::InprocMesh;
use mesh_xds::pb::workload as wl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use workload_api_support::{address, service, workload};

mod workload_api_support;

// Weighted-waypoint test: 127.224.0-3.x; application-tunnel test: the same + 10 in the third
// octet (the tests run at once in one process).
const NODE_A: &str = "127.224.0.1";
const NODE_B: &str = "127.224.0.2";
const CLIENT: &str = "127.224.1.10";
const SERVER: &str = "127.224.1.20";
/// The service whose connections are split.
const VIP: &str = "127.224.2.1:9000";
const T_NODE_A: &str = "127.224.10.1";
const T_NODE_B: &str = "127.224.10.2";
const T_CLIENT: &str = "127.224.11.10";
const T_SERVER: &str = "127.224.11.20";
const T_VIP: &str = "127.224.12.1:9000";

/// Nodes `a` (with the client) and `b` (with the server); everything else comes from the
/// workload API.
fn file_config(node_a: &str, node_b: &str, client: &str, server: &str) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: {node_a}, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: {client}, serviceAccount: client}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: {node_b}, workloads: [ns/server]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: ns}}
spec: {{address: {server}, serviceAccount: server}}
"#
    )
}

fn waypoint_ref(name: &str) -> wl::GatewayAddress {
    wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(
            wl::NamespacedHostname {
                namespace: "ns".into(),
                hostname: format!("{name}.ns.svc.cluster.local"),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

/// Node `a`'s xDS store holding the client, waypoints `wp1` (127.224.0.3) and `wp2`
/// (127.224.0.4), and service `server` (VIP:9000) with `waypoint: wp1` and weighted waypoints
/// `weights` (wp1, wp2).
fn store(weights: (u32, u32)) -> XdsStore {
    let mut s = XdsStore::new(XdsSettings {
        node: "a".into(),
        node_address: NODE_A.parse().unwrap(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        service_listeners: true,
    });
    let mut server = service("server", "127.224.2.1", 9000);
    server.waypoint = Some(waypoint_ref("wp1"));
    server.weighted_waypoints = vec![
        wl::WeightedWaypoint {
            destination: Some(waypoint_ref("wp1")),
            weight: weights.0,
        },
        wl::WeightedWaypoint {
            destination: Some(waypoint_ref("wp2")),
            weight: weights.1,
        },
    ];
    use wl::address::Type::{Service as S, Workload as W};
    let rejected = s.apply_addresses(
        vec![
            address(W(workload("client", CLIENT, "a", &[]))),
            address(W(workload(
                "server",
                SERVER,
                "b",
                &[("server.ns.svc.cluster.local", 9000)],
            ))),
            address(W(workload(
                "wp1",
                "127.224.0.3",
                "w",
                &[("wp1.ns.svc.cluster.local", 15008)],
            ))),
            address(W(workload(
                "wp2",
                "127.224.0.4",
                "w",
                &[("wp2.ns.svc.cluster.local", 15008)],
            ))),
            address(S(service("wp1", "127.224.3.1", 15008))),
            address(S(service("wp2", "127.224.3.2", 15008))),
            address(S(server)),
        ],
        vec![],
    );
    assert!(rejected.is_empty(), "{rejected:?}");
    s
}

/// A fake waypoint: an HBONE server with `identity`'s certificate on `addr`:15008 that
/// accepts every CONNECT, counts it, records its authority and echoes its bytes (counted).
struct FakeWaypoint {
    connects: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    authorities: Arc<Mutex<Vec<SocketAddr>>>,
}

async fn fake_waypoint(ca: &LocalCa, addr: &str, identity: &str) -> FakeWaypoint {
    let id: SpiffeId = identity.parse().unwrap();
    let tls = server_config(
        CertStore::fixed(ca.issue(&id).unwrap()),
        &ca.trust_bundle().unwrap(),
        vec!["cluster.local".parse().unwrap()],
    )
    .unwrap();
    let l = TcpListener::bind(SocketAddr::new(addr.parse().unwrap(), 15008))
        .await
        .unwrap();
    let fake = FakeWaypoint {
        connects: Arc::default(),
        bytes: Arc::default(),
        authorities: Arc::default(),
    };
    let (connects, bytes, authorities) = (
        fake.connects.clone(),
        fake.bytes.clone(),
        fake.authorities.clone(),
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (tls, connects, bytes, authorities) = (
                tls.clone(),
                connects.clone(),
                bytes.clone(),
                authorities.clone(),
            );
            tokio::spawn(async move {
                let Ok((stream, info)) = accept_tls(tcp, tls, Duration::from_secs(5)).await else {
                    return;
                };
                let settings = H2Settings::default();
                let _ = serve_connection(stream, info, &settings, CancellationToken::new(), {
                    move |req| {
                        let (connects, bytes, authorities) =
                            (connects.clone(), bytes.clone(), authorities.clone());
                        async move {
                            connects.fetch_add(1, Ordering::SeqCst);
                            authorities.lock().unwrap().push(req.authority);
                            let Ok(tunnel) = req.accept() else { return };
                            let (mut r, mut w) = tokio::io::split(tunnel);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = r.read(&mut buf).await {
                                if n == 0 || w.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                bytes.fetch_add(n, Ordering::SeqCst);
                            }
                            let _ = w.shutdown().await;
                        }
                    }
                })
                .await;
            });
        }
    });
    fake
}

async fn apply(mesh: &InprocMesh, state: MeshState) {
    mesh.proxy("a").apply(state).await.unwrap();
}

/// One round trip on `s`.
async fn ping(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(got, msg);
}

// Istio (proto/workload.proto, Service.weighted_waypoints): "the client dataplane selects one
// waypoint per connection proportional to each entry's weight"; istio/ztunnel samples once in
// `fetch_service_waypoint`, when the connection is routed, so a connection never moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_waypoints_split_connections_and_pin_each() {
    let mut mesh = InprocMesh::new(&file_config(NODE_A, NODE_B, CLIENT, SERVER));
    let wp1 = fake_waypoint(
        &mesh.ca,
        "127.224.0.3",
        "spiffe://cluster.local/ns/ns/sa/wp1",
    )
    .await;
    let wp2 = fake_waypoint(
        &mesh.ca,
        "127.224.0.4",
        "spiffe://cluster.local/ns/ns/sa/wp2",
    )
    .await;
    mesh.ztunnel("a", &[]).await;
    apply(&mesh, store((50, 50)).build()).await;

    let client: IpAddr = CLIENT.parse().unwrap();
    let vip: SocketAddr = VIP.parse().unwrap();
    let n = 1000;
    for i in 0..n {
        let mut s = connect_from(client, vip).await.unwrap();
        ping(&mut s, format!("c{i}").as_bytes()).await;
    }
    let (a, b) = (
        wp1.connects.load(Ordering::SeqCst),
        wp2.connects.load(Ordering::SeqCst),
    );
    eprintln!("weighted 50/50 over {n} connections: wp1 {a}, wp2 {b}");
    assert_eq!(a + b, n, "every connection through one waypoint");
    // Within ±5% of 500 each (the Weyl spread gives 500/500 ± a few).
    assert!((450..=550).contains(&a), "wp1 {a}, wp2 {b}");
    // The waypoint is told the service VIP:port the client addressed.
    assert!(wp1.authorities.lock().unwrap().iter().all(|x| *x == vip));

    // A long connection, then the weights move everything away from its waypoint.
    let mut long = connect_from(client, vip).await.unwrap();
    ping(&mut long, b"before").await;
    let on_wp1 = wp1.connects.load(Ordering::SeqCst) > a;
    let (mine, other) = if on_wp1 { (&wp1, &wp2) } else { (&wp2, &wp1) };
    let weights = if on_wp1 { (0, 100) } else { (100, 0) };
    apply(&mesh, store(weights).build()).await;
    let (mine_connects, mine_bytes) = (
        mine.connects.load(Ordering::SeqCst),
        mine.bytes.load(Ordering::SeqCst),
    );
    let other_before = other.connects.load(Ordering::SeqCst);
    for i in 0..20 {
        let mut s = connect_from(client, vip).await.unwrap();
        ping(&mut s, format!("n{i}").as_bytes()).await;
    }
    assert_eq!(
        other.connects.load(Ordering::SeqCst),
        other_before + 20,
        "new connections follow the new weights"
    );
    // The live connection still flows through its waypoint (weight 0 now), unmoved.
    ping(&mut long, b"after the update").await;
    assert_eq!(mine.connects.load(Ordering::SeqCst), mine_connects);
    assert_eq!(
        mine.bytes.load(Ordering::SeqCst),
        mine_bytes + b"after the update".len()
    );
}

/// Node `node`'s store: the client on `a`, the server on `b` with `application_tunnel: PROXY`
/// on port 15088, service `server` (VIP:9000, no waypoint).
fn tunnel_store(node: &str, node_address: &str) -> XdsStore {
    let mut s = XdsStore::new(XdsSettings {
        node: node.into(),
        node_address: node_address.parse().unwrap(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        // Only the client's node listens on the VIP.
        service_listeners: node == "a",
    });
    let mut server = workload(
        "server",
        T_SERVER,
        "b",
        &[("server.ns.svc.cluster.local", 9000)],
    );
    server.application_tunnel = Some(wl::ApplicationTunnel {
        protocol: wl::application_tunnel::Protocol::Proxy as i32,
        port: 15088,
    });
    use wl::address::Type::{Service as S, Workload as W};
    let rejected = s.apply_addresses(
        vec![
            address(W(workload("client", T_CLIENT, "a", &[]))),
            address(W(server)),
            address(S(service("server", "127.224.12.1", 9000))),
        ],
        vec![],
    );
    assert!(rejected.is_empty(), "{rejected:?}");
    s
}

/// What the app on the tunnel port got before the bytes: the PROXY header's addresses and TLVs.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    addresses: ppp::v2::Addresses,
    tlvs: Vec<(u8, Vec<u8>)>,
}

/// The workload's app on `addr`: reads and parses a PROXY v2 header (with `ppp`), records it,
/// then echoes.
async fn proxy_app(addr: SocketAddr) -> Arc<Mutex<Vec<Received>>> {
    let l = TcpListener::bind(addr).await.unwrap();
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                // Fixed part (16 bytes: signature, version/command, family, length), then
                // the rest as long as the length says.
                let mut head = vec![0u8; 16];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                head.resize(16 + len, 0);
                if s.read_exact(&mut head[16..]).await.is_err() {
                    return;
                }
                let h = ppp::v2::Header::try_from(&head[..]).expect("a PROXY v2 header");
                seen.lock().unwrap().push(Received {
                    addresses: h.addresses,
                    tlvs: h
                        .tlvs()
                        .map(|t| {
                            let t = t.unwrap();
                            (t.kind, t.value.to_vec())
                        })
                        .collect(),
                });
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    seen
}

// Istio (proto/workload.proto, ApplicationTunnel): PROXY "prepend[s] PROXY protocol headers
// before copying bytes ... 0xD0 - The SPIFFE identity of the source workload, 0xD1 - The FQDN
// or Hostname of the targeted Service"; `port`: "traffic should be sent to this port after the
// last zTunnel hop". istio/ztunnel src/proxy/inbound.rs writes (peer address, HBONE target)
// as the addresses and the peer's certificate identity as 0xD0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_tunnel_delivers_proxy_v2_with_istio_tlvs() {
    let mut mesh = InprocMesh::new(&file_config(T_NODE_A, T_NODE_B, T_CLIENT, T_SERVER));
    let server: IpAddr = T_SERVER.parse().unwrap();
    let seen = proxy_app(SocketAddr::new(server, 15088)).await;
    // Nothing on the target port: delivery must use the tunnel's port.
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;
    mesh.proxy("b")
        .apply(tunnel_store("b", T_NODE_B).build())
        .await
        .unwrap();
    apply(&mesh, tunnel_store("a", T_NODE_A).build()).await;

    let client: IpAddr = T_CLIENT.parse().unwrap();
    let mut s = connect_from(client, T_VIP.parse().unwrap()).await.unwrap();
    let local = s.local_addr().unwrap();
    ping(&mut s, b"through the tunnel").await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let ppp::v2::Addresses::IPv4(a) = &got[0].addresses else {
        panic!("{got:?}")
    };
    // Source: the peer the destination ztunnel sees (the source ztunnel dials from the
    // client's address); destination: the CONNECT authority, the server's target port.
    assert_eq!(
        a.source_address,
        local
            .ip()
            .to_string()
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
    );
    assert_eq!(
        (a.destination_address.to_string(), a.destination_port),
        (T_SERVER.to_owned(), 9000)
    );
    assert_eq!(
        got[0].tlvs,
        [
            (0xD0, b"spiffe://cluster.local/ns/ns/sa/client".to_vec()),
            (0xD1, b"server.ns.svc.cluster.local".to_vec()),
        ]
    );

    // Attacker: a mesh peer claiming a service the workload does not serve in `Forwarded`
    // gets no 0xD1 (the state decides), and 0xD0 is its certificate's identity.
    let pool = mesh_hbone::Pool::new(
        mesh_hbone::PoolConfig::default(),
        mesh.ca.trust_bundle().unwrap(),
    );
    let intruder: SpiffeId = "spiffe://cluster.local/ns/other/sa/intruder"
        .parse()
        .unwrap();
    let certs = CertStore::fixed(mesh.ca.issue(&intruder).unwrap());
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "forwarded",
        r#"for="10.0.0.1:1";host=admin.kube-system.svc.cluster.local"#
            .parse()
            .unwrap(),
    );
    let mut t = pool
        .connect(mesh_hbone::ConnectRequest {
            source: certs,
            destination_identity: "spiffe://cluster.local/ns/ns/sa/server".parse().unwrap(),
            hbone_addr: SocketAddr::new(server, 15008),
            authority: SocketAddr::new(server, 9000),
            headers,
            socket_source: None,
        })
        .await
        .unwrap();
    t.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut one))
        .await
        .unwrap()
        .unwrap();
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[1].tlvs,
        [(
            0xD0,
            b"spiffe://cluster.local/ns/other/sa/intruder".to_vec()
        )]
    );
}
