//! Shared by `fault_mirror.rs` and `upgrade.rs`: a waypoint mesh on `127.211.<c>.x`, test
//! backends (plain, slow, always-101, WebSocket echo) and raw HTTP/1.1 helpers.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Addresses of one test's mesh: `127.211.<c>.x`.
#[derive(Clone, Copy)]
pub(crate) struct Net(pub(crate) u8);

impl Net {
    pub(crate) fn ip(self, host: u8) -> String {
        format!("127.211.{}.{host}", self.0)
    }
    pub(crate) fn addr(self, host: u8, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip(host)).parse().unwrap()
    }
    /// The web service's VIP.
    pub(crate) fn vip(self) -> SocketAddr {
        self.addr(41, 80)
    }
    /// Node a (client), node b (web at .21, shadow at .22), waypoint `ns/wp` for both
    /// services, then `extra` documents.
    pub(crate) fn config(self, extra: &str) -> String {
        let ip = |h| self.ip(h);
        format!(
            r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: {a}, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: {b}, workloads: [ns/web, ns/shadow]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: {client}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: ns}}
spec: {{address: {web}, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: shadow, namespace: ns}}
spec: {{address: {shadow}, serviceAccount: shadow, labels: {{app: shadow}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [web.ns.svc]
  addresses: [{vip_web}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shadow, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [shadow.ns.svc]
  addresses: [{vip_shadow}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: shadow}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: {wp}}}]
{extra}"#,
            a = ip(1),
            b = ip(2),
            wp = ip(3),
            client = ip(10),
            web = ip(21),
            shadow = ip(22),
            vip_web = ip(41),
            vip_shadow = ip(42),
        )
    }

    /// Starts the mesh with the backends already listening.
    pub(crate) async fn start(self, extra: &str) -> InprocMesh {
        let mut mesh = InprocMesh::new(&self.config(extra));
        mesh.ztunnel("b", &[]).await;
        mesh.waypoint("wp", "ns/wp", &[]).await;
        mesh.ztunnel("a", &[]).await;
        mesh
    }

    pub(crate) async fn conn(self) -> BufReader<TcpStream> {
        let client = self.ip(10).parse().unwrap();
        BufReader::new(connect_from(client, self.vip()).await.unwrap())
    }
}

/// How a test backend answers.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// 200 `ok <path> upgrade=<Upgrade header or ->`; a WebSocket upgrade gets 101 and an
    /// echo of every byte after it.
    Http,
    /// Reads the request, never answers.
    Slow,
    /// 101 to every request, upgrade or not, then echoes.
    Always101,
}

/// What a backend received, one line per request: `<host> <path> upgrade=<...>`, then
/// ` body=<length>` when the request had a body.
pub(crate) type Seen = Arc<Mutex<Vec<String>>>;

pub(crate) async fn backend(addr: SocketAddr, mode: Mode) -> Seen {
    let seen: Seen = Arc::default();
    let l = TcpListener::bind(addr).await.unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(BufReader::new(s), mode, s2.clone()));
        }
    });
    seen
}

pub(crate) async fn serve(mut s: BufReader<TcpStream>, mode: Mode, seen: Seen) {
    loop {
        let Some((first, headers)) = read_head(&mut s).await else {
            return;
        };
        let h = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let len: usize = h("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
        let upgrade = h("upgrade").unwrap_or_else(|| "-".into());
        let mut line = format!("{} {path} upgrade={upgrade}", h("host").unwrap_or_default());
        if !body.is_empty() {
            line.push_str(&format!(" body={}", body.len()));
        }
        seen.lock().unwrap().push(line);
        if mode == Mode::Slow {
            std::future::pending::<()>().await;
        }
        if mode == Mode::Always101 || upgrade.eq_ignore_ascii_case("websocket") {
            let head = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
            if s.get_mut().write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let (mut r, mut w) = s.into_inner().into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        let body = format!("ok {path} upgrade={upgrade}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.get_mut().write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A request or response head: its first line and headers.
pub(crate) async fn read_head(
    s: &mut BufReader<TcpStream>,
) -> Option<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    if s.read_line(&mut first).await.ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some((first.trim_end().to_owned(), headers));
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
}

/// Sends `head` (and a blank line) and reads the response: status, headers, body.
pub(crate) async fn exchange_http(
    s: &mut BufReader<TcpStream>,
    head: &str,
) -> (u16, Vec<(String, String)>, String) {
    s.get_mut()
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (first, headers) = tokio::time::timeout(Duration::from_secs(10), read_head(s))
        .await
        .expect("response in time")
        .expect("a response");
    let status = first.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The waypoint's metrics once `f` holds of them (5 s), else the last ones.
pub(crate) async fn metrics_until(mesh: &InprocMesh, f: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..250 {
        text = mesh.proxy("wp").metrics_text();
        if f(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    text
}

pub(crate) const HOST: &str = "Host: web.ns.svc";

pub(crate) fn vs(http: &str) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: ns}}
spec:
  hosts: [web.ns.svc]
  http:
{http}"#
    )
}
