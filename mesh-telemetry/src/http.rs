//! A small HTTP/1.1 server for the admin (15000), metrics (15020) and readiness (15021)
//! endpoints. Routes are exact paths; handlers are synchronous and cheap (they render state
//! that is already in memory). Request bodies are capped at 64 KiB.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

const MAX_BODY: usize = 64 * 1024;

/// A request as handlers see it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Query parameters, percent-decoded, in order (`?reset` gives `("reset", "")`).
    pub query: Vec<(String, String)>,
    /// Body (at most 64 KiB).
    pub body: Bytes,
    /// Request headers.
    pub headers: http::HeaderMap,
    /// The client's TCP address (`None` when not served from a socket, e.g. in tests).
    pub peer: Option<SocketAddr>,
    /// Our address the client connected to.
    pub local: Option<SocketAddr>,
}

impl Request {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Bytes,
}

impl Response {
    /// `text/plain` with `status`.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(body.into()),
        }
    }

    /// 200 `application/json`, pretty-printed.
    pub fn json(value: &impl serde::Serialize) -> Response {
        match serde_json::to_vec_pretty(value) {
            Ok(mut v) => {
                v.push(b'\n');
                Response {
                    status: StatusCode::OK,
                    content_type: "application/json",
                    body: Bytes::from(v),
                }
            }
            Err(e) => Response::text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// A route handler.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Decides, from the client's address and ours, whether a connection may change state (see
/// [`Router::refuse_changes_from`]): `true` refuses.
pub type PeerCheck = Arc<dyn Fn(SocketAddr, SocketAddr) -> bool + Send + Sync>;

/// Exact-path routes.
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<String, Handler>,
    local_only: bool,
    refuse_changes: Option<PeerCheck>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut paths: Vec<_> = self.routes.keys().collect();
        paths.sort();
        f.debug_struct("Router").field("paths", &paths).finish()
    }
}

impl Router {
    /// No routes.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds `path` (replacing an earlier handler for it).
    pub fn route(
        mut self,
        path: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Router {
        self.routes.insert(path.to_owned(), Arc::new(handler));
        self
    }

    /// Adds every route of `other`.
    pub fn merge(mut self, other: Router) -> Router {
        self.routes.extend(other.routes);
        self.local_only |= other.local_only;
        self.refuse_changes = self.refuse_changes.or(other.refuse_changes);
        self
    }

    /// Answers only requests a local tool makes: 403 for any request with an `Origin` header
    /// (a browser page, which could otherwise POST cross-site) or whose `Host` is not a
    /// loopback name (DNS rebinding). For endpoints that change state or expose config.
    pub fn local_only(mut self) -> Router {
        self.local_only = true;
        self
    }

    /// Refuses (403) every request other than `GET`/`HEAD` (those that change state, such as
    /// `POST /quitquitquit` or `/logging`) from a connection `check` flags, and from one whose
    /// addresses are unknown. A proxy passes a check that recognises its own outbound sockets,
    /// so a workload cannot reach these endpoints through the data path.
    pub fn refuse_changes_from(mut self, check: PeerCheck) -> Router {
        self.refuse_changes = Some(check);
        self
    }

    /// The sorted paths (for an index page).
    pub fn paths(&self) -> Vec<String> {
        let mut p: Vec<String> = self.routes.keys().cloned().collect();
        p.sort();
        p
    }

    /// Handles `req`: 404 for an unknown path.
    pub fn handle(&self, req: &Request) -> Response {
        if self.local_only && !is_local_request(req) {
            return Response::text(
                StatusCode::FORBIDDEN,
                "admin requests must come from a local tool (no Origin, loopback Host)\n",
            );
        }
        if let Some(check) = &self.refuse_changes
            && !matches!(req.method, Method::GET | Method::HEAD)
            && match (req.peer, req.local) {
                (Some(peer), Some(local)) => check(peer, local),
                _ => true,
            }
        {
            return Response::text(
                StatusCode::FORBIDDEN,
                "state-changing admin requests are refused on this connection\n",
            );
        }
        match self.routes.get(&req.path) {
            Some(h) => h(req),
            None => Response::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn is_local_request(req: &Request) -> bool {
    if req.headers.contains_key(http::header::ORIGIN) {
        return false;
    }
    let Some(host) = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        // HTTP/1.0 without Host: not a browser.
        return true;
    };
    // Strip the port: `[::1]:15000`, `127.0.0.1:15000`, `localhost`.
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        q.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(p), String::new()),
            })
            .collect()
    })
    .unwrap_or_default()
}

async fn handle(
    router: Arc<Router>,
    req: http::Request<Incoming>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(to_hyper(Response::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            )));
        }
    };
    let req = Request {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parse_query(parts.uri.query()),
        body,
        headers: parts.headers,
        peer: Some(peer),
        local,
    };
    Ok(to_hyper(router.handle(&req)))
}

fn to_hyper(r: Response) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(r.body));
    *resp.status_mut() = r.status;
    if let Ok(v) = header::HeaderValue::from_str(r.content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// How long a stopping server lets its open connections finish the response in flight (the
/// `200 OK` of `POST /quitquitquit`, a metrics scrape) before it drops them.
const GRACE: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `cancel`. Each connection is limited to 30 s of
/// idleness reading headers. Once cancelled, stops accepting, lets each open connection
/// finish its response in flight (graceful HTTP/1 shutdown, at most 2 s), then returns.
pub async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) {
    let router = Arc::new(router);
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        conns.spawn(serve_conn(tcp, peer, router.clone(), cancel.clone()));
    }
    conns.close();
    let _ = tokio::time::timeout(GRACE, conns.wait()).await;
}

async fn serve_conn(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Arc<Router>,
    cancel: CancellationToken,
) {
    let local = tcp.local_addr().ok();
    let svc = hyper::service::service_fn(move |req| handle(router.clone(), req, peer, local));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(tcp), svc);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = r {
        debug!(%peer, error = %e, "admin connection error");
    }
}

/// Binds `addr` and serves `router` on it until `cancel`; returns the bound address.
pub async fn bind_and_serve(
    addr: SocketAddr,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, router, cancel));
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_only_refuses_browsers_and_foreign_hosts() {
        let r = Router::new()
            .route("/x", |_req: &Request| Response::text(StatusCode::OK, "ok"))
            .local_only();
        let req = |headers: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in headers {
                h.insert(
                    http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            r.handle(&Request {
                method: Method::POST,
                path: "/x".into(),
                query: vec![],
                body: Bytes::new(),
                headers: h,
                peer: None,
                local: None,
            })
            .status
        };
        assert_eq!(req(&[("host", "127.0.0.1:15000")]), StatusCode::OK);
        assert_eq!(req(&[("host", "[::1]:15000")]), StatusCode::OK);
        assert_eq!(req(&[("host", "localhost:15000")]), StatusCode::OK);
        assert_eq!(req(&[]), StatusCode::OK);
        assert_eq!(
            req(&[("host", "evil.example:15000")]),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            req(&[
                ("host", "127.0.0.1:15000"),
                ("origin", "http://evil.example")
            ]),
            StatusCode::FORBIDDEN
        );
    }

    /// A workload that reaches admin through the proxy's own outbound socket cannot stop the
    /// proxy: state-changing methods are refused on a connection the check flags, and on one
    /// whose addresses are unknown; reads still work.
    #[test]
    fn quitquitquit_through_the_data_path_is_refused() {
        let own: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let r = Router::new()
            .route("/quitquitquit", |_req: &Request| {
                Response::text(StatusCode::OK, "bye")
            })
            .refuse_changes_from(Arc::new(move |peer, _local| peer == own));
        let local: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let req = |method: Method, peer: Option<SocketAddr>| {
            r.handle(&Request {
                method,
                path: "/quitquitquit".into(),
                query: vec![],
                body: Bytes::new(),
                headers: http::HeaderMap::new(),
                peer,
                local: Some(local),
            })
            .status
        };
        assert_eq!(req(Method::POST, Some(own)), StatusCode::FORBIDDEN);
        assert_eq!(req(Method::POST, None), StatusCode::FORBIDDEN);
        let tool: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(req(Method::POST, Some(tool)), StatusCode::OK);
        assert_eq!(req(Method::GET, Some(own)), StatusCode::OK);
    }

    /// `POST /quitquitquit` stops the server that answers it: the answer still reaches the
    /// caller in full, even one too large for the socket buffers and read slowly (before,
    /// the stopping server dropped the connection mid-response and the caller got nothing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_stops_the_server_gets_its_whole_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let big = "x".repeat(4 << 20);
        let r = Router::new().route("/quitquitquit", move |_req: &Request| {
            stop.cancel();
            Response::text(StatusCode::OK, big.clone())
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(serve(l, r, cancel));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /quitquitquit HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200"), "{} bytes", got.len());
        assert!(got.len() > 4 << 20, "{} bytes", got.len());
        server.await.unwrap();
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse_query(Some("level=access%3Ddebug,info&reset&x=a+b")),
            vec![
                ("level".to_owned(), "access=debug,info".to_owned()),
                ("reset".to_owned(), String::new()),
                ("x".to_owned(), "a b".to_owned()),
            ]
        );
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%zz"), "%zz");
    }
}
