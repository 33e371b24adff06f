//! Mirrored bodies on a route that does not retry (in-process harness, loopback block
//! 127.219.x.x; the fault/mirror tests' mesh and backends). Istio's `mirror` copies the
//! request, body included, whatever the route's `retries` (istio.io VirtualService
//! `HTTPRoute.mirror`; Envoy `request_mirror_policies` shadow the whole request). Before the
//! fix the body was not kept without a retry policy, and the mirror got none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "l7_support/mod.rs"]
mod support;

use std::time::Duration;

use mesh_tests::connect_from;
use mesh_tests::inproc::InprocMesh;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

fn addr(c: u8, host: u8, port: u16) -> std::net::SocketAddr {
    format!("127.219.{c}.{host}:{port}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_reaches_the_mirror_on_a_route_with_attempts_0() {
    let c = 2;
    let web = backend(addr(c, 21, 8080), Mode::Http).await;
    let shadow = backend(addr(c, 22, 8080), Mode::Http).await;
    let yaml = Net(c)
        .config(&vs(r#"  - route: [{destination: {host: web.ns.svc}}]
    retries: {attempts: 0}
    mirror: {host: shadow.ns.svc}
"#))
        .replace("127.211.", "127.219.");
    let mut mesh = InprocMesh::new(&yaml);
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    let client = format!("127.219.{c}.10").parse().unwrap();
    let mut s = BufReader::new(connect_from(client, addr(c, 41, 80)).await.unwrap());
    let head = "POST /post HTTP/1.1\r\nHost: web.ns.svc\r\ncontent-length: 5\r\n\r\nhello";
    s.get_mut().write_all(head.as_bytes()).await.unwrap();
    let (first, _) = tokio::time::timeout(Duration::from_secs(10), read_head(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let mut buf = vec![0; "ok /post upgrade=-".len()];
    s.read_exact(&mut buf).await.unwrap();
    let m = metrics_until(&mesh, |t| {
        mesh_tests::metric(t, "mesh_mirror_sent_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(
        mesh_tests::metric(&m, "mesh_mirror_dropped_body_total", &[]),
        0.0
    );
    assert_eq!(
        web.lock().unwrap().as_slice(),
        ["web.ns.svc /post upgrade=- body=5"]
    );
    // The copy may still be on its way when the main response is read.
    for _ in 0..50 {
        if !shadow.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        shadow.lock().unwrap().as_slice(),
        ["web.ns.svc-shadow /post upgrade=- body=5"]
    );
}
