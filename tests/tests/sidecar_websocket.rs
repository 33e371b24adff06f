//! WebSocket through a sidecar pair (real binaries, root, `netns` group): the client pod's
//! sidecar (outbound L7) and the server pod's (inbound L7) both pass the upgrade, the upgraded
//! bytes then flow both ways; the server's path policy still denies an upgrade to a denied
//! path. Skipped (with a printed reason) without root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const CLIENT_IP: &str = "10.211.0.2";
const SERVER_IP: &str = "10.211.0.3";
const VIP: &str = "10.211.0.100:80";

fn config() -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: {CLIENT_IP}, serviceAccount: client, labels: {{app: client, sidecar.istio.io/inject: "true"}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: ns}}
spec: {{address: {SERVER_IP}, serviceAccount: server, labels: {{app: server, sidecar.istio.io/inject: "true"}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: ns}}
spec:
  hosts: [server.ns.svc]
  addresses: [10.211.0.100]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: ns}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
"#
    )
}

/// Answers a WebSocket upgrade with 101 and echoes every byte after it; anything else 200.
async fn ws_echo(addr: SocketAddr) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut upgrade = false;
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    let l = line.to_ascii_lowercase();
                    upgrade |= l.starts_with("upgrade:") && l.contains("websocket");
                }
                if !upgrade {
                    let _ = s
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nno-upgrade")
                        .await;
                    return;
                }
                let head = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
                if s.get_mut().write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.into_inner().into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// From pod a: a WebSocket upgrade to `path` on the VIP; the status, and the echo of
/// `payload` when upgraded.
async fn upgrade(path: &str, payload: Vec<u8>) -> (u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(VIP.parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let mut s = BufReader::new(tcp);
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: server.ns.svc\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut first = String::new();
    s.read_line(&mut first).await.unwrap();
    let status: u16 = first.split_whitespace().nth(1).unwrap().parse().unwrap();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await.unwrap() == 0 || line == "\r\n" {
            break;
        }
    }
    if status != 101 {
        return (status, Vec::new());
    }
    s.get_mut().write_all(&payload).await.unwrap();
    let mut back = vec![0; payload.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    (status, back)
}

#[test]
fn websocket_through_a_sidecar_pair() {
    let Some(pa) = NetNs::create("hb-wsa") else {
        return;
    };
    let Some(pb) = NetNs::create("hb-wsb") else {
        return;
    };
    link_pods(
        &pa,
        &format!("{CLIENT_IP}/24"),
        &pb,
        &format!("{SERVER_IP}/24"),
    );
    let mut mesh = TestMesh::new(&config());
    let (ra, rb) = (pa.runtime(), pb.runtime());
    rb.block_on(rb.spawn(ws_echo("0.0.0.0:8080".parse().unwrap())))
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
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (status, back) = ra
        .block_on(ra.spawn(upgrade("/chat", payload.clone())))
        .unwrap();
    assert_eq!(status, 101);
    assert!(back == payload, "echo differs");
    // The server sidecar's path policy judges the upgrade request too.
    let (status, _) = ra
        .block_on(ra.spawn(upgrade("/admin/ws", b"x".to_vec())))
        .unwrap();
    assert_eq!(status, 403);
    for ns in [&pa, &pb] {
        let (ok, _, err) = meshctl(&["capture", "remove", "--netns", &ns.name], mesh.dir.path());
        assert!(ok, "capture remove: {err}");
    }
}
