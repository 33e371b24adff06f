//! The waypoint role: a shared proxy in front of the services and workloads that use it
//! (`istio.io/use-waypoint`). Source ztunnels send it HBONE with the address the client used
//! as the `:authority` (a service VIP:port or a workload ip:port); it picks the endpoint and
//! opens a new HBONE tunnel to that endpoint's ztunnel with its own identity, so the
//! destination ztunnel sees the waypoint as the source (and accepts such a workload's traffic
//! only from its waypoints). Streams to a service whose port is declared `HTTP` are served as
//! HTTP/1.1 and routed per request ([`super::http`]); anything else is carried as TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh_hbone::InboundConnect;
use mesh_hbone::headers::ConnectHeaders;
use mesh_telemetry::metrics::{Reporter, ResponseFlags, SecurityPolicy};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::connect::{DialError, HboneTarget, dial_hbone};
use super::health::L4Error;
use super::sniff::{Rewind, Sniffed, sniff};
use super::{Ctx, observe};
use crate::config::{ServicePort, Workload};

/// Serves one HBONE connection to the waypoint.
pub(super) async fn serve(ctx: Arc<Ctx>, tcp: TcpStream, cancel: CancellationToken) {
    super::inbound::serve_hbone(ctx, tcp, cancel, "waypoint", connect).await;
}

/// The endpoint a CONNECT resolves to.
struct Target {
    workload: Arc<Workload>,
    port: u16,
    service: Option<Arc<ServicePort>>,
}

async fn connect(ctx: Arc<Ctx>, req: InboundConnect) {
    let start = tokio::time::Instant::now();
    let mut headers = req.connect_headers();
    // The client is the TCP peer (source ztunnels and sidecars dial from the workload's own
    // address): no peer of a waypoint is entitled to assert another one in `Forwarded`.
    headers.client = Some(req.conn.peer_addr);
    let state = ctx.state.load_full();
    let Some(wp) = state.waypoints.get(&ctx.node_name).cloned() else {
        return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
    };
    // HTTP services get L7 routing: the stream is accepted and each request routed on its own;
    // ports with no declared protocol are sniffed first (Istio's protocol detection).
    let http = state
        .service_at(req.authority)
        .filter(|sp| sp.service.served_by(&wp.namespace, &wp.name) && sp.protocol.is_http());
    if let Some(sp) = http.cloned() {
        drop(state);
        return serve_http(ctx, req, wp, sp, headers, start).await;
    }
    let Some(target) = target(&state, &wp, req.authority, &ctx.health) else {
        let authority = req.authority;
        warn!(%authority, src.identity = %req.conn.peer_identity, "not a service or workload of this waypoint: 400");
        let rec = line(&req, &headers, None);
        observe::refuse(
            &ctx.telemetry,
            None,
            rec,
            "not served by this waypoint (400)",
            start,
        );
        return req.refuse(StatusCode::BAD_REQUEST);
    };
    let src_identity = &req.conn.peer_identity;
    let src = headers
        .client
        .and_then(|c| state.workload_by_ip(c.ip()))
        .filter(|w| w.identity == *src_identity);
    let src_labels = match src {
        Some(w) => w.telemetry.clone(),
        None => observe::identity_labels(src_identity.as_str(), src_identity.namespace()),
    };
    let labels = observe::labels(
        Reporter::Waypoint,
        &src_labels,
        &target.workload.telemetry,
        target.service.as_ref().map(|s| &s.service.telemetry),
        SecurityPolicy::MutualTls,
    );
    // Every stream the waypoint carries is authorized: TCP ports, workload targets.
    let authorized = authorize_tcp(
        &state,
        &wp,
        target.service.as_deref(),
        src_identity,
        headers.client,
        req.authority,
    );
    drop(state);
    if let Err(reason) = authorized {
        let counted = Some((&labels, ResponseFlags::Deny));
        let rec = line(&req, &headers, Some(&target));
        observe::refuse(&ctx.telemetry, counted, rec, &reason, start);
        return req.refuse(StatusCode::UNAUTHORIZED);
    }
    Box::pin(carry(&ctx, req, &wp, &target, &headers, &labels, start)).await;
}

/// Whether `waypoint` (a service's or workload's) is this one (compared without building a
/// key per stream).
fn uses(waypoint: &Option<Arc<crate::config::Waypoint>>, me: &crate::config::Waypoint) -> bool {
    waypoint
        .as_ref()
        .is_some_and(|w| w.namespace == me.namespace && w.name == me.name)
}

/// What the client addressed: a service that uses this waypoint (balanced over its
/// endpoints), or a workload that does.
fn target(
    state: &crate::config::MeshState,
    wp: &crate::config::Waypoint,
    authority: SocketAddr,
    health: &super::health::Health,
) -> Option<Target> {
    match state.service_at(authority) {
        Some(sp) if sp.service.served_by(&wp.namespace, &wp.name) => {
            healthy_pick(sp, health).map(|ep| Target {
                workload: ep.workload.clone(),
                port: ep.port,
                service: Some(sp.clone()),
            })
        }
        _ => state
            .workload_by_ip(authority.ip())
            .filter(|w| uses(&w.waypoint, wp))
            .map(|w| Target {
                workload: w.clone(),
                port: authority.port(),
                service: None,
            }),
    }
}

/// An endpoint of `sp` that outlier detection has not ejected (its DestinationRule's).
fn healthy_pick<'a>(
    sp: &'a ServicePort,
    health: &super::health::Health,
) -> Option<&'a crate::config::Endpoint> {
    let Some(h) = health.for_service(&sp.service) else {
        return sp.pick();
    };
    let now = tokio::time::Instant::now();
    sp.pick_with(|a| !h.is_ejected(a, now), &[])
}

/// The access-log line of a stream of `req` to `t`.
fn line<'a>(
    req: &'a InboundConnect,
    headers: &ConnectHeaders,
    t: Option<&'a Target>,
) -> mesh_telemetry::access::ConnectionRecord<'a> {
    line_of(headers.client, &req.conn.peer_identity, req.authority, t)
}

/// The access-log line of a stream from `client` (`identity`) for `authority` to `t`.
fn line_of<'a>(
    client: Option<SocketAddr>,
    identity: &'a mesh_identity::SpiffeId,
    authority: SocketAddr,
    t: Option<&'a Target>,
) -> mesh_telemetry::access::ConnectionRecord<'a> {
    let mut rec = observe::record(
        "waypoint",
        client,
        None,
        Some(identity.as_str()),
        Some(authority),
        t.map(|t| &*t.workload),
        SecurityPolicy::MutualTls,
    );
    rec.dst_service = t
        .and_then(|t| t.service.as_ref())
        .and_then(|s| s.service.hosts.first().map(String::as_str));
    rec
}

/// Accepts a stream to an HTTP service and serves it through the waypoint's HTTP stack
/// (sniffed first when the port's protocol is not declared; not HTTP: carried as TCP).
async fn serve_http(
    ctx: Arc<Ctx>,
    req: InboundConnect,
    waypoint: Arc<crate::config::Waypoint>,
    sp: Arc<ServicePort>,
    headers: ConnectHeaders,
    start: tokio::time::Instant,
) {
    let authority = req.authority;
    let src_identity = req.conn.peer_identity.clone();
    let mut tunnel = match req.accept() {
        Ok(t) => t,
        Err(e) => return debug!(error = %e, "tunnel closed before 200"),
    };
    let (kind, prefix) = match sp.protocol.h2() {
        None => sniff(&mut tunnel).await,
        Some(false) => (Sniffed::Http1, Vec::new()),
        Some(true) => (Sniffed::Http2, Vec::new()),
    };
    let io = Rewind {
        prefix: bytes::Bytes::from(prefix),
        inner: tunnel,
    };
    if kind == Sniffed::Tcp {
        let peer = (&headers, &src_identity, authority);
        return carry_tcp(&ctx, &waypoint, &sp, io, peer, start).await;
    }
    let src = headers
        .client
        .and_then(|c| ctx.state.load().workload_by_ip(c.ip()).cloned())
        .filter(|w| w.identity == src_identity);
    let stream = super::http::Stream {
        ctx: ctx.clone(),
        profile: super::profiles::Profile::waypoint(waypoint, Some(&sp)),
        service: Some(sp),
        client: headers.client,
        src_labels: src.map_or_else(
            || observe::identity_labels(src_identity.as_str(), src_identity.namespace()),
            |w| w.telemetry.clone(),
        ),
        src_identity: Some(src_identity.clone()),
        h2: kind == Sniffed::Http2,
    };
    super::http::serve(io, stream).await;
}

/// Carries an authorized stream to `target` over a new HBONE tunnel to the endpoint's
/// ztunnel with the waypoint's own identity; the client's address is passed on so the
/// destination's policy sees the original source IP.
async fn carry(
    ctx: &Ctx,
    req: InboundConnect,
    wp: &crate::config::Waypoint,
    target: &Target,
    headers: &ConnectHeaders,
    labels: &mesh_telemetry::metrics::ConnectionLabels,
    start: tokio::time::Instant,
) {
    let Some(hbone_addr) = target.workload.hbone_addr else {
        warn!(dst.workload = %target.workload.key(), "endpoint is on no mesh node: 503");
        let counted = Some((labels, ResponseFlags::ConnectFailure));
        let rec = line(&req, headers, Some(target));
        observe::refuse(
            &ctx.telemetry,
            counted,
            rec,
            "endpoint outside the mesh (503)",
            start,
        );
        return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
    };
    let to = HboneTarget {
        destination: &target.workload.identity,
        hbone_addr,
        authority: SocketAddr::new(target.workload.address, target.port),
    };
    let headers_out = forwarded(headers).to_header_map();
    let addr = to.authority;
    let health = (target.service.as_ref()).and_then(|sp| ctx.health.for_service(&sp.service));
    let dialed = super::health::dial_l4(
        health.as_deref(),
        addr,
        dial_hbone(ctx, &wp.identity, to, headers_out, None),
        timed_out,
        |e| !e.unauthorized(),
    );
    let (mut upstream, _pool_slot) = match dialed.await {
        Ok(t) => t,
        Err(L4Error::Overflow) => {
            warn!(dst.workload = %target.workload.key(), "connection pool overflow (maxConnections): 503");
            let rec = line(&req, headers, Some(target));
            let counted = Some((labels, ResponseFlags::UpstreamOverflow));
            observe::refuse(
                &ctx.telemetry,
                counted,
                rec,
                "connection pool overflow",
                start,
            );
            return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
        }
        Err(L4Error::Dial(e)) => {
            // A 401 from the destination is passed back as is.
            let status = if e.unauthorized() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            warn!(dst.workload = %target.workload.key(), reason = %e.reason(), "waypoint upstream failed");
            let rec = line(&req, headers, Some(target));
            observe::refuse(
                &ctx.telemetry,
                Some((labels, e.flags())),
                rec,
                e.reason(),
                start,
            );
            return req.refuse(status);
        }
    };
    let rec = ctx.telemetry.tcp.open(labels);
    let (identity, authority) = (req.conn.peer_identity.clone(), req.authority);
    let mut downstream = match req.accept() {
        Ok(t) => t,
        Err(e) => return debug!(error = %e, "tunnel closed before 200"),
    };
    let copy = observe::copy_counted(&mut downstream, &mut upstream, &rec);
    let pool = health.as_deref().and_then(|h| h.pool());
    // connectionPool.tcp maxConnectionDuration / idleTimeout: a clean close.
    let result = super::health::bounded(std::pin::pin!(copy), pool, || rec.totals())
        .await
        .unwrap_or(Ok((0, 0)));
    if result.is_err() {
        // Cut on one side: cut on both (a reset, which each peer passes on as a TCP reset).
        downstream.abort();
        upstream.abort();
    }
    let mut log = line_of(headers.client, &identity, authority, Some(target));
    log.dst_hbone_addr = Some(hbone_addr);
    observe::log_copied(
        &ctx.telemetry.access,
        log,
        &result,
        0,
        Some(rec.totals()),
        start,
    );
}

/// Carries an accepted, sniffed-as-TCP stream to an endpoint of `sp` over HBONE; `peer` is
/// the stream's CONNECT headers, client identity and authority.
async fn carry_tcp(
    ctx: &Ctx,
    wp: &crate::config::Waypoint,
    sp: &ServicePort,
    mut io: Rewind<mesh_hbone::H2Stream>,
    peer: (&ConnectHeaders, &mesh_identity::SpiffeId, SocketAddr),
    start: tokio::time::Instant,
) {
    let (headers, src_identity, authority) = peer;
    let access = &ctx.telemetry.access;
    // Not HTTP: the waypoint's policies still apply, read at L4 (HTTP fields fail closed).
    if let Err(reason) = authorize_tcp(
        &ctx.state.load(),
        wp,
        Some(sp),
        src_identity,
        headers.client,
        authority,
    ) {
        let rec = observe::record(
            "waypoint",
            headers.client,
            None,
            Some(src_identity.as_str()),
            Some(authority),
            None,
            SecurityPolicy::MutualTls,
        );
        // The stream was accepted to sniff it: dropping it resets the tunnel.
        return observe::log_refusal(access, rec, &reason, start);
    }
    let Some(ep) = healthy_pick(sp, &ctx.health).cloned() else {
        return warn!(%authority, "no endpoints for a sniffed TCP stream");
    };
    let Some(hbone_addr) = ep.workload.hbone_addr else {
        return warn!(dst.workload = %ep.workload.key(), "endpoint outside the mesh");
    };
    let labels = observe::labels(
        Reporter::Waypoint,
        &observe::identity_labels(src_identity.as_str(), src_identity.namespace()),
        &ep.workload.telemetry,
        Some(&sp.service.telemetry),
        SecurityPolicy::MutualTls,
    );
    let mut rec = observe::record(
        "waypoint",
        headers.client,
        None,
        Some(src_identity.as_str()),
        Some(authority),
        Some(&ep.workload),
        SecurityPolicy::MutualTls,
    );
    rec.dst_hbone_addr = Some(hbone_addr);
    let to = HboneTarget {
        destination: &ep.workload.identity,
        hbone_addr,
        authority: SocketAddr::new(ep.workload.address, ep.port),
    };
    let headers_out = forwarded(headers).to_header_map();
    let addr = to.authority;
    let health = ctx.health.for_service(&sp.service);
    let dialed = super::health::dial_l4(
        health.as_deref(),
        addr,
        dial_hbone(ctx, &wp.identity, to, headers_out, None),
        timed_out,
        |e| !e.unauthorized(),
    );
    let (mut upstream, _pool_slot) = match dialed.await {
        Ok(u) => u,
        Err(L4Error::Overflow) => {
            let counted = Some((&labels, ResponseFlags::UpstreamOverflow));
            return observe::refuse(
                &ctx.telemetry,
                counted,
                rec,
                "connection pool overflow",
                start,
            );
        }
        Err(L4Error::Dial(e)) => {
            let counted = Some((&labels, ResponseFlags::ConnectFailure));
            return observe::refuse(&ctx.telemetry, counted, rec, e.reason(), start);
        }
    };
    let counter = ctx.telemetry.tcp.open(&labels);
    drop(labels);
    let copy = observe::copy_counted(&mut io, &mut upstream, &counter);
    let pool = health.as_deref().and_then(|h| h.pool());
    let result = super::health::bounded(std::pin::pin!(copy), pool, || counter.totals())
        .await
        .unwrap_or(Ok((0, 0)));
    if result.is_err() {
        io.inner.abort();
        upstream.abort();
    }
    observe::log_copied(access, rec, &result, 0, Some(counter.totals()), start);
}

/// Authorizes a stream the waypoint carries as TCP (a declared TCP port, a sniffed non-HTTP
/// stream, a workload target) with its policies, read at L4. `Err` is the reason to log.
fn authorize_tcp(
    state: &crate::config::MeshState,
    waypoint: &crate::config::Waypoint,
    service: Option<&ServicePort>,
    src_identity: &mesh_identity::SpiffeId,
    client: Option<SocketAddr>,
    authority: SocketAddr,
) -> Result<(), String> {
    let policies = super::profiles::waypoint_policies(state, waypoint, service);
    if policies.is_empty() {
        return Ok(());
    }
    let principal = src_identity.as_str();
    let conn = mesh_authz::Connection {
        source_ip: client.map_or(waypoint.address, |c| c.ip()),
        remote_ip: Some(client.map_or(waypoint.address, |c| c.ip())),
        source_principal: Some(principal.strip_prefix("spiffe://").unwrap_or(principal)),
        source_namespace: Some(src_identity.namespace()),
        destination_ip: authority.ip(),
        destination_port: authority.port(),
    };
    match mesh_authz::http::evaluate_conn(&policies, &conn) {
        mesh_authz::http::HttpDecision::Allow => Ok(()),
        mesh_authz::http::HttpDecision::DeniedBy(p) => {
            warn!(%authority, src.identity = %src_identity, policy = %format_args!("{}/{}", p.namespace, p.name), "TCP stream refused by authorization policy");
            Err(format!("denied by {}/{}", p.namespace, p.name))
        }
        mesh_authz::http::HttpDecision::NotAllowed => {
            warn!(%authority, src.identity = %src_identity, "TCP stream refused: no ALLOW policy matched");
            Err("no ALLOW policy matched".to_owned())
        }
    }
}

/// The headers a waypoint passes on to the destination: the client's address (so its policy
/// sees the original source), host, baggage and trace context.
pub(super) fn forwarded(h: &ConnectHeaders) -> ConnectHeaders {
    ConnectHeaders {
        client: h.client,
        host: h.host.clone(),
        baggage: h.baggage.clone(),
        traceparent: h.traceparent.clone(),
    }
}

/// The dial error of a `connectTimeout` (DestinationRule connectionPool.tcp).
fn timed_out() -> DialError {
    DialError::Unreachable("connect timed out (connectionPool.tcp.connectTimeout)".to_owned())
}
