//! The upstream at the bottom of the stack: a routed request goes to an endpoint of its
//! destination over HBONE (balanced by the destination's endpoint set), with the stream's
//! identity; an unrouted one to the local app. Connections are pooled
//! ([`send_pooled`](crate::proxy::upstreams)); failures answer 503 with Envoy's flags.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use mesh_hbone::headers::ConnectHeaders;
use mesh_l7::layer::{Meta, Target, UpstreamFailure, UpstreamRequest, local};
use tracing::{debug, warn};

use super::record::Dst;
use super::{ReqBody, RespBody, Stream};
use crate::config::{ServicePort, Workload};
use crate::proxy::hygiene::strip_hop_by_hop;
use crate::proxy::profiles::Upstream;
use crate::proxy::upstreams::{PoolFrom, SendError, Sender, send_pooled};
use mesh_l7::resilience::pool::Kind;
use mesh_telemetry::metrics::ResponseFlags;

/// Sends a request where the stack decided.
pub(super) async fn call(
    s: Arc<Stream>,
    u: UpstreamRequest<ReqBody>,
) -> Result<Response<RespBody>, Infallible> {
    Ok(match &s.profile.upstream {
        Upstream::App { workload, port } => forward_local(&s, workload, *port, u.request).await,
        Upstream::Mesh => forward_mesh(&s, u).await,
    })
}

fn unavailable(body: &'static str, flags: ResponseFlags) -> Response<RespBody> {
    local(StatusCode::SERVICE_UNAVAILABLE, body, flags)
}

/// The 503 of a failed upstream: its typed cause (for `retryOn`) and flag.
fn upstream_failed(body: &'static str, failure: UpstreamFailure) -> Response<RespBody> {
    let mut resp = unavailable(body, failure.flag());
    Meta::of(&mut resp).failure = Some(failure);
    resp
}

/// The 503 of a request that failed on its upstream connection.
fn failed(e: &hyper::Error) -> Response<RespBody> {
    upstream_failed("upstream request failed\n", super::retry::failure_of(e))
}

/// The namespace whose view of the services a route's destination is looked up in: the
/// client workload's (a sidecar's), else the proxy identity's (a waypoint's own namespace).
fn client_namespace(s: &Stream) -> &str {
    match &s.profile.tunnel_source {
        Some(w) => &w.namespace,
        None => s.profile.identity.namespace(),
    }
}

/// The endpoints and service of a route's destination `d` (its port, else `addressed_port`
/// if the host has it, else the host's first port; its subset) as a client in `client_ns`
/// sees them: a service hidden from it (`visibility`) is no service. `None`: no such service.
fn route_destination(
    state: &crate::config::MeshState,
    d: &mesh_l7::Destination,
    addressed_port: u16,
    client_ns: &str,
) -> Option<(Arc<crate::config::EndpointSet>, Arc<ServicePort>)> {
    let port = d.port.unwrap_or(addressed_port);
    let visible = |port| state.service_by_host_for_client(&d.host, port, client_ns);
    let port = if visible(port).is_some() {
        port
    } else {
        *state.by_host.get(&d.host)?.keys().next()?
    };
    let dest_service = visible(port)?.clone();
    let set = state.endpoint_set(&d.host, port, d.subset.as_deref())?;
    Some((set.clone(), dest_service))
}

/// A routed request: to an endpoint of its destination, over HBONE.
async fn forward_mesh(s: &Stream, u: UpstreamRequest<ReqBody>) -> Response<RespBody> {
    let Some(sp) = &s.service else {
        return unavailable("no such service\n", ResponseFlags::NoRoute);
    };
    if let Target::Picked(p) = &u.target
        && p.destination().is_none()
    {
        return unavailable("no route destination\n", ResponseFlags::NoRoute);
    }
    // The endpoints the target names: the route's destination (its port, else the
    // addressed port if the host has it, else the host's only port; its subset), or the
    // addressed service's.
    // A route's destination is looked up as the proxy's namespace sees it (Istio's
    // `visibility` / `exportTo`): a service hidden from it is no service (503 `NR`).
    let found = {
        let state = s.ctx.state.load();
        let host = sp.service.hosts.first().map_or("", String::as_str);
        let client_ns = client_namespace(s);
        match &u.target {
            Target::Picked(p) => p.destination().and_then(|d| {
                let (set, dest_service) = route_destination(&state, d, sp.port, client_ns)?;
                Some((set, Some(dest_service)))
            }),
            _ => state
                .endpoint_set(host, sp.port, None)
                .map(|set| (set.clone(), Some(sp.clone()))),
        }
    };
    let Some((dest, dest_service)) = found else {
        return unavailable("no such service\n", ResponseFlags::NoRoute);
    };
    // Outlier detection and connection pool of the destination (engineer D).
    let health = (dest_service.as_ref()).and_then(|d| s.ctx.health.for_service(&d.service));
    let request = match health.as_ref().map(|h| h.admit(Kind::Request)) {
        Some(Err(_)) => return unavailable("upstream overflow\n", ResponseFlags::UpstreamOverflow),
        Some(Ok(permit)) => permit,
        None => None,
    };
    let now = tokio::time::Instant::now();
    // Endpoint choice (engineer C): locality, hash key, warmup, not ejected, not tried.
    let client = s.client.map(|c| c.ip());
    let chosen = super::affinity::choose(&dest, health.as_deref(), &u.request, client, now);
    let Some((ep, _in_flight, set_cookie)) = chosen else {
        return unavailable("no healthy upstream\n", ResponseFlags::NoHealthyUpstream);
    };
    let dst = Dst(ep.workload.clone(), dest_service);
    let to = (&ep.workload, ep.port);
    let mut resp = send_mesh(s, sp, to, u.request, health.as_deref(), request).await;
    // Only when a request reached the endpoint: a local answer (UO, ...) is not its fault.
    if let Some(h) = &health
        && let Some(outcome) = crate::proxy::health::outcome_of(&resp)
    {
        let addr = SocketAddr::new(ep.workload.address, ep.port);
        h.report(addr, outcome, tokio::time::Instant::now());
    }
    if let Some(c) = set_cookie {
        // Envoy sets a generated hash cookie on the response.
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    // Recorded once an endpoint was chosen, even if it then failed.
    resp.extensions_mut().insert(dst);
    resp
}

/// Sends to a chosen endpoint: no hop-by-hop headers, HTTP/2 in absolute form.
/// The `connectionPool` `request` slot is held until the response head, or by an upgraded
/// pair until it closes.
async fn send_mesh(
    s: &Stream,
    sp: &ServicePort,
    (workload, port): (&Arc<Workload>, u16),
    mut req: Request<ReqBody>,
    health: Option<&crate::proxy::health::HostHealth>,
    mut request: Option<mesh_l7::resilience::pool::Permit>,
) -> Response<RespBody> {
    strip_hop_by_hop(req.headers_mut());
    let m = &s.ctx.telemetry.upgrades;
    let down = match super::upgrade::prepare(&mut req, s.h2, m, &mut request) {
        Ok(down) => down,
        Err(over) => return over.response(),
    };
    let Some(hbone_addr) = workload.hbone_addr else {
        return unavailable(
            "endpoint outside the mesh\n",
            ResponseFlags::UpstreamConnectionFailure,
        );
    };
    let addr = SocketAddr::new(workload.address, port);
    let host = sp.service.hosts.first().map_or("", String::as_str);
    if s.h2 {
        // HTTP/2 upstream requests carry the scheme and authority.
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let auth = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(host);
        if let Ok(uri) = format!("http://{auth}{pq}").parse() {
            *req.uri_mut() = uri;
        }
        req.headers_mut().remove(header::HOST);
    }
    let identity = &workload.identity;
    let from = PoolFrom {
        limits: crate::proxy::health::conn_limits(health),
        ..pool_from(s)
    };
    let resp = send_pooled(&s.ctx.upstreams, from, addr, req, || async move {
        // A new connection: a pending request while it is made, then a connection slot
        // for the connection's life (connectionPool limits).
        let (_pending, conn) = crate::proxy::health::admit_connect(health)?;
        // connectionPool.tcp.connectTimeout bounds the dial (else the proxy's own).
        let timeout = health.and_then(|h| h.pool()?.connect_timeout);
        connect(s, identity, (hbone_addr, addr), host, conn, timeout).await
    })
    .await;
    let resp = match resp {
        Ok(resp) => resp.map(RespBody::Upstream),
        Err(SendError::Connect(e)) if e == crate::proxy::health::OVERFLOW => {
            unavailable("upstream overflow\n", ResponseFlags::UpstreamOverflow)
        }
        Err(SendError::Connect(e)) => {
            warn!(upstream = %addr, error = %e, side = s.profile.name, "upstream connect failed: 503");
            upstream_failed("upstream connect error\n", UpstreamFailure::ConnectFailure)
        }
        Err(SendError::Request(e)) => {
            warn!(upstream = %addr, error = %e, side = s.profile.name, "upstream request failed: 503");
            failed(&e)
        }
    };
    let mut resp = super::upgrade::finish(&s.ctx.telemetry.upgrades, down, resp);
    Meta::of(&mut resp).upstream = Some(addr);
    resp
}

/// An unrouted request: to the app on the workload's address (from its namespace, marked),
/// over a reused HTTP connection.
async fn forward_local(
    s: &Stream,
    workload: &Arc<Workload>,
    port: u16,
    mut req: Request<ReqBody>,
) -> Response<RespBody> {
    let addr = SocketAddr::new(workload.address, port);
    strip_hop_by_hop(req.headers_mut());
    let m = &s.ctx.telemetry.upgrades;
    let down = match super::upgrade::prepare(&mut req, s.h2, m, &mut None) {
        Ok(down) => down,
        Err(over) => return over.response(),
    };
    if s.h2 {
        // HTTP/2 requests carry the scheme and the authority (the evaluated one); h2 refuses
        // the origin form the path was put in.
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let authority = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if let Ok(uri) = format!("http://{authority}{pq}").parse() {
            *req.uri_mut() = uri;
        }
    }
    let resp = send_pooled(&s.ctx.upstreams, pool_from(s), addr, req, || async {
        let tcp =
            crate::proxy::connect::connect_app(&s.ctx, workload, addr, s.client.map(|c| c.ip()))
                .await
                .map_err(|e| e.reason)?;
        // Reset, not closed, if the connection fails (a request body cut mid-way).
        handshake(crate::proxy::reset::ResetOnDrop::new(tcp), s.h2, None)
            .await
            .map_err(|e| format!("handshake: {e}"))
    })
    .await;
    let resp = match resp {
        Ok(resp) => resp.map(RespBody::Upstream),
        Err(SendError::Connect(reason)) => {
            warn!(upstream = %addr, %reason, "application unreachable: 503");
            upstream_failed("upstream connect error\n", UpstreamFailure::ConnectFailure)
        }
        Err(SendError::Request(e)) => {
            warn!(upstream = %addr, error = %e, "application request failed: 503");
            failed(&e)
        }
    };
    let mut resp = super::upgrade::finish(&s.ctx.telemetry.upgrades, down, resp);
    Meta::of(&mut resp).upstream = Some(addr);
    resp.extensions_mut()
        .insert(Dst(workload.clone(), s.service.clone()));
    resp
}

/// A new HTTP connection to `addr` through HBONE to its ztunnel, with the stream's identity.
async fn connect(
    s: &Stream,
    identity: &mesh_identity::SpiffeId,
    (hbone_addr, addr): (SocketAddr, SocketAddr),
    host: &str,
    permit: Option<mesh_l7::resilience::pool::Permit>,
    timeout: Option<std::time::Duration>,
) -> Result<Sender, String> {
    let headers = ConnectHeaders {
        client: s.client,
        host: Some(host.to_owned()),
        ..ConnectHeaders::default()
    };
    let socket_source = s
        .profile
        .tunnel_source
        .as_ref()
        .and_then(|w| s.ctx.socket_source(w));
    let to = crate::proxy::connect::HboneTarget {
        destination: identity,
        hbone_addr,
        authority: addr,
    };
    let headers = headers.to_header_map();
    let id = &s.profile.identity;
    let dial =
        crate::proxy::connect::dial_hbone_within(&s.ctx, id, to, headers, socket_source, timeout);
    let tunnel = dial.await.map_err(|e| e.reason().to_owned())?;
    handshake(tunnel, s.h2, permit)
        .await
        .map_err(|e| e.to_string())
}

/// An HTTP client connection (HTTP/2 prior knowledge or HTTP/1.1) on `io`, its driver spawned.
async fn handshake<IO>(
    io: IO,
    h2: bool,
    permit: Option<mesh_l7::resilience::pool::Permit>,
) -> hyper::Result<Sender>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The connection's pool slot, held by its I/O: until the connection ends, or after a 101
    // until the upgraded pair that took the I/O over closes.
    let io = super::upgrade::held::Held::new(io, permit);
    if h2 {
        let (sender, conn) = crate::proxy::hygiene::h2_client()
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
        // With upgrades: a 101 to a WebSocket upgrade hands the connection to the copy.
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upstream HTTP connection ended");
        }
    });
    Ok(Sender::H1(sender))
}

/// Whose pooled connections the stream's requests may share.
fn pool_from(s: &Stream) -> PoolFrom {
    PoolFrom {
        client: s.client.map(|c| c.ip()),
        h2: s.h2,
        limits: Default::default(),
    }
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
