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
use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{ConnectRequest, InboundConnect};
use mesh_telemetry::metrics::{Reporter, ResponseFlags, SecurityPolicy};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

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
    let access = &ctx.telemetry.access;
    let authority = req.authority;
    let src_identity = req.conn.peer_identity.clone();
    let mut headers = req.connect_headers();
    // The client is the TCP peer (source ztunnels and sidecars dial from the workload's own
    // address): no peer of a waypoint is entitled to assert another one in `Forwarded`.
    headers.client = Some(req.conn.peer_addr);
    let state = ctx.state.load_full();
    let me = &ctx.node_name;
    // `me` is this waypoint's `namespace/name`; compared without building a key per stream.
    let me_parts = me.split_once('/');
    let uses_me = |wp: &Option<Arc<crate::config::Waypoint>>| {
        wp.as_ref()
            .is_some_and(|w| me_parts == Some((w.namespace.as_str(), w.name.as_str())))
    };
    // HTTP services get L7 routing: the stream is accepted and each request routed on its own;
    // ports with no declared protocol are sniffed first (Istio's protocol detection).
    if let Some(sp) = state
        .service_by_vip(authority)
        .filter(|sp| {
            uses_me(&sp.service.waypoint)
                && matches!(sp.protocol.as_str(), "HTTP" | "HTTP2" | "GRPC" | "AUTO")
        })
        .cloned()
    {
        let Some(waypoint) = state.waypoints.get(me).cloned() else {
            return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
        };
        drop(state);
        let mut tunnel = match req.accept() {
            Ok(t) => t,
            Err(e) => return debug!(error = %e, "tunnel closed before 200"),
        };
        let (kind, prefix) = if sp.protocol == "AUTO" {
            sniff(&mut tunnel).await
        } else if sp.protocol == "HTTP" {
            (Sniffed::Http1, Vec::new())
        } else {
            (Sniffed::Http2, Vec::new())
        };
        let io = Rewind {
            prefix: bytes::Bytes::from(prefix),
            inner: tunnel,
        };
        if kind == Sniffed::Tcp {
            return carry_tcp(
                &ctx,
                &waypoint,
                &sp,
                io,
                &headers,
                &src_identity,
                authority,
                start,
            )
            .await;
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
        return super::http::serve(io, stream).await;
    }
    // What the client addressed: a service that uses this waypoint (balanced over its
    // endpoints), or a workload that does.
    let target = match state.service_by_vip(authority) {
        Some(sp) if uses_me(&sp.service.waypoint) => sp.pick().map(|ep| Target {
            workload: ep.workload.clone(),
            port: ep.port,
            service: Some(sp.clone()),
        }),
        _ => state
            .workload_by_ip(authority.ip())
            .filter(|w| uses_me(&w.waypoint))
            .map(|w| Target {
                workload: w.clone(),
                port: authority.port(),
                service: None,
            }),
    };
    fn line<'a>(
        client: Option<SocketAddr>,
        src_identity: &'a str,
        authority: SocketAddr,
        t: Option<&'a Target>,
    ) -> mesh_telemetry::access::ConnectionRecord<'a> {
        let mut rec = observe::record(
            "waypoint",
            client,
            None,
            Some(src_identity),
            Some(authority),
            t.map(|t| &*t.workload),
            SecurityPolicy::MutualTls,
        );
        rec.dst_service = t
            .and_then(|t| t.service.as_ref())
            .and_then(|s| s.service.hosts.first().map(String::as_str));
        rec
    }
    let client = headers.client;
    let record = |t| line(client, src_identity.as_str(), authority, t);
    let Some(target) = target else {
        warn!(%authority, src.identity = %src_identity, "not a service or workload of this waypoint: 400");
        observe::log_refusal(
            access,
            record(None),
            "not served by this waypoint (400)",
            start,
        );
        return req.refuse(StatusCode::BAD_REQUEST);
    };
    let src = headers
        .client
        .and_then(|c| state.workload_by_ip(c.ip()))
        .filter(|w| w.identity == src_identity)
        .cloned();
    let src_labels = match &src {
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
    drop(state);
    let Some(hbone_addr) = target.workload.hbone_addr else {
        warn!(dst.workload = %target.workload.key(), "endpoint is on no mesh node: 503");
        ctx.telemetry
            .tcp
            .refused(&labels, ResponseFlags::ConnectFailure);
        observe::log_refusal(
            access,
            record(Some(&target)),
            "endpoint outside the mesh (503)",
            start,
        );
        return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
    };
    let Some(wp) = ctx.state.load().waypoints.get(me).cloned() else {
        return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
    };
    // Every stream the waypoint carries is authorized: TCP ports, workload targets.
    if let Err(reason) = authorize_tcp(
        &ctx.state.load(),
        &wp,
        target.service.as_deref(),
        &src_identity,
        client,
        authority,
    ) {
        ctx.telemetry.tcp.refused(&labels, ResponseFlags::Deny);
        observe::log_refusal(access, record(Some(&target)), &reason, start);
        return req.refuse(StatusCode::UNAUTHORIZED);
    }
    // A new tunnel to the endpoint's ztunnel with the waypoint's own identity; the client's
    // address is passed on so the destination's policy sees the original source IP.
    let upstream = open_upstream(
        &ctx,
        &wp.identity,
        &target.workload.identity,
        hbone_addr,
        SocketAddr::new(target.workload.address, target.port),
        forwarded(&headers),
        None,
    );
    let mut upstream = match Box::pin(upstream).await {
        Ok(t) => t,
        Err(Upstream {
            reason,
            unauthorized,
        }) => {
            // A 401 from the destination is passed back as is.
            let (status, flags) = if unauthorized {
                (StatusCode::UNAUTHORIZED, ResponseFlags::Deny)
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlags::ConnectFailure,
                )
            };
            warn!(dst.workload = %target.workload.key(), %reason, "waypoint upstream failed");
            ctx.telemetry.tcp.refused(&labels, flags);
            observe::log_refusal(access, record(Some(&target)), &reason, start);
            return req.refuse(status);
        }
    };
    let rec = ctx.telemetry.tcp.open(&labels);
    drop((labels, src_labels));
    let mut downstream = match req.accept() {
        Ok(t) => t,
        Err(e) => return debug!(error = %e, "tunnel closed before 200"),
    };
    let result = observe::copy_counted(&mut downstream, &mut upstream, &rec).await;
    if result.is_err() {
        // Cut on one side: cut on both (a reset, which each peer passes on as a TCP reset).
        downstream.abort();
        upstream.abort();
    }
    let mut r = record(Some(&target));
    r.dst_hbone_addr = Some(hbone_addr);
    observe::log_copied(access, r, &result, 0, Some(rec.totals()), start);
}

/// Carries an accepted, sniffed-as-TCP stream to an endpoint of `sp` over HBONE.
#[allow(clippy::too_many_arguments)]
async fn carry_tcp(
    ctx: &Ctx,
    wp: &crate::config::Waypoint,
    sp: &ServicePort,
    mut io: Rewind<mesh_hbone::H2Stream>,
    headers: &ConnectHeaders,
    src_identity: &mesh_identity::SpiffeId,
    authority: SocketAddr,
    start: tokio::time::Instant,
) {
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
    let Some(ep) = sp.pick().cloned() else {
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
    let upstream = open_upstream(
        ctx,
        &wp.identity,
        &ep.workload.identity,
        hbone_addr,
        SocketAddr::new(ep.workload.address, ep.port),
        forwarded(headers),
        None,
    );
    let mut upstream = match Box::pin(upstream).await {
        Ok(u) => u,
        Err(Upstream { reason, .. }) => {
            ctx.telemetry
                .tcp
                .refused(&labels, ResponseFlags::ConnectFailure);
            return observe::log_refusal(access, rec, &reason, start);
        }
    };
    let counter = ctx.telemetry.tcp.open(&labels);
    drop(labels);
    let result = observe::copy_counted(&mut io, &mut upstream, &counter).await;
    if result.is_err() {
        io.inner.abort();
        upstream.abort();
    }
    observe::log_copied(access, rec, &result, 0, Some(counter.totals()), start);
}

/// The waypoint's policies for a stream to `service` (`None`: to a workload): those whose
/// `targetRefs` name the service or this waypoint's Gateway. Used by the HTTP and TCP paths.
pub(super) fn policies_for<'s>(
    state: &'s crate::config::MeshState,
    waypoint: &crate::config::Waypoint,
    service: Option<&ServicePort>,
) -> Vec<&'s mesh_authz::Policy> {
    let service_key = service.map(|sp| sp.service.target_key.as_str());
    std::iter::once(waypoint.target_key.as_str())
        .chain(service_key)
        .filter_map(|key| state.waypoint_policies.get(key))
        .flat_map(|ps| ps.iter().map(|p| &**p))
        .collect()
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
    let policies = policies_for(state, waypoint, service);
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

/// Why an upstream tunnel could not be opened.
pub(super) struct Upstream {
    pub(super) reason: String,
    /// The destination answered 401 (its policy, or it accepts only another waypoint).
    pub(super) unauthorized: bool,
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

/// Opens an HBONE tunnel from the waypoint (as `source`) to `authority` through its
/// ztunnel at `hbone_addr`, which must present `destination`.
pub(super) async fn open_upstream(
    ctx: &Ctx,
    source: &mesh_identity::SpiffeId,
    destination: &mesh_identity::SpiffeId,
    hbone_addr: SocketAddr,
    authority: SocketAddr,
    headers: ConnectHeaders,
    socket_source: Option<Arc<dyn mesh_hbone::SocketSource>>,
) -> Result<mesh_hbone::H2Stream, Upstream> {
    let fail = |reason: String| Upstream {
        reason,
        unauthorized: false,
    };
    let source = ctx
        .certs
        .store(source)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let req = ConnectRequest {
        source,
        destination_identity: destination.clone(),
        hbone_addr,
        authority,
        headers: headers.to_header_map(),
        socket_source,
    };
    match tokio::time::timeout(ctx.cfg.connect_timeout * 2, ctx.pool.connect(req)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Upstream {
            unauthorized: matches!(&e, mesh_hbone::Error::Status { status, .. } if *status == StatusCode::UNAUTHORIZED),
            reason: e.to_string(),
        }),
        Err(_) => Err(fail("HBONE connect timed out".to_owned())),
    }
}
