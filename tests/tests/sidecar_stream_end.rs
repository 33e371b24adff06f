//! How streams end through a pair of sidecars with capture (real binaries, root, in the
//! `netns` nextest group; skipped with a printed reason otherwise): every byte a backend sent
//! reaches the client whatever order it writes and closes in, and a stream cut by a killed
//! sidecar reaches its far end as a reset, never as a clean, shorter stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use mesh_tests::backends::*;
use mesh_tests::*;

const CLIENT_IP: &str = "10.116.0.2";
const SERVER_IP: &str = "10.116.0.3";
const VIP: &str = "10.116.0.100";

/// Ports of service `server` (VIP:port → app port): 80 HTTP → 8080, 81 HTTP2 → 8081, 82 TCP
/// → 8082 (split writers), 83 HTTP → 8083 and 90 TCP → 9000 (paced downloads), 91 TCP →
/// 9001 (upload sink). An HTTP policy at the server makes its sidecar serve HTTP ports per
/// request (to the app over its own connections).
fn config() -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec:
  address: {CLIENT_IP}
  serviceAccount: client
  labels: {{app: client, sidecar.istio.io/inject: "true"}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: ns}}
spec:
  address: {SERVER_IP}
  serviceAccount: server
  labels: {{app: server, sidecar.istio.io/inject: "true"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: ns}}
spec:
  hosts: [server.ns.svc]
  addresses: [{VIP}]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}
  - {{number: 81, name: h2, protocol: HTTP2, targetPort: 8081}}
  - {{number: 82, name: tcp, protocol: TCP, targetPort: 8082}}
  - {{number: 83, name: http-big, protocol: HTTP, targetPort: 8083}}
  - {{number: 90, name: download, protocol: TCP, targetPort: 9000}}
  - {{number: 91, name: upload, protocol: TCP, targetPort: 9001}}
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admin-paths, namespace: ns}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules: [{{to: [{{operation: {{ports: ["8080", "8081", "8083"], paths: ["/admin*"]}}}}]}}]
"#
    )
}

struct Pods {
    mesh: TestMesh,
    /// Runtimes whose workers live in pod a (client) and pod b (server).
    ra: tokio::runtime::Runtime,
    rb: tokio::runtime::Runtime,
    // Dropped last: the namespaces outlive the processes in them.
    _ns: (NetNs, NetNs),
}

/// Two pods joined by a veth pair, each with its sidecar and capture rules; `None` (skipped)
/// without root.
fn pods(tag: &str) -> Option<Pods> {
    let pa = NetNs::create(&format!("mesh-t116{tag}a"))?;
    let pb = NetNs::create(&format!("mesh-t116{tag}b"))?;
    link_pods(
        &pa,
        &format!("{CLIENT_IP}/24"),
        &pb,
        &format!("{SERVER_IP}/24"),
    );
    let mut mesh = TestMesh::new(&config());
    let (ra, rb) = (pa.runtime(), pb.runtime());
    let any = |port: u16| SocketAddr::new("0.0.0.0".parse().unwrap(), port);
    rb.block_on(rb.spawn(async move {
        split_writer_http1(any(8080)).await;
        split_writer_http2(any(8081)).await;
        split_writer_tcp(any(8082)).await;
        http_download_server(any(8083), SIZE, PAUSE).await;
        paced_download_server(any(9000), SIZE, PAUSE).await;
    }))
    .unwrap();
    mesh.sidecar("a", "ns/client", Some(&pa.name), &[]);
    mesh.sidecar("b", "ns/server", Some(&pb.name), &[]);
    for ns in [&pa, &pb] {
        let (ok, out, err) = meshctl(
            &["capture", "install", "--netns", &ns.name],
            mesh.dir.path(),
        );
        assert!(ok, "capture install: {out}{err}");
    }
    Some(Pods {
        mesh,
        ra,
        rb,
        _ns: (pa, pb),
    })
}

const SIZE: usize = 1536 * 1024;
const PAUSE: Duration = Duration::from_millis(100);
const ROUNDS: usize = 40;

fn client() -> IpAddr {
    CLIENT_IP.parse().unwrap()
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), port)
}

#[test]
fn sidecars_lose_no_response_body_when_the_backend_closes() {
    let Some(p) = pods("r") else {
        return;
    };
    let failures =
        p.ra.block_on(p.ra.spawn(async {
            let mut failures = Vec::new();
            for size in [100, 1024 * 1024] {
                let mut endings: Vec<(String, Ending)> = Vec::new();
                for _ in 0..ROUNDS {
                    for mode in ["cl", "eof", "shut"] {
                        let path = format!("/{mode}/{size}");
                        let e = get_close(client(), vip(80), &path, &body(size)).await;
                        endings.push((format!("HTTP/1.1 {path}"), e));
                    }
                    let e = get_h2(client(), vip(81), size).await;
                    endings.push((format!("HTTP/2 /{size}"), e));
                    let e = get_tcp(client(), vip(82), size).await;
                    endings.push((format!("TCP {size}"), e));
                }
                failures.extend(endings.into_iter().filter(|(_, e)| *e != Ending::Complete));
            }
            failures
        }))
        .unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} streams incomplete, e.g. {:?}",
        failures.len(),
        2 * ROUNDS * 5,
        &failures[..failures.len().min(8)]
    );
}

#[test]
fn killed_server_sidecar_never_truncates_downloads_silently() {
    let Some(mut p) = pods("k") else {
        return;
    };
    let progress = Arc::new(AtomicU64::new(0));
    let spawn_all = |http: bool| {
        (0..25)
            .map(|_| {
                let progress = progress.clone();
                p.ra.spawn(async move {
                    let get = async {
                        if http {
                            http_download(client(), vip(83), SIZE, progress).await
                        } else {
                            download(client(), vip(90), SIZE, progress).await
                        }
                    };
                    tokio::time::timeout(Duration::from_secs(30), get)
                        .await
                        .unwrap_or(Ending::Error(std::io::ErrorKind::TimedOut))
                })
            })
            .collect::<Vec<_>>()
    };
    let (tcp, http) = (spawn_all(false), spawn_all(true));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(kill_when(
        &mut p.mesh,
        "b",
        &progress,
        (50 * SIZE / 4) as u64,
    ));
    let join = |tasks: Vec<tokio::task::JoinHandle<Ending>>| {
        tasks
            .into_iter()
            .map(|t| p.ra.block_on(t).unwrap())
            .collect::<Vec<_>>()
    };
    let (tcp, http) = (join(tcp), join(http));
    eprintln!("HTTP: {:?}", Tally::of(&http));
    check_cut("TCP via sidecars, server sidecar killed", &tcp);
    check_cut("HTTP via sidecars, server sidecar killed", &http);
}

#[test]
fn killed_client_sidecar_never_truncates_uploads_silently() {
    let Some(mut p) = pods("u") else {
        return;
    };
    let progress = Arc::new(AtomicU64::new(0));
    let pr = progress.clone();
    let mut rx =
        p.rb.block_on(
            p.rb.spawn(async move { upload_sink("0.0.0.0:9001".parse().unwrap(), SIZE, pr).await }),
        )
        .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            p.ra.spawn(async {
                if let Ok(mut s) = connect_from(client(), vip(91)).await {
                    let _ = upload(&mut s, SIZE, PAUSE).await;
                }
            })
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(kill_when(
        &mut p.mesh,
        "a",
        &progress,
        (50 * SIZE / 4) as u64,
    ));
    for t in tasks {
        p.ra.block_on(t).unwrap();
    }
    let endings = p.rb.block_on(async {
        let mut endings = Vec::new();
        while endings.len() < 50 {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(e)) => endings.push(e),
                _ => break,
            }
        }
        endings
    });
    assert_eq!(endings.len(), 50, "every upload ended at the app");
    check_cut("uploads via sidecars, client sidecar killed", &endings);
}
