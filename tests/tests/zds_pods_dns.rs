//! The DNS proxy of a pod handed over by ZDS, on by default as in Istio's ztunnel (its
//! `dns_proxy` is on unless `ISTIO_META_DNS_CAPTURE` says otherwise, istio/ztunnel
//! `src/config.rs`; istio-cni then redirects the pod's port 53 to 15053): the pod's
//! 127.0.0.1:15053 is in the same in-pod set as 15008/15006/15001, answers a mesh service name
//! with the pod's namespace as the asker's, and does not resolve another namespace's short
//! name. Root only (network namespaces; skipped otherwise), nextest group `netns`. Block
//! 127.229.x.x, namespaces `x1*`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod zds_pods_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use zds_pods_support::*;

/// The pod tests' mesh on this file's block, with a service in the pods' namespace `ns` and
/// one in namespace `other`.
fn mesh() -> String {
    let mut c = config()
        .replace("127.221.", "127.229.")
        .replace("10.221.", "10.229.");
    for (name, ns, vip) in [("web", "ns", "127.229.9.1"), ("db", "other", "127.229.9.2")] {
        c.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}.{ns}.svc.cluster.local]\n  addresses: [{vip}]\n  ports: [{{number: 80, name: http}}]\n"
        ));
    }
    c
}

/// An A query for `name` over UDP to the pod's 127.0.0.1:15053, from inside the pod (`rt`).
fn ask(rt: &tokio::runtime::Runtime, name: &str) -> Message {
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let bytes = q.to_vec().unwrap();
    rt.block_on(rt.spawn(async move {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dns: SocketAddr = "127.0.0.1:15053".parse().unwrap();
        s.send_to(&bytes, dns).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .expect("an answer from the pod's 127.0.0.1:15053")
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }))
    .unwrap()
}

fn a_records(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

/// A ZDS pod gets the DNS listener with its other in-pod listeners, without any DNS flag:
/// mesh names of its namespace resolve there (short and namespaced); another namespace's
/// short name does not (Istio's ztunnel resolves short names in the asker's namespace only,
/// `src/dns/server.rs` search domains of the client's namespace).
#[test]
fn a_zds_pod_answers_mesh_names_on_its_own_15053_by_default() {
    let Some(pod) = NetNs::create("x1dns") else {
        return;
    };
    let rt = pod.runtime();
    let main = tokio::runtime::Runtime::new().unwrap();
    let mut mesh = InprocMesh::new(&mesh());
    // No `--dns-capture`: Istio's default. The upstream is unused (mesh names only) and
    // inside this file's block.
    let args = [
        "--zds-socket",
        "/nonexistent/x1.sock",
        "--dns-upstream",
        "127.229.0.53:53",
    ];
    main.block_on(mesh.ztunnel("n1", &args));
    let (tx, rx) = mpsc::channel(4);
    mesh.proxy("n1").serve_pods(rx);
    let agent = Agent(tx);
    agent.connected();
    agent.add(info("uid-a", "a", "a"), netns_fd(&pod)).unwrap();
    agent.snapshot().unwrap();
    let got = in_pod_listeners(&mesh);
    assert!(
        got.iter()
            .any(|l| l.starts_with("127.0.0.1:15053 ns/a") && l.ends_with("dns")),
        "no in-pod DNS listener in {got:?}"
    );
    assert!(
        got.iter().any(|l| l == "0.0.0.0:15008 ns/a (in-pod)"),
        "{got:?}"
    );

    let want = vec!["127.229.9.1".parse::<IpAddr>().unwrap()];
    for name in ["web.", "web.ns.", "web.ns.svc.cluster.local."] {
        let m = ask(&rt, name);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(a_records(&m), want, "{name}");
    }
    // The fully qualified name of another namespace's service resolves; its short name,
    // asked from namespace ns, is not that service.
    let m = ask(&rt, "db.other.svc.cluster.local.");
    assert_eq!(
        a_records(&m),
        vec!["127.229.9.2".parse::<IpAddr>().unwrap()]
    );
    let m = ask(&rt, "db.");
    assert!(
        !a_records(&m).contains(&"127.229.9.2".parse().unwrap()),
        "{m:?}"
    );
    drop(mesh);
}
