//! The retry tests' mesh (loopback block 127.210.x.x: node a with the client, node b with
//! two web endpoints, a waypoint) and their misbehaving backends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Addresses of one test's mesh: `127.210.<c>.x`.
#[derive(Clone, Copy)]
pub(crate) struct Net(pub(crate) u8);

impl Net {
    pub(crate) fn ip(self, host: u8) -> String {
        format!("127.210.{}.{host}", self.0)
    }
    pub(crate) fn addr(self, host: u8, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip(host)).parse().unwrap()
    }
    /// Node a (client), node b (web endpoints at .21 and .22), waypoint `ns/wp`, then `extra`.
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
spec: {{address: {b}, workloads: [ns/web1, ns/web2]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: {client}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web1, namespace: ns}}
spec: {{address: {web1}, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web2, namespace: ns}}
spec: {{address: {web2}, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [web.ns.svc]
  addresses: [{vip}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
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
            web1 = ip(21),
            web2 = ip(22),
            vip = ip(41),
        )
    }

    pub(crate) async fn start(self, extra: &str) -> InprocMesh {
        self.start_yaml(&self.config(extra)).await
    }

    pub(crate) async fn start_yaml(self, yaml: &str) -> InprocMesh {
        let mut mesh = InprocMesh::new(yaml);
        mesh.ztunnel("b", &[]).await;
        mesh.waypoint("wp", "ns/wp", &[]).await;
        mesh.ztunnel("a", &[]).await;
        mesh
    }

    pub(crate) async fn conn(self) -> BufReader<TcpStream> {
        let client = self.ip(10).parse().unwrap();
        BufReader::new(connect_from(client, self.addr(41, 80)).await.unwrap())
    }
}

/// How a test backend answers every request.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Mode {
    /// This status, body `ok`.
    Status(u16),
    /// Reads the request, then closes the connection without answering.
    Close,
    /// Reads the request, never answers.
    Slow,
}

/// What a backend received, one entry per request.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) path: String,
    pub(crate) body_len: usize,
    pub(crate) attempt: Option<String>,
    pub(crate) retry_on: Option<String>,
}

pub(crate) type Seen = Arc<Mutex<Vec<Got>>>;

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
        seen.lock().unwrap().push(Got {
            path: first.split_whitespace().nth(1).unwrap_or("").to_owned(),
            body_len: len,
            attempt: h("x-envoy-attempt-count"),
            retry_on: h("x-envoy-retry-on"),
        });
        let status = match mode {
            Mode::Close => return,
            Mode::Slow => std::future::pending().await,
            Mode::Status(s) => s,
        };
        let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
        if s.get_mut().write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

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

/// Sends `head` (then a blank line and `body`) and reads the response: status and body.
pub(crate) async fn exchange(
    s: &mut BufReader<TcpStream>,
    head: &str,
    body: &[u8],
) -> (u16, String) {
    let mut msg = format!("{head}\r\n\r\n").into_bytes();
    msg.extend_from_slice(body);
    s.get_mut().write_all(&msg).await.unwrap();
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
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A GET of `path` on a fresh connection.
pub(crate) async fn get(net: Net, path: &str) -> (u16, String) {
    let mut c = net.conn().await;
    exchange(&mut c, &format!("GET {path} HTTP/1.1\r\n{HOST}"), b"").await
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

pub(crate) fn tries(seen: &Seen) -> usize {
    seen.lock().unwrap().len()
}

pub(crate) fn http_route(rules: &str) -> String {
    format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: ns}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web}}]
  rules:
{rules}"#
    )
}

/// An HTTP/2 backend refusing every stream (`REFUSED_STREAM`): the request was not
/// processed, so it is safe to retry anywhere.
pub(crate) async fn refusing_h2_backend(addr: SocketAddr) -> Arc<Mutex<usize>> {
    let count = Arc::new(Mutex::new(0));
    let l = TcpListener::bind(addr).await.unwrap();
    let c2 = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let c3 = c2.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    *c3.lock().unwrap() += 1;
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    count
}
