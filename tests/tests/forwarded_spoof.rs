//! A mesh peer cannot claim another client address with `Forwarded: for=`: the destination
//! authorizes by the TCP peer address, and only the workload's own waypoint may assert the
//! original client (reproduced: an HBONE client with a mesh certificate and a forged
//! `Forwarded` passed an `ipBlocks` ALLOW that its real address fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{ConnectRequest, Error, Pool, PoolConfig};
use mesh_identity::CertStore;
use mesh_tests::bind::BindFrom;
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_header_cannot_pass_ip_blocks() {
    let net = Net { b: 135 };
    let policy = format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: from-client-ip, namespace: ns}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n  rules: [{{from: [{{source: {{ipBlocks: [{}/32]}}}}]}}]\n",
        net.client()
    );
    let mut mesh = InprocMesh::new(&(net.config() + &policy));
    echo_server(net.app()).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;

    // The real client, through its ztunnel (which dials HBONE from the client's own address,
    // so no header is needed): allowed.
    let mut s = connect_from(net.client(), net.vip()).await.unwrap();
    assert_eq!(exchange(&mut s, b"legit").await, b"legit");
    mesh.expect_log("b", &format!(r#""src.addr":"{}:"#, net.client()));

    // An attacker with a mesh certificate (even the client's identity) at another address,
    // claiming the client's address in `Forwarded`: refused by the ipBlocks ALLOW.
    let attacker: IpAddr = format!("127.{}.1.99", net.b).parse().unwrap();
    let pool = Pool::new(PoolConfig::default(), mesh.ca.trust_bundle().unwrap());
    let cert = mesh
        .ca
        .issue(&"spiffe://cluster.local/ns/ns/sa/client".parse().unwrap())
        .unwrap();
    let headers = ConnectHeaders {
        client: Some(SocketAddr::new(net.client(), 5555)),
        ..ConnectHeaders::default()
    };
    let forged = pool
        .connect(ConnectRequest {
            source: CertStore::fixed(cert),
            destination_identity: "spiffe://cluster.local/ns/ns/sa/server".parse().unwrap(),
            hbone_addr: net.hbone(),
            authority: net.app(),
            headers: headers.to_header_map(),
            socket_source: Some(Arc::new(BindFrom(attacker))),
        })
        .await;
    assert!(
        matches!(&forged, Err(Error::Status { status, .. }) if status.as_u16() == 401),
        "{forged:?}"
    );
    // The log names the real peer, not the claimed client.
    mesh.expect_log("b", &format!(r#""src.addr":"{attacker}:"#));
}
