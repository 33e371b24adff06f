//! Every byte an upstream sent reaches the client before the stream ends, whatever order the
//! upstream writes and closes in (in-process proxy cores): client → ztunnel a → waypoint → ztunnel b →
//! a backend that writes its response head and body separately and closes at once, as
//! Python's `http.server` does. HTTP/1.1, HTTP/2 and TCP; small and large bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use mesh_tests::backends::*;
use mesh_tests::inproc::InprocMesh;

/// Node a runs the client, node b the backend `web`, whose service (VIP 127.b.2.1) uses the
/// waypoint at 127.b.0.3: port 80 HTTP (→ 8080), 81 HTTP2 (→ 8081), 82 TCP (→ 8082).
fn config(b: u8) -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.{b}.0.1, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.{b}.0.2, workloads: [ns/web]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.{b}.1.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: ns}}
spec: {{address: 127.{b}.1.20, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [web.ns.svc]
  addresses: [127.{b}.2.1]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}
  - {{number: 81, name: h2, protocol: HTTP2, targetPort: 8081}}
  - {{number: 82, name: tcp, protocol: TCP, targetPort: 8082}}
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: 127.{b}.0.3}}]
"#
    )
}

struct Setup {
    mesh: InprocMesh,
    client: IpAddr,
    vip: IpAddr,
}

async fn setup(b: u8) -> Setup {
    let mut mesh = InprocMesh::new(&config(b));
    let web = |port: u16| SocketAddr::new(format!("127.{b}.1.20").parse().unwrap(), port);
    split_writer_http1(web(8080)).await;
    split_writer_http2(web(8081)).await;
    split_writer_tcp(web(8082)).await;
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    Setup {
        mesh,
        client: format!("127.{b}.1.10").parse().unwrap(),
        vip: format!("127.{b}.2.1").parse().unwrap(),
    }
}

const SMALL: usize = 100;
const LARGE: usize = 1024 * 1024;
const ROUNDS: usize = 40;

/// Runs `ROUNDS` sequential requests of each size through `f`; panics with the tally of any
/// that did not complete.
async fn rounds<F, Fut>(what: &str, mesh: &InprocMesh, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Ending>,
{
    for size in [SMALL, LARGE] {
        let mut endings = Vec::new();
        for _ in 0..ROUNDS {
            endings.push(f(size).await);
        }
        let t = Tally::of(&endings);
        if t.complete != ROUNDS {
            let bad: Vec<_> = endings.iter().filter(|e| **e != Ending::Complete).collect();
            panic!(
                "{what}, {size}-byte bodies: {t:?} of {ROUNDS}, e.g. {:?}\n--- a:\n{}\n--- wp:\n{}",
                &bad[..bad.len().min(5)],
                tail(&mesh.logs("a")),
                tail(&mesh.logs("wp"))
            );
        }
    }
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("reset") || l.contains("error") || l.contains("ERROR"))
        .collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_loses_no_http1_response_body_when_the_backend_closes() {
    let s = setup(110).await;
    let vip = SocketAddr::new(s.vip, 80);
    for mode in ["cl", "eof", "shut"] {
        rounds(
            &format!("HTTP/1.1 via waypoint, /{mode}"),
            &s.mesh,
            |n| async move { get_close(s.client, vip, &format!("/{mode}/{n}"), &body(n)).await },
        )
        .await;
    }
    // Complete streams are no errors at the client's ztunnel.
    assert!(
        !s.mesh.logs("a").contains("tunnel reset by peer"),
        "{}",
        tail(&s.mesh.logs("a"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_loses_no_http2_response_body_when_the_backend_closes() {
    let s = setup(111).await;
    let vip = SocketAddr::new(s.vip, 81);
    rounds("HTTP/2 via waypoint", &s.mesh, |n| get_h2(s.client, vip, n)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_loses_no_tcp_response_when_the_backend_closes() {
    let s = setup(112).await;
    let vip = SocketAddr::new(s.vip, 82);
    rounds("TCP via waypoint", &s.mesh, |n| get_tcp(s.client, vip, n)).await;
}
