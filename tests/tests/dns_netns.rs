//! The DNS proxy in a pod's network namespace (root; skipped otherwise; nextest group
//! `netns`): a ztunnel core with `--dns-capture true` serving a workload in-pod opens
//! 127.0.0.1:15053 (UDP and TCP) inside the pod, as Istio's ztunnel does; with the capture
//! rules of `meshctl capture install --dns`, the pod's ordinary port-53 queries reach it, mesh
//! names are answered with the pod's namespace as the asker's, and other names are relayed to
//! an upstream reachable from the pod (the relay's sockets live in the pod's namespace).
//! Namespaces `dn-*`, addresses 127.225.x.x (and 10.225.0.0/24 inside the pod).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dns_support/mod.rs"]
mod dns_support;

use dns_support::*;
use mesh_tests::inproc::InprocMesh;
use mesh_tests::netns::NetNs;

fn mesh(netns: &str) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec:
  address: 127.225.0.1
  workloads: [ns1/client]
  netns: {{ns1/client: {netns}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns1}}
spec: {{address: 127.225.1.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns1}}
spec:
  hosts: [web.ns1.svc.cluster.local]
  addresses: [127.225.2.1]
  ports: [{{number: 80, name: http}}]
"#
    )
}

/// A query for `name`'s A records over UDP to `server`, from inside the pod (the caller's
/// runtime lives there).
async fn ask(server: SocketAddr, name: &str) -> Message {
    udp_ask_from("0.0.0.0", server, &query(name, RecordType::A)).await
}

/// A fake upstream inside the pod: answers every A query with 192.0.2.7.
async fn pod_upstream() {
    let s = UdpSocket::bind("127.225.0.53:5353").await.unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = s.recv_from(&mut buf).await else {
            return;
        };
        let q = Message::from_vec(&buf[..n]).unwrap();
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.queries = q.queries.clone();
        let a = RData::A(A("192.0.2.7".parse().unwrap()));
        m.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, a));
        let _ = s.send_to(&m.to_vec().unwrap(), peer).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_dns_is_answered_inside_its_namespace() {
    let Some(pod) = NetNs::create("dn-pod") else {
        return;
    };
    // A route out of the pod, so port-53 queries to the cluster DNS address are sent (and
    // then redirected by the capture rules).
    pod.run(&[
        "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    pod.run(&["ip", "link", "set", "d1", "up"]);
    pod.run(&["ip", "addr", "add", "10.225.0.10/24", "dev", "d0"]);
    pod.run(&["ip", "link", "set", "d0", "up"]);
    pod.run(&["ip", "route", "add", "default", "dev", "d0"]);
    let rt = pod.runtime();
    let upstream = rt.spawn(pod_upstream());

    let path = pod.pod().path().display().to_string();
    let mut mesh = InprocMesh::new(&mesh(&path));
    ztunnel_with_dns(
        &mut mesh,
        &[
            "--dns-capture",
            "true",
            "--dns-upstream",
            "127.225.0.53:5353",
        ],
    )
    .await;

    // 127.0.0.1:15053 inside the pod: the short name resolves in the pod's namespace (ns1).
    let dns: SocketAddr = "127.0.0.1:15053".parse().unwrap();
    let m = rt.spawn(ask(dns, "web.")).await.unwrap();
    assert_eq!(addrs(&m), vec!["127.225.2.1".parse::<IpAddr>().unwrap()]);
    // Relayed upstream from the pod's own namespace (the upstream exists only there).
    let m = rt.spawn(ask(dns, "example.org.")).await.unwrap();
    assert_eq!(addrs(&m), vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);

    // With `meshctl capture install --dns`'s rules, the pod's ordinary queries to its
    // resolver (here 10.96.0.10:53) are answered by the proxy.
    let spec = mesh_dataplane::capture::CaptureSpec {
        dns_port: Some(mesh_dataplane::dns::DNS_PORT),
        ..Default::default()
    };
    pod.pod().capture(&spec, false).unwrap();
    let resolver: SocketAddr = "10.96.0.10:53".parse().unwrap();
    let m = rt.spawn(ask(resolver, "web.ns1.")).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), vec!["127.225.2.1".parse::<IpAddr>().unwrap()]);
    // The proxy's own relay is marked, so it is not captured back into itself.
    let m = rt.spawn(ask(resolver, "example.org.")).await.unwrap();
    assert_eq!(addrs(&m), vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);

    upstream.abort();
    mesh.procs[0].stop().await;
    rt.shutdown_background();
}
