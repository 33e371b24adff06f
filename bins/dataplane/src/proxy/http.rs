//! HTTP/1.1 at the waypoint: each request on a tunnelled stream is routed on its own
//! (`VirtualService` route tables from `mesh-l7`): a direct response or redirect is answered
//! here, a forwarded request goes to an endpoint of the chosen service over HBONE (with the
//! waypoint's identity), its body streamed, never buffered. Upstream HTTP connections are
//! reused per endpoint.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mesh_hbone::ConnectRequest;
use mesh_hbone::headers::ConnectHeaders;
use tracing::{debug, warn};

use super::Ctx;
use crate::config::{ServicePort, Waypoint};

type Body = BoxBody<Bytes, hyper::Error>;

/// Idle upstream HTTP/1.1 connections by endpoint address.
#[derive(Default)]
pub(crate) struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Incoming>>>>,
}

impl Upstreams {
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(s) = list.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, s: SendRequest<Incoming>) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        // Bounded: a burst of parallel requests does not leave unbounded idle connections.
        if list.len() < 16 {
            list.push(s);
        }
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

/// What the waypoint knows of the stream a request arrived on.
#[derive(Clone)]
pub(crate) struct Stream {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) waypoint: Arc<Waypoint>,
    /// The service the client addressed.
    pub(crate) service: Arc<ServicePort>,
    /// The original client address (from `Forwarded`).
    pub(crate) client: Option<SocketAddr>,
}

/// Serves HTTP/1.1 requests on one tunnelled stream until it ends.
pub(crate) async fn serve<IO>(io: IO, stream: Stream)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let stream = stream.clone();
        async move { Ok::<_, Infallible>(handle(&stream, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        debug!(error = %e, "waypoint HTTP stream ended with error");
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

async fn handle(s: &Stream, mut req: Request<Incoming>) -> Response<Body> {
    let state = s.ctx.state.load_full();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default();
    let host = s.service.service.hosts.first().cloned().unwrap_or_default();
    let table = state.routes.get(&host).cloned();
    let route = table.as_ref().and_then(|t| {
        t.select(&mesh_l7::RequestFacts {
            method: req.method().as_str(),
            path: &path,
            authority: &authority,
            port: s.service.port,
            headers: req.headers(),
        })
    });
    // Where to: the route's weighted pick (host, port, subset), or the addressed service.
    let (dest, dest_ops) = match route.map(|r| (&r.action, r)) {
        Some((mesh_l7::Action::DirectResponse { status, body }, _)) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            return text(status, body.clone());
        }
        Some((mesh_l7::Action::Redirect(r), _)) => {
            let location = format!(
                "http://{}{}",
                r.authority.as_deref().unwrap_or(&authority),
                r.uri.as_deref().unwrap_or(&path)
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
                return text(StatusCode::SERVICE_UNAVAILABLE, "no route destination\n");
            };
            // The destination port, else the addressed port if the host has it, else the
            // host's only port.
            let port = d.port.unwrap_or(s.service.port);
            let set = state
                .endpoint_set(&d.host, port, d.subset.as_deref())
                .or_else(|| {
                    let p = *state.by_host.get(&d.host)?.keys().next()?;
                    state.endpoint_set(&d.host, p, d.subset.as_deref())
                })
                .cloned();
            (set, Some((r, d)))
        }
        None => (
            state.endpoint_set(&host, s.service.port, None).cloned(),
            None,
        ),
    };
    let Some(dest) = dest else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no such service\n");
    };
    drop(state);
    let Some((ep, _in_flight)) = dest.choose() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
    };
    let ep = ep.clone();
    // The request as the endpoint sees it: rewritten path and authority, header operations,
    // no hop-by-hop headers.
    if let Some((r, d)) = dest_ops {
        if let Some(new) = r.rewrite_path(&path)
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
    for h in HOP_BY_HOP {
        req.headers_mut().remove(*h);
    }
    let Some(hbone_addr) = ep.workload.hbone_addr else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "endpoint outside the mesh\n",
        );
    };
    let addr = SocketAddr::new(ep.workload.address, ep.port);
    let mut sender = match s.ctx.upstreams.take(addr) {
        Some(x) => x,
        None => match connect(s, &ep.workload.identity, hbone_addr, addr, &host).await {
            Ok(x) => x,
            Err(e) => {
                warn!(upstream = %addr, error = %e, "waypoint upstream connect failed: 503");
                return text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n");
            }
        },
    };
    let resp = sender.send_request(req).await;
    s.ctx.upstreams.put(addr, sender);
    match resp {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            if let Some((r, d)) = dest_ops {
                r.headers.response.apply(&mut parts.headers);
                d.headers.response.apply(&mut parts.headers);
            }
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            warn!(upstream = %addr, error = %e, "waypoint upstream request failed: 503");
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
) -> Result<SendRequest<Incoming>, String> {
    let source = s
        .ctx
        .certs
        .store(&s.waypoint.identity)
        .await
        .map_err(|e| e.to_string())?;
    let headers = ConnectHeaders {
        client: s.client,
        host: Some(host.to_owned()),
        ..ConnectHeaders::default()
    };
    let req = ConnectRequest {
        source,
        destination_identity: identity.clone(),
        hbone_addr,
        authority: addr,
        headers: headers.to_header_map(),
    };
    let tunnel = tokio::time::timeout(s.ctx.cfg.connect_timeout * 2, s.ctx.pool.connect(req))
        .await
        .map_err(|_| "HBONE connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "upstream HTTP connection ended");
        }
    });
    Ok(sender)
}
