//! Attacks on the application tunnel (`application_tunnel: PROXY`, Istio 1.31's workload
//! API) found in review:
//! - `0xD1` (the targeted service) from `Forwarded: host=` names a service the workload serves
//!   on the targeted port, or any it serves when the peer is its own waypoint (in process);
//! - a plaintext client captured to the node's inbound port (Istio's 15006) cannot forge the
//!   PROXY header: ours (no `0xD0`) comes first and its bytes follow as payload (network
//!   namespace, root only; skipped otherwise; in the `netns` nextest group).
//!
//! Loopback block 127.224.128.x–127.224.255.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_dataplane::config::xds::{XdsSettings, XdsStore};
use mesh_identity::{CertStore, SpiffeId};
use mesh_tests::inproc::InprocMesh;
use mesh_tests::{NetNs, connect_from};
use mesh_xds::pb::workload as wl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use workload_api_support::{address, service, workload};

mod workload_api_support;

/// Nodes `a` and `b` (the server's); everything else comes from the workload API.
fn file_config(node_a: &str, node_b: &str, server: &str) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: {node_a}, workloads: []}}
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

/// Node `b`'s store: `server` at `server_ip` with `application_tunnel: PROXY` on `port`
/// (0: the target port), serving `server` (9000) and `other` (9100), behind waypoint `wp`
/// (at `wp_ip`) when `wp_ip` is set.
fn store(node_b: &str, server_ip: &str, tunnel_port: u32, wp_ip: Option<&str>) -> XdsStore {
    let mut s = XdsStore::new(XdsSettings {
        node: "b".into(),
        node_address: node_b.parse().unwrap(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        service_listeners: false,
    });
    let hosts = [
        ("server.ns.svc.cluster.local", 9000),
        ("other.ns.svc.cluster.local", 9100),
    ];
    let mut server = workload("server", server_ip, "b", &hosts);
    server.application_tunnel = Some(wl::ApplicationTunnel {
        protocol: wl::application_tunnel::Protocol::Proxy as i32,
        port: tunnel_port,
    });
    use wl::address::Type::{Service as S, Workload as W};
    let mut addrs = vec![
        address(S(service("server", "127.224.250.1", 9000))),
        address(S(service("other", "127.224.250.2", 9100))),
    ];
    if let Some(wp_ip) = wp_ip {
        server.waypoint = Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Hostname(
                wl::NamespacedHostname {
                    namespace: "ns".into(),
                    hostname: "wp.ns.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        });
        let wp = workload("wp", wp_ip, "w", &[("wp.ns.svc.cluster.local", 15008)]);
        addrs.push(address(W(wp)));
        addrs.push(address(S(service("wp", "127.224.250.3", 15008))));
    }
    addrs.push(address(W(server)));
    let rejected = s.apply_addresses(addrs, vec![]);
    assert!(rejected.is_empty(), "{rejected:?}");
    s
}

/// What the app got: the PROXY header's addresses and TLVs, and the bytes after it.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    addresses: ppp::v2::Addresses,
    tlvs: Vec<(u8, Vec<u8>)>,
}

/// The workload's app on `addr`: parses a PROXY v2 header (with `ppp`), records it, echoes.
async fn proxy_app(addr: SocketAddr) -> Arc<Mutex<Vec<Received>>> {
    let l = TcpListener::bind(addr).await.unwrap();
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 16];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                head.resize(16 + len, 0);
                if s.read_exact(&mut head[16..]).await.is_err() {
                    return;
                }
                let Ok(h) = ppp::v2::Header::try_from(&head[..]) else {
                    return;
                };
                let tlvs = h.tlvs().filter_map(Result::ok);
                let tlvs = tlvs.map(|t| (t.kind, t.value.to_vec())).collect();
                seen.lock().unwrap().push(Received {
                    addresses: h.addresses,
                    tlvs,
                });
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    seen
}

/// Opens a tunnel to `server`:9000 as `identity` with `forwarded`, sends one byte and waits
/// for its echo.
async fn tunnel_as(mesh: &InprocMesh, server: IpAddr, identity: &str, forwarded: &str) {
    let pool = mesh_hbone::Pool::new(
        mesh_hbone::PoolConfig::default(),
        mesh.ca.trust_bundle().unwrap(),
    );
    let id: SpiffeId = identity.parse().unwrap();
    let certs = CertStore::fixed(mesh.ca.issue(&id).unwrap());
    let mut headers = http::HeaderMap::new();
    headers.insert("forwarded", forwarded.parse().unwrap());
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
}

// Istio (proto/workload.proto, ApplicationTunnel): "0xD1 - The FQDN or Hostname of the
// targeted Service". istio/ztunnel src/proxy.rs `guess_inbound_service` believes the peer's
// `Forwarded` host only among the workload's services ("the set of Services we look for is
// bounded"). Attacker: a mesh peer that is not the workload's waypoint names another service
// the workload serves (`other`, on port 9100) on a connection to port 9000, to be labelled and
// tunnelled as it: not believed (only a service on the targeted port is, or any the workload
// serves from its own waypoint, whose `for=` istio/ztunnel's inbound trusts `if from_waypoint`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_tlv_is_bounded_to_the_targeted_port_unless_from_the_waypoint() {
    let (node_a, node_b, server_s) = ("127.224.130.1", "127.224.130.2", "127.224.131.20");
    let mut mesh = InprocMesh::new(&file_config(node_a, node_b, server_s));
    let server: IpAddr = server_s.parse().unwrap();
    let seen = proxy_app(SocketAddr::new(server, 15088)).await;
    mesh.ztunnel("b", &[]).await;
    let other = r#"for="10.0.0.1:1";host=other.ns.svc.cluster.local"#;
    let own = r#"for="10.0.0.1:1";host=server.ns.svc.cluster.local"#;
    let intruder = "spiffe://cluster.local/ns/ns/sa/intruder";
    let tlvs = |i: usize| seen.lock().unwrap()[i].tlvs.clone();
    let d0 = |id: &str| (0xD0u8, id.as_bytes().to_vec());
    let d1 = |h: &str| (0xD1u8, h.as_bytes().to_vec());
    // Without a waypoint (behind one, another peer gets 401 and nothing is delivered).
    let state = store(node_b, server_s, 15088, None).build();
    mesh.proxy("b").apply(state).await.unwrap();
    tunnel_as(&mesh, server, intruder, other).await;
    assert_eq!(
        tlvs(0),
        [d0(intruder)],
        "another port's service is not believed"
    );
    tunnel_as(&mesh, server, intruder, own).await;
    assert_eq!(tlvs(1), [d0(intruder), d1("server.ns.svc.cluster.local")]);

    // The workload's own waypoint names any service the workload serves.
    let wp = "spiffe://cluster.local/ns/ns/sa/wp";
    let state = store(node_b, server_s, 15088, Some("127.224.130.3")).build();
    mesh.proxy("b").apply(state).await.unwrap();
    tunnel_as(&mesh, server, wp, other).await;
    assert_eq!(tlvs(2), [d0(wp), d1("other.ns.svc.cluster.local")]);
    // Even the waypoint cannot name a service the workload does not serve.
    let foreign = r#"for="10.0.0.1:1";host=admin.kube-system.svc.cluster.local"#;
    tunnel_as(&mesh, server, wp, foreign).await;
    assert_eq!(tlvs(3), [d0(wp)]);
}

const LEGACY: &str = "127.224.141.30";

// istio/ztunnel src/proxy/inbound_passthrough.rs connects to the original destination and
// copies the plaintext client's bytes unchanged (no PROXY header), so a client reaching a
// workload whose port speaks PROXY (`application_tunnel` without `port`: the target port)
// could send its own header with `0xD0` = any SPIFFE id. Ours goes first here: source = the
// client, no `0xD0` (a plaintext peer proves none); the forged header is payload after it.
#[test]
fn plaintext_client_cannot_forge_the_proxy_header() {
    let Some(ns) = NetNs::create("mesh-y2pp") else {
        return;
    };
    let (node_a, node_b, server_s) = ("127.224.140.1", "127.224.140.2", "127.224.141.20");
    // Capture as istio-cni's in-pod rules: the client's connections to the server go to node
    // b's plaintext inbound port (15006).
    let to = format!("{node_b}:15006");
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-s",
        LEGACY,
        "-d",
        server_s,
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ]);
    let rt = ns.runtime();
    rt.block_on(rt.spawn(async move {
        let mut mesh = InprocMesh::new(&file_config(node_a, node_b, server_s));
        let server: IpAddr = server_s.parse().unwrap();
        let app = SocketAddr::new(server, 9000);
        let seen = proxy_app(app).await;
        mesh.ztunnel("b", &[]).await;
        let state = store(node_b, server_s, 0, None).build();
        mesh.proxy("b").apply(state).await.unwrap();

        let legacy: IpAddr = LEGACY.parse().unwrap();
        let mut s = connect_from(legacy, app).await.unwrap();
        let spoofed: SocketAddr = "10.9.9.9:1".parse().unwrap();
        let admin = "spiffe://cluster.local/ns/kube-system/sa/admin";
        let forged = mesh_hbone::proxy_protocol::header(spoofed, app, Some(admin), None).unwrap();
        let mut sent = forged.clone();
        sent.extend_from_slice(b"after the forged header");
        s.write_all(&sent).await.unwrap();
        let mut echoed = vec![0u8; sent.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(echoed, sent, "the forged header reached the app as payload");
        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:?}");
        let ppp::v2::Addresses::IPv4(a) = &got[0].addresses else {
            panic!("{got:?}")
        };
        assert_eq!(a.source_address.to_string(), LEGACY);
        assert_eq!(
            (a.destination_address.to_string(), a.destination_port),
            (server_s.to_owned(), 9000)
        );
        assert_eq!(
            got[0].tlvs,
            [],
            "no 0xD0 for a plaintext peer (nor 0xD1: it names no service)"
        );
    }))
    .unwrap();
}

/// An L4 ALLOW of namespace `ns` for the waypoint's principal only (what Istio's docs have a
/// waypoint's users add so that traffic bypassing the waypoint is refused by ztunnel).
fn only_the_waypoint() -> (String, mesh_xds::pb::security::Authorization) {
    use mesh_xds::pb::security as sec;
    let exact = sec::string_match::MatchType::Exact("cluster.local/ns/ns/sa/wp".into());
    let a = sec::Authorization {
        name: "only-wp".into(),
        namespace: "ns".into(),
        scope: sec::Scope::Namespace as i32,
        action: sec::Action::Allow as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    principals: vec![sec::StringMatch {
                        match_type: Some(exact),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    ("ns/only-wp".into(), a)
}

// istio/ztunnel src/proxy/inbound.rs refuses HBONE that bypassed the workload's waypoint
// (401, "bypassed waypoint"); src/proxy/inbound_passthrough.rs (plaintext, 15006) has no such
// check: a plaintext client is authorized at L4 with no identity. As Istio: plaintext reaches a
// workload behind a waypoint under PERMISSIVE; an L4 ALLOW for the waypoint's principal (or
// PeerAuthentication STRICT) refuses it. Attacker: a non-mesh pod skipping the waypoint.
#[test]
fn plaintext_to_a_workload_behind_a_waypoint_is_as_istio() {
    let Some(ns) = NetNs::create("mesh-y2wp") else {
        return;
    };
    let (node_a, node_b, server_s) = ("127.224.150.1", "127.224.150.2", "127.224.151.20");
    let to = format!("{node_b}:15006");
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-s",
        LEGACY,
        "-d",
        server_s,
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ]);
    let rt = ns.runtime();
    rt.block_on(rt.spawn(async move {
        let mut mesh = InprocMesh::new(&file_config(node_a, node_b, server_s));
        let server: IpAddr = server_s.parse().unwrap();
        let app = SocketAddr::new(server, 9000);
        let seen = proxy_app(app).await;
        mesh.ztunnel("b", &[]).await;
        let mut st = store(node_b, server_s, 0, Some("127.224.150.3"));
        mesh.proxy("b").apply(st.build()).await.unwrap();
        let legacy: IpAddr = LEGACY.parse().unwrap();
        let echo = |msg: &'static [u8]| async move {
            let mut got = Vec::new();
            let Ok(mut s) = connect_from(legacy, app).await else {
                return got;
            };
            let _ = s.write_all(msg).await;
            let _ = s.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
            got
        };
        assert_eq!(echo(b"permissive").await, b"permissive");
        assert_eq!(seen.lock().unwrap().len(), 1);

        let rejected = st.apply_authorizations(vec![only_the_waypoint()], vec![]);
        assert!(rejected.is_empty(), "{rejected:?}");
        mesh.proxy("b").apply(st.build()).await.unwrap();
        assert_eq!(echo(b"skipping the waypoint").await, b"");
        assert_eq!(seen.lock().unwrap().len(), 1, "nothing delivered");
    }))
    .unwrap();
}
