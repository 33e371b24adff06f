//! HTTP/1.1 and HTTP/2 proxying, per request: at a waypoint (JWT, L7 policy, routing) and on a
//! sidecar's captured outbound (routing; policy is the server side's). Each request is routed
//! on its own (`VirtualService` route tables from `mesh-l7`): a direct response or redirect is
//! answered here, a forwarded request goes to an endpoint of the chosen service over HBONE
//! (with the waypoint's or the client workload's identity), its body streamed, never buffered.
//! Upstream HTTP connections are reused per endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_hbone::headers::ConnectHeaders;
use tracing::{debug, warn};

use super::Ctx;
use crate::config::{ServicePort, Waypoint};

type Body = BoxBody<Bytes, hyper::Error>;

/// A request body that counts its bytes as they pass.
pub(crate) struct CountedBody {
    inner: Incoming,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.bytes
                .fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts its bytes and records the request (metrics, access log) when
/// it ends or is dropped.
struct RecordedBody {
    inner: Body,
    bytes: u64,
    done: Option<Done>,
}

impl RecordedBody {
    fn trailers(&mut self, t: &http::HeaderMap) {
        if let (Some(d), Some(v)) = (
            self.done.as_mut(),
            t.get("grpc-status").and_then(|v| v.to_str().ok()),
        ) {
            d.grpc_status = v.to_owned();
        }
    }
}

/// What is recorded when a response ends.
struct Done {
    stream: Stream,
    start: tokio::time::Instant,
    method: http::Method,
    authority: String,
    path: String,
    status: u16,
    grpc_status: String,
    route: Option<String>,
    upstream: Option<SocketAddr>,
    dst: Option<(Arc<crate::config::Workload>, Option<Arc<ServicePort>>)>,
    flags: &'static str,
    trace_id: Option<String>,
    request_id: Option<String>,
    audit: Option<String>,
    request_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Done {
    fn finish(self, response_bytes: u64) {
        let s = &self.stream;
        let t = &s.ctx.telemetry;
        let elapsed = self.start.elapsed();
        let request_bytes = self
            .request_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let unknown = mesh_telemetry::metrics::PeerLabels::unknown();
        let (dst, service) = match &self.dst {
            Some((w, sp)) => (&w.telemetry, sp.as_ref().map(|sp| &sp.service.telemetry)),
            None => (&unknown, None),
        };
        let mut standard = super::observe::labels(
            s.side.reporter(),
            &s.src_labels,
            dst,
            service.or(s.service.as_ref().map(|sp| &sp.service.telemetry)),
            s.side.security(),
        );
        standard.request_protocol =
            mesh_telemetry::metrics::Str::from(if self.grpc_status.is_empty() {
                "http"
            } else {
                "grpc"
            });
        let labels = mesh_telemetry::requests::RequestLabels {
            standard,
            response_code: mesh_telemetry::metrics::Str::from(self.status.to_string().as_str()),
            grpc_response_status: mesh_telemetry::metrics::Str::from(self.grpc_status.as_str()),
        };
        t.requests.record(
            &labels,
            mesh_telemetry::requests::Finished {
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                request_bytes,
                response_bytes,
            },
        );
        if t.access.enabled() {
            let host = self
                .dst
                .as_ref()
                .and_then(|(_, sp)| sp.as_ref())
                .and_then(|sp| sp.service.hosts.first().map(String::as_str));
            t.access.log(&mesh_telemetry::access::RequestRecord {
                timestamp: mesh_telemetry::access::now_rfc3339(),
                reporter: match s.side {
                    Side::Waypoint(_) => "waypoint",
                    Side::Outbound(_) => "source",
                    Side::Inbound { .. } => "destination",
                },
                src_addr: s.client,
                src_identity: s.src_identity.as_ref().map(|i| i.as_str()),
                method: self.method.as_str(),
                authority: &self.authority,
                path: &self.path,
                protocol: if s.h2 { "HTTP/2" } else { "HTTP/1.1" },
                status: self.status,
                bytes_received: request_bytes,
                bytes_sent: response_bytes,
                duration_ms: elapsed.as_millis() as u64,
                route: self.route.as_deref(),
                upstream: self.upstream,
                dst_service: host,
                response_flags: self.flags,
                trace_id: self.trace_id.as_deref(),
                request_id: self.request_id.as_deref(),
                audit_policy: self.audit.as_deref(),
            });
        }
    }
}

impl Drop for RecordedBody {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            d.finish(self.bytes);
        }
    }
}

impl http_body::Body for RecordedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            std::task::Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref() {
                    let t = t.clone();
                    self.trailers(&t);
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(d) = self.done.take() {
                    d.finish(self.bytes);
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|n: Infallible| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Where the HTTP proxying happens.
#[derive(Clone)]
pub(crate) enum Side {
    /// At a waypoint: JWT and L7 policy of its targets, reporter `waypoint`, upstream
    /// tunnels with the waypoint's identity.
    Waypoint(Arc<Waypoint>),
    /// On a sidecar's captured outbound: routing only, reporter `source`, upstream tunnels
    /// with the client workload's identity.
    Outbound(Arc<crate::config::Workload>),
    /// On a sidecar's inbound (HBONE or captured plaintext): the workload's JWT and policies
    /// (selector / namespace / mesh), per request; forwarded to the app on `port`.
    Inbound {
        /// The local workload.
        workload: Arc<crate::config::Workload>,
        /// The app's port.
        port: u16,
        /// Arrived over HBONE (else captured plaintext).
        mtls: bool,
    },
}

impl Side {
    fn identity(&self) -> &mesh_identity::SpiffeId {
        match self {
            Side::Waypoint(w) => &w.identity,
            Side::Outbound(w) | Side::Inbound { workload: w, .. } => &w.identity,
        }
    }

    fn reporter(&self) -> mesh_telemetry::metrics::Reporter {
        match self {
            Side::Waypoint(_) => mesh_telemetry::metrics::Reporter::Waypoint,
            Side::Outbound(_) => mesh_telemetry::metrics::Reporter::Source,
            Side::Inbound { .. } => mesh_telemetry::metrics::Reporter::Destination,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Side::Waypoint(_) => "waypoint",
            Side::Outbound(_) => "outbound",
            Side::Inbound { .. } => "inbound",
        }
    }

    fn security(&self) -> mesh_telemetry::metrics::SecurityPolicy {
        use mesh_telemetry::metrics::SecurityPolicy;
        match self {
            // As Istio's client sidecars report it.
            Side::Outbound(_) | Side::Inbound { mtls: false, .. } => SecurityPolicy::Unknown,
            Side::Waypoint(_) | Side::Inbound { mtls: true, .. } => SecurityPolicy::MutualTls,
        }
    }
}

/// What the proxy knows of the stream a request arrived on.
#[derive(Clone)]
pub(crate) struct Stream {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) side: Side,
    /// The service the client addressed (none for a sidecar's inbound to a bare port).
    pub(crate) service: Option<Arc<ServicePort>>,
    /// The original client address (from `Forwarded`).
    pub(crate) client: Option<SocketAddr>,
    /// The client's identity (the source ztunnel's peer).
    pub(crate) src_identity: Option<mesh_identity::SpiffeId>,
    /// The client's metric labels.
    pub(crate) src_labels: mesh_telemetry::metrics::PeerLabels,
    /// HTTP/2 (prior knowledge) on both legs, for `HTTP2` and `GRPC` ports; else HTTP/1.1.
    pub(crate) h2: bool,
}

/// Serves HTTP/1.1 requests on one tunnelled stream until it ends.
pub(crate) async fn serve<IO>(io: IO, stream: Stream)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let h2 = stream.h2;
    let ctx = stream.ctx.clone();
    let svc = hyper::service::service_fn(move |req| {
        let stream = stream.clone();
        async move { Ok::<_, Infallible>(handle(&stream, req).await) }
    });
    let limits = ctx.cfg.l7;
    let result = if h2 {
        super::hygiene::h2_server()
            .serve_connection(TokioIo::new(io), svc)
            .await
    } else {
        super::hygiene::h1_server(&limits)
            .serve_connection(TokioIo::new(io), svc)
            .await
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP stream ended with error");
    }
}

use super::hygiene::strip_hop_by_hop;
use super::upstreams::{SendError, Sender, send_pooled};

/// What routing found out, for the request's metrics and log line.
#[derive(Default)]
struct Meta {
    audit: Option<String>,
    /// The path as logged, when it differs (a token in the query redacted).
    logged_path: Option<String>,
    route: Option<String>,
    upstream: Option<SocketAddr>,
    dst: Option<(Arc<crate::config::Workload>, Option<Arc<ServicePort>>)>,
    flags: &'static str,
}

async fn handle(s: &Stream, mut req: Request<Incoming>) -> Response<Body> {
    let start = tokio::time::Instant::now();
    // Method case, one authority, no mesh-only headers: before anything reads the request.
    let checked = super::hygiene::check_request(&mut req);
    // Trace context: a request id and a W3C traceparent are generated when absent, and sent
    // on (B3 and tracestate headers pass through untouched).
    if !req.headers().contains_key("x-request-id") {
        req.headers_mut()
            .insert("x-request-id", mesh_hbone::headers::new_request_id());
    }
    let tp = mesh_hbone::headers::TRACEPARENT;
    let valid = req
        .headers()
        .get(&tp)
        .and_then(|v| v.to_str().ok())
        .is_some_and(mesh_hbone::headers::valid_traceparent);
    if !valid {
        req.headers_mut()
            .insert(tp.clone(), mesh_hbone::headers::new_traceparent());
    }
    let trace_id = req
        .headers()
        .get(&tp)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .map(str::to_owned);
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = checked.as_ref().cloned().unwrap_or_default();
    let request_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(
        parts,
        CountedBody {
            inner: body,
            bytes: request_bytes.clone(),
        },
    );
    let mut meta = Meta {
        flags: "-",
        ..Meta::default()
    };
    let resp = match checked {
        Err((status, body)) => {
            meta.flags = "DPE";
            text(status, body)
        }
        Ok(_) => authenticate_and_route(s, req, &path, &authority, &mut meta).await,
    };
    finish(
        s,
        resp,
        start,
        method,
        authority,
        path,
        trace_id,
        request_id,
        request_bytes,
        meta,
    )
}

/// JWT authentication, authorization, then routing, of a request that passed the checks.
async fn authenticate_and_route(
    s: &Stream,
    mut req: Request<CountedBody>,
    path: &str,
    authority: &str,
    meta: &mut Meta,
) -> Response<Body> {
    match authenticate(s, &mut req, authority, meta).await {
        // Refused by JWT authentication (401).
        Err(resp) => resp,
        Ok(auth) => match authorize(s, &req, path, authority, auth.as_ref(), meta) {
            Ok(normalized) => {
                // The upstream gets the path that was evaluated, in origin form (the
                // authority it goes to is the `Host` that was evaluated).
                if (normalized != path || req.uri().authority().is_some())
                    && let Ok(uri) = normalized.parse()
                {
                    *req.uri_mut() = uri;
                }
                route_request(s, req, &normalized, authority, meta).await
            }
            Err((status, body)) => text(status, body),
        },
    }
}

/// Wraps the response so the request is recorded (metrics, access log) when it ends.
#[allow(clippy::too_many_arguments)]
fn finish(
    s: &Stream,
    resp: Response<Body>,
    start: tokio::time::Instant,
    method: http::Method,
    authority: String,
    path: String,
    trace_id: Option<String>,
    request_id: Option<String>,
    request_bytes: Arc<std::sync::atomic::AtomicU64>,
    meta: Meta,
) -> Response<Body> {
    let path = meta.logged_path.unwrap_or(path);
    let status = resp.status().as_u16();
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let done = Done {
        stream: s.clone(),
        start,
        method,
        authority,
        path,
        status,
        grpc_status,
        route: meta.route,
        upstream: meta.upstream,
        dst: meta.dst,
        flags: meta.flags,
        trace_id,
        request_id,
        audit: meta.audit,
        request_bytes,
    };
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        RecordedBody {
            inner: body,
            bytes: 0,
            done: Some(done),
        }
        .boxed(),
    )
}

/// JWT authentication by the `RequestAuthentication`s that target the addressed Service or
/// this waypoint's Gateway: no token passes (without a principal), an invalid one gets 401.
/// Keys missing from the cache (not fetched yet, or rotated at the issuer) are refetched
/// once before the request is refused.
async fn authenticate(
    s: &Stream,
    req: &mut Request<CountedBody>,
    authority: &str,
    meta: &mut Meta,
) -> Result<Option<mesh_authz::jwt::RequestAuth>, Response<Body>> {
    use mesh_authz::jwt::{Authenticator, TokenLocation};
    // JWT is the server side's business: a waypoint's, or a sidecar's on its inbound.
    let authn = {
        let state = s.ctx.state.load();
        match &s.side {
            Side::Outbound(_) => return Ok(None),
            Side::Inbound { workload, .. } => match state.sidecar_authn.get(&workload.key()) {
                Some(a) => a.clone(),
                None => return Ok(None),
            },
            Side::Waypoint(waypoint) => {
                if state.waypoint_authn.is_empty() {
                    return Ok(None);
                }
                let get = |k: &str| state.waypoint_authn.get(k).cloned();
                let svc = s
                    .service
                    .as_ref()
                    .and_then(|sp| get(&sp.service.target_key));
                match (svc, get(&waypoint.target_key)) {
                    (None, None) => return Ok(None),
                    (Some(a), None) | (None, Some(a)) => a,
                    (Some(a), Some(b)) => Arc::new(Authenticator::new(
                        a.rules().iter().chain(b.rules()).cloned().collect(),
                    )),
                }
            }
        }
    };
    // Tokens in the query are not logged.
    if let Some(q) = req.uri().query() {
        let params: Vec<&str> = authn
            .locations()
            .iter()
            .filter_map(|l| match l {
                TokenLocation::Param(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        if !params.is_empty() {
            let redacted: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if params.contains(&k) => format!("{k}=<redacted>"),
                    _ => kv.to_owned(),
                })
                .collect();
            meta.logged_path = Some(format!("{}?{}", req.uri().path(), redacted.join("&")));
        }
    }
    let found = authn.find_token(req.headers(), req.uri().query());
    let result = match found {
        Ok(None) => {
            authn.rewrite_headers(req.headers_mut(), None);
            return Ok(None);
        }
        Ok(Some(found)) => {
            let cache = &s.ctx.jwks;
            let mut r = authn.verify(&found, &|src| cache.get(src));
            if let Err(e) = &r
                && let Some(src) = e.refetch()
            {
                let src = src.clone();
                cache.refetch(&src).await;
                r = authn.verify(&found, &|src| cache.get(src));
            }
            r.map(|auth| (found, auth))
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((found, auth)) => {
            authn.rewrite_headers(req.headers_mut(), Some((&found, &auth)));
            Ok(Some(auth))
        }
        Err(e) => {
            warn!(
                target: "access",
                direction = s.side.name(),
                src.identity = s.src_identity.as_ref().map_or("-", |i| i.as_str()),
                method = %req.method(),
                path = %req.uri().path(),
                reason = %e,
                "request refused by JWT authentication: 401"
            );
            let mut resp = text(StatusCode::UNAUTHORIZED, e.to_string());
            let realm = format!(
                "Bearer realm=\"http://{authority}{}\", error=\"invalid_token\"",
                req.uri().path()
            );
            if let Ok(v) = HeaderValue::from_str(&realm) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            Err(resp)
        }
    }
}

/// Normalizes the path and applies the waypoint's L7 authorization policies (those whose
/// `targetRefs` name the addressed Service or this waypoint's Gateway). Returns the
/// normalized path with its query, or the response refusing the request.
fn authorize(
    s: &Stream,
    req: &Request<CountedBody>,
    path: &str,
    authority: &str,
    auth: Option<&mesh_authz::jwt::RequestAuth>,
    meta: &mut Meta,
) -> Result<String, (StatusCode, &'static str)> {
    // Client side (a sidecar's outbound): no policy here, and the path goes on as sent.
    if let Side::Outbound(_) = &s.side {
        return Ok(path.to_owned());
    }
    let state = s.ctx.state.load();
    let (raw, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let Some(normalized) = mesh_authz::http::normalize_path(raw, state.path_normalization) else {
        meta.flags = "DPE";
        return Err((StatusCode::BAD_REQUEST, "invalid request path\n"));
    };
    let mut policies: Vec<&mesh_authz::Policy> = Vec::new();
    // The connection facts: where the request went (the service VIP at a waypoint, the
    // workload at a sidecar) and who sent it.
    let (self_ip, destination_ip, destination_port) = match &s.side {
        Side::Waypoint(waypoint) => {
            policies = super::waypoint::policies_for(&state, waypoint, s.service.as_deref());
            let sp = s.service.as_ref();
            (
                waypoint.address,
                sp.and_then(|sp| sp.service.vips.first().copied())
                    .unwrap_or(waypoint.address),
                sp.map_or(0, |sp| sp.port),
            )
        }
        Side::Inbound {
            workload,
            port,
            mtls,
        } => {
            // A keep-alive plaintext connection outlives a switch to STRICT: every request
            // checks it again.
            if !*mtls && state.mtls.strict(&workload.key(), *port) {
                meta.flags = "RBAC";
                return Err((StatusCode::FORBIDDEN, "RBAC: access denied"));
            }
            policies.extend(
                state
                    .authz
                    .policies_of(&workload.key())
                    .iter()
                    .map(|p| &**p),
            );
            (workload.address, workload.address, *port)
        }
        Side::Outbound(_) => unreachable!("returned above"),
    };
    if !policies.is_empty() {
        // Captured plaintext has no peer identity.
        let principal = s
            .src_identity
            .as_ref()
            .map(|i| i.as_str().strip_prefix("spiffe://").unwrap_or(i.as_str()));
        let source_ip = s.client.map_or(self_ip, |c| c.ip());
        let host = authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        });
        let headers = req.headers();
        // A repeated header is matched joined (and per value where that denies).
        let header = |n: &str| mesh_authz::headers::header_value(headers, n);
        let facts = mesh_authz::http::HttpFacts {
            conn: mesh_authz::Connection {
                source_ip,
                // `remote.ip`: the original client, as the peer proxy asserts it.
                remote_ip: Some(source_ip),
                source_principal: principal,
                source_namespace: s.src_identity.as_ref().map(|i| i.namespace()),
                destination_ip,
                destination_port,
            },
            host,
            method: req.method().as_str(),
            path: &normalized,
            header: &header,
            auth,
        };
        // Istio AUDIT: marks the request for the log, never changes the decision.
        meta.audit = mesh_authz::http::audited(&policies, &facts)
            .map(|p| format!("{}/{}", p.namespace, p.name));
        let decision = mesh_authz::http::evaluate_http(&policies, &facts);
        if !decision.is_allowed() {
            let why = match decision {
                mesh_authz::http::HttpDecision::DeniedBy(p) => {
                    format!("denied by {}/{}", p.namespace, p.name)
                }
                _ => "no ALLOW policy matched".to_owned(),
            };
            warn!(
                target: "access",
                direction = s.side.name(),
                src.identity = s.src_identity.as_ref().map_or("-", |i| i.as_str()),
                method = %req.method(),
                path = %normalized,
                reason = %why,
                "request refused by authorization policy: 403"
            );
            meta.flags = "RBAC";
            return Err((StatusCode::FORBIDDEN, "RBAC: access denied"));
        }
    }
    Ok(match query {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    })
}

async fn route_request(
    s: &Stream,
    mut req: Request<CountedBody>,
    path: &str,
    authority: &str,
    meta: &mut Meta,
) -> Response<Body> {
    let sp = match (&s.side, &s.service) {
        (Side::Inbound { workload, port, .. }, _) => {
            return Box::pin(forward_local(s, workload, *port, req, authority, meta)).await;
        }
        (_, Some(sp)) => sp.clone(),
        (_, None) => {
            meta.flags = "NR";
            return text(StatusCode::SERVICE_UNAVAILABLE, "no such service\n");
        }
    };
    let state = s.ctx.state.load_full();
    let host = sp.service.hosts.first().cloned().unwrap_or_default();
    let table = state.routes.get(&host).cloned();
    let route = table.as_ref().and_then(|t| {
        t.select(&mesh_l7::RequestFacts {
            method: req.method().as_str(),
            path,
            authority,
            port: sp.port,
            headers: req.headers(),
        })
    });
    meta.route = route.map(|r| r.name.clone());
    // Where to: the route's weighted pick (host, port, subset), or the addressed service.
    let (dest, dest_ops) = match route.map(|r| (&r.action, r)) {
        Some((mesh_l7::Action::DirectResponse { status, body }, _)) => {
            meta.flags = "DR";
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            return text(status, body.clone());
        }
        Some((mesh_l7::Action::Redirect(r), _)) => {
            meta.flags = "DR";
            let location = format!(
                "http://{}{}",
                r.authority.as_deref().unwrap_or(authority),
                r.uri.as_deref().unwrap_or(path)
            );
            let mut resp = text(
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                Bytes::new(),
            );
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return resp;
        }
        Some((mesh_l7::Action::Forward { .. }, r)) => {
            let Some(d) = r.pick(rand::random()) else {
                meta.flags = "NR";
                return text(StatusCode::SERVICE_UNAVAILABLE, "no route destination\n");
            };
            // The destination port, else the addressed port if the host has it, else the
            // host's only port.
            let port = d.port.unwrap_or(sp.port);
            let port = if state.service_by_host(&d.host, port).is_some() {
                Some(port)
            } else {
                state
                    .by_host
                    .get(&d.host)
                    .and_then(|m| m.keys().next().copied())
            };
            let set = port.and_then(|p| {
                let sp = state.service_by_host(&d.host, p).cloned();
                Some((
                    state.endpoint_set(&d.host, p, d.subset.as_deref())?.clone(),
                    sp,
                ))
            });
            (set, Some((r, d)))
        }
        None => (
            state
                .endpoint_set(&host, sp.port, None)
                .map(|set| (set.clone(), Some(sp.clone()))),
            None,
        ),
    };
    let Some((dest, dest_service)) = dest else {
        meta.flags = "NR";
        return text(StatusCode::SERVICE_UNAVAILABLE, "no such service\n");
    };
    drop(state);
    let Some((ep, _in_flight)) = dest.choose() else {
        meta.flags = "UH";
        return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
    };
    let ep = ep.clone();
    meta.dst = Some((ep.workload.clone(), dest_service));
    // The request as the endpoint sees it: rewritten path and authority, header operations,
    // no hop-by-hop headers.
    if let Some((r, d)) = dest_ops {
        if let Some(new) = r.rewrite_path(path)
            && let Ok(uri) = new.parse()
        {
            *req.uri_mut() = uri;
        }
        if let mesh_l7::Action::Forward {
            rewrite: Some(mesh_l7::Rewrite {
                authority: Some(a), ..
            }),
            ..
        } = &r.action
            && let Ok(v) = HeaderValue::from_str(a)
        {
            req.headers_mut().insert(header::HOST, v);
        }
        r.headers.request.apply(req.headers_mut());
        d.headers.request.apply(req.headers_mut());
    }
    strip_hop_by_hop(req.headers_mut());
    let Some(hbone_addr) = ep.workload.hbone_addr else {
        meta.flags = "UF";
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "endpoint outside the mesh\n",
        );
    };
    let addr = SocketAddr::new(ep.workload.address, ep.port);
    meta.upstream = Some(addr);
    if s.h2 {
        // HTTP/2 upstream requests carry the scheme and authority.
        let pq = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let auth = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map_or_else(|| host.clone(), str::to_owned);
        if let Ok(uri) = format!("http://{auth}{pq}").parse() {
            *req.uri_mut() = uri;
        }
        req.headers_mut().remove(header::HOST);
    }
    let identity = &ep.workload.identity;
    let resp = send_pooled(s, addr, req, || {
        connect(s, identity, hbone_addr, addr, &host)
    })
    .await;
    match resp {
        Err(SendError::Connect(e)) => {
            warn!(upstream = %addr, error = %e, side = s.side.name(), "upstream connect failed: 503");
            meta.flags = "UF";
            text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n")
        }
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            if let Some((r, d)) = dest_ops {
                r.headers.response.apply(&mut parts.headers);
                d.headers.response.apply(&mut parts.headers);
            }
            Response::from_parts(parts, body.boxed())
        }
        Err(SendError::Request(e)) => {
            warn!(upstream = %addr, error = %e, side = s.side.name(), "upstream request failed: 503");
            meta.flags = "UF";
            text(StatusCode::SERVICE_UNAVAILABLE, "upstream request failed\n")
        }
    }
}

/// A sidecar's inbound: the request, authorized, goes to the app on the workload's address
/// (from its namespace, marked), over a reused HTTP connection.
async fn forward_local(
    s: &Stream,
    workload: &Arc<crate::config::Workload>,
    port: u16,
    mut req: Request<CountedBody>,
    authority: &str,
    meta: &mut Meta,
) -> Response<Body> {
    let addr = SocketAddr::new(workload.address, port);
    meta.upstream = Some(addr);
    meta.dst = Some((workload.clone(), s.service.clone()));
    strip_hop_by_hop(req.headers_mut());
    if s.h2 {
        // HTTP/2 requests carry the scheme and the authority (the evaluated one); h2 refuses
        // the origin form the path was put in.
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = format!("http://{authority}{pq}").parse() {
            *req.uri_mut() = uri;
        }
    }
    let resp = send_pooled(s, addr, req, || async {
        let tcp = super::connect::connect_app(&s.ctx, workload, addr, s.client.map(|c| c.ip()))
            .await
            .map_err(|e| e.reason)?;
        // Reset, not closed, if the connection fails (a request body cut mid-way).
        handshake(super::reset::ResetOnDrop::new(tcp), s.h2)
            .await
            .map_err(|e| format!("handshake: {e}"))
    })
    .await;
    match resp {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, body.boxed())
        }
        Err(SendError::Connect(reason)) => {
            warn!(upstream = %addr, %reason, "application unreachable: 503");
            meta.flags = "UF";
            text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n")
        }
        Err(SendError::Request(e)) => {
            warn!(upstream = %addr, error = %e, "application request failed: 503");
            meta.flags = "UF";
            text(StatusCode::SERVICE_UNAVAILABLE, "upstream request failed\n")
        }
    }
}

/// A new HTTP/1.1 connection to `addr` through HBONE to its ztunnel, as the waypoint.
async fn connect(
    s: &Stream,
    identity: &mesh_identity::SpiffeId,
    hbone_addr: SocketAddr,
    addr: SocketAddr,
    host: &str,
) -> Result<Sender, String> {
    let headers = ConnectHeaders {
        client: s.client,
        host: Some(host.to_owned()),
        ..ConnectHeaders::default()
    };
    let socket_source = match &s.side {
        Side::Outbound(w) | Side::Inbound { workload: w, .. } => s.ctx.socket_source(w),
        Side::Waypoint(_) => None,
    };
    let tunnel = super::waypoint::open_upstream(
        &s.ctx,
        s.side.identity(),
        identity,
        hbone_addr,
        addr,
        headers,
        socket_source,
    )
    .await
    .map_err(|e| e.reason)?;
    handshake(tunnel, s.h2).await.map_err(|e| e.to_string())
}

/// An HTTP client connection (HTTP/2 prior knowledge or HTTP/1.1) on `io`, its driver spawned.
async fn handshake<IO>(io: IO, h2: bool) -> hyper::Result<Sender>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (sender, conn) = super::hygiene::h2_client()
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "upstream HTTP connection ended");
        }
    });
    Ok(Sender::H1(sender))
}
