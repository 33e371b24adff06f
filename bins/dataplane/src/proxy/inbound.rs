//! Inbound: HBONE from other nodes to a local workload. The listener's address picks the
//! workload (and so the certificate); a CONNECT must name that same workload (400 otherwise),
//! and is answered 503 when the application does not accept the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh_hbone::{InboundConnect, accept_tls, serve_connection};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use mesh_telemetry::access::Outcome;
use mesh_telemetry::metrics::{ConnectionRecorder, Reporter, ResponseFlags, SecurityPolicy};

use crate::config::Workload;

use super::{Ctx, observe};

/// Serves one HBONE connection: TLS, then HTTP/2, then each CONNECT.
pub(super) async fn serve(ctx: Arc<Ctx>, tcp: TcpStream, cancel: CancellationToken) {
    serve_hbone(ctx, tcp, cancel, "inbound", connect).await;
}

/// The server side of HBONE shared by the inbound and waypoint listeners: the certificate
/// chosen by the local address, the TLS handshake, HTTP/2, and `handler` for each CONNECT.
pub(super) async fn serve_hbone<F, Fut>(
    ctx: Arc<Ctx>,
    tcp: TcpStream,
    cancel: CancellationToken,
    role: &'static str,
    handler: F,
) where
    F: Fn(Arc<Ctx>, InboundConnect) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let peer = tcp.peer_addr().ok();
    let local = tcp.local_addr().ok();
    let tls = local.and_then(|l| ctx.server_tls.load().get(&l.ip()).cloned());
    let Some(tls) = tls else {
        // The workload (or waypoint) at this address left between accept and now.
        return warn!(src.addr = ?peer, local.addr = ?local, role, "HBONE for an address this proxy no longer serves");
    };
    let (stream, info) = match accept_tls(tcp, tls, ctx.cfg.handshake_timeout).await {
        Ok(x) => x,
        Err(e) => {
            // Plaintext, no client certificate, an untrusted CA or a foreign trust domain.
            return warn!(src.addr = ?peer, error = %e, role, "{role} HBONE refused");
        }
    };
    debug!(src.identity = %info.peer_identity, role, "HBONE connection");
    let settings = ctx.cfg.pool.h2.clone();
    let result = serve_connection(stream, info, &settings, cancel, |req| {
        handler(ctx.clone(), req)
    })
    .await;
    if let Err(e) = result {
        debug!(error = %e, role, "HBONE connection ended with error");
    }
}

/// A CONNECT that passed the checks: what the tunnel's life and its log line need.
struct Admitted<'a> {
    dst: Arc<Workload>,
    src: Option<Arc<Workload>>,
    client: Option<SocketAddr>,
    host: Option<String>,
    /// The app connection and its metrics (none when served as HTTP: connected per request).
    upstream: Option<(TcpStream, ConnectionRecorder)>,
    /// The registration that a policy change cancels (`close`); none when served as HTTP
    /// (authorized per request).
    live: Option<(super::LiveGuard<'a>, CancellationToken)>,
}

/// A sidecar's inbound CONNECT that is served as HTTP: the workload's JWT and policies
/// (with HTTP fields) are evaluated per request. `Some(h2)` when the port is declared
/// `HTTP` (`false`), `HTTP2` or `GRPC` (`true`) and the workload has such policies or a
/// `RequestAuthentication`; otherwise connection-level L4 applies.
pub(super) fn l7_inbound(ctx: &Ctx, authority: SocketAddr) -> Option<bool> {
    if !ctx.layers().inbound_http {
        return None;
    }
    let state = ctx.state.load();
    let w = state.workload_by_ip(authority.ip())?;
    let key = w.key();
    if state.authz.http_policies(&key).is_none() && !state.sidecar_authn.contains_key(&key) {
        return None;
    }
    match state
        .port_protocols
        .get(&(key, authority.port()))
        .map(String::as_str)
    {
        Some("HTTP") => Some(false),
        Some("HTTP2" | "GRPC") => Some(true),
        _ => None,
    }
}

/// Serves an admitted CONNECT as HTTP to the local app ([`l7_inbound`]).
async fn serve_l7(ctx: Arc<Ctx>, req: InboundConnect, h2: bool, start: tokio::time::Instant) {
    let authority = req.authority;
    let src_identity = req.conn.peer_identity.clone();
    let a = match Box::pin(admit(&ctx, &req, start, true)).await {
        Ok(a) => a,
        Err(status) => return req.refuse(status),
    };
    let tunnel = match req.accept() {
        Ok(t) => t,
        Err(e) => return debug!(error = %e, "tunnel closed before 200"),
    };
    let stream = super::http::Stream {
        ctx: ctx.clone(),
        service: None,
        client: a.client,
        src_labels: a.src.as_ref().map_or_else(
            || observe::identity_labels(src_identity.as_str(), src_identity.namespace()),
            |w| w.telemetry.clone(),
        ),
        src_identity: Some(src_identity),
        profile: super::profiles::Profile::sidecar_inbound(a.dst, authority.port(), true),
        h2,
    };
    super::http::serve(tunnel, stream).await;
}

async fn connect(ctx: Arc<Ctx>, req: InboundConnect) {
    let start = tokio::time::Instant::now();
    if let Some(h2) = l7_inbound(&ctx, req.authority) {
        return Box::pin(serve_l7(ctx, req, h2, start)).await;
    }
    // Boxed: the checks' state (state snapshot, labels, authorization, the app connect) is
    // short-lived; inline it would stay in every tunnel's task for the tunnel's whole life.
    let admitted = Box::pin(admit(&ctx, &req, start, false)).await;
    let a = match admitted {
        Ok(a) => a,
        Err(status) => return req.refuse(status),
    };
    let authority = req.authority;
    let hbone_addr = req.conn.local_addr;
    let src_identity = req.conn.peer_identity.clone();
    let (Some((mut upstream, rec)), Some((_live, close))) = (a.upstream, a.live) else {
        return req.refuse(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let tunnel = match req.accept() {
        Ok(t) => t,
        Err(e) => return debug!(error = %e, "tunnel closed before 200"),
    };
    // A tunnel that ends in an error (or is cut short) resets the app's connection.
    let mut app = super::reset::ResetOnDrop::new(&mut upstream);
    let (mut r, mut w) = app.split();
    let counter = observe::TunnelBytes {
        rec: &rec,
        reporter: Reporter::Destination,
    };
    let result = tokio::select! {
        biased;
        () = close.cancelled() => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "closed: no longer allowed by authorization policy",
        )),
        r = mesh_hbone::copy_bidirectional(&mut r, &mut w, tunnel, &counter) => r,
    };
    if result.is_ok() {
        app.clean();
    }
    // Counted as they passed, so also right when the copy ended in an error.
    let (to_app, from_app) = rec.totals();
    let error = result.err().map(|e| e.to_string());
    debug!(
        src.identity = %src_identity,
        dst.workload = %a.dst.key(),
        bytes_received = to_app,
        bytes_sent = from_app,
        "connection complete"
    );
    let access = &ctx.telemetry.access;
    if access.enabled() {
        let mut rec = observe::record(
            "inbound",
            a.client,
            a.src.as_deref(),
            Some(src_identity.as_str()),
            Some(authority),
            Some(&a.dst),
            SecurityPolicy::MutualTls,
        );
        rec.dst_hbone_addr = Some(hbone_addr);
        rec.dst_service = a.host.as_deref();
        rec.bytes_sent = to_app;
        rec.bytes_recv = from_app;
        rec.duration = observe::duration(start);
        if error.is_some() {
            rec.outcome = Some(Outcome::Error);
            rec.reason = error.as_deref();
        }
        access.log(&rec);
    }
}

/// Checks a CONNECT (its authority is this listener's workload, authorization policy) and
/// connects to the application. A refusal is logged, counted and returned as the status to
/// answer.
async fn admit<'c>(
    ctx: &'c Ctx,
    req: &InboundConnect,
    start: tokio::time::Instant,
    l7: bool,
) -> Result<Admitted<'c>, StatusCode> {
    let authority = req.authority;
    let src_identity = &req.conn.peer_identity;
    let state = ctx.state.load_full();
    let local_ip = req.conn.local_addr.ip();
    let hbone_port = ctx.hbone_port(&state);
    let hbone_addr = req.conn.local_addr;
    let (asserted, host) = {
        let h = req.connect_headers();
        (h.client, h.host)
    };
    // Authorization (`ipBlocks`, `source.ip`) uses the TCP peer address; until the peer is
    // known to be entitled to assert another client address, the log shows the peer too.
    let peer = req.conn.peer_addr;
    let source_ip = peer.ip();
    let mut client = Some(peer);
    let access = &ctx.telemetry.access;
    let dst = match ctx.local_workload(&state, authority.ip()) {
        // The HBONE port itself is never a destination: that would loop into ourselves.
        Some(w) if w.address == local_ip && authority.port() != hbone_port => w,
        _ => {
            warn!(
                %authority,
                src.identity = %src_identity,
                "CONNECT to an address that is not this listener's workload: 400"
            );
            let mut rec = observe::record(
                "inbound",
                client,
                None,
                Some(src_identity.as_str()),
                Some(authority),
                None,
                SecurityPolicy::MutualTls,
            );
            rec.dst_hbone_addr = Some(hbone_addr);
            observe::log_refusal(
                access,
                rec,
                "CONNECT authority is not this listener's workload (400)",
                start,
            );
            return Err(StatusCode::BAD_REQUEST);
        }
    };
    // A workload with waypoints (its own, or its services') accepts traffic only from them
    // (Istio: the waypoint is where its L7 policy is enforced; skipping it is refused).
    if let Some(wps) = state.waypoints_of.get(&dst.key())
        && !wps.iter().any(|w| w.identity == *src_identity)
    {
        let via: Vec<String> = wps.iter().map(|w| w.key()).collect();
        warn!(
            target: "access",
            direction = "inbound",
            src.identity = %src_identity,
            dst.workload = %dst.key(),
            waypoints = %via.join(","),
            "connection refused: must come through the workload's waypoint: 401"
        );
        let labels = observe::labels(
            Reporter::Destination,
            &observe::identity_labels(src_identity.as_str(), src_identity.namespace()),
            &dst.telemetry,
            None,
            SecurityPolicy::MutualTls,
        );
        ctx.telemetry.tcp.refused(&labels, ResponseFlags::Deny);
        let mut rec = observe::record(
            "inbound",
            client,
            None,
            Some(src_identity.as_str()),
            Some(authority),
            Some(&dst),
            SecurityPolicy::MutualTls,
        );
        rec.dst_hbone_addr = Some(hbone_addr);
        let reason = format!("not from the workload's waypoint {} (401)", via.join(", "));
        observe::log_refusal(access, rec, &reason, start);
        return Err(StatusCode::UNAUTHORIZED);
    }
    // Only the workload's own waypoint may assert the original client (`Forwarded`): from any
    // other mesh peer the header is ignored, or any certificate holder could claim any IP.
    if asserted.is_some()
        && state
            .waypoints_of
            .get(&dst.key())
            .is_some_and(|wps| wps.iter().any(|w| w.identity == *src_identity))
    {
        client = asserted;
    }
    // The source workload, when the client address is a workload with the peer's identity;
    // otherwise only what the certificate tells.
    let src = state
        .workload_by_ip(client.map_or(source_ip, |c| c.ip()))
        .filter(|w| w.identity == *src_identity)
        .cloned();
    let src_labels = match &src {
        Some(w) => w.telemetry.clone(),
        None => observe::identity_labels(src_identity.as_str(), src_identity.namespace()),
    };
    let service = host
        .as_deref()
        .and_then(|h| state.service_by_hostname(&h.to_ascii_lowercase()));
    let labels = observe::labels(
        Reporter::Destination,
        &src_labels,
        &dst.telemetry,
        service.map(|s| &s.telemetry),
        SecurityPolicy::MutualTls,
    );
    let record = || {
        let mut rec = observe::record(
            "inbound",
            client,
            src.as_deref(),
            Some(src_identity.as_str()),
            Some(authority),
            Some(&dst),
            SecurityPolicy::MutualTls,
        );
        rec.dst_hbone_addr = Some(hbone_addr);
        rec.dst_service = host.as_deref();
        rec
    };
    // L4 authorization, by the destination's ztunnel (Istio: the enforcement point is the
    // receiving side): `source.ip` is the TCP peer; `remote.ip` the original client that the
    // workload's waypoint asserted, else the peer.
    let principal = src_identity
        .as_str()
        .strip_prefix("spiffe://")
        .unwrap_or(src_identity.as_str());
    if l7 {
        // Authorized per request (with the HTTP fields), connected per request.
        return Ok(Admitted {
            live: None,
            dst,
            src,
            client,
            host,
            upstream: None,
        });
    }
    drop(state);
    // Register → decide → guard (the one admission path): a policy change during the app
    // connect or the tunnel's life closes it.
    let close = CancellationToken::new();
    let admitted = ctx.live.admit(
        super::LiveInbound {
            workload: dst.key(),
            source_ip,
            // `remote.ip` / `remoteIpBlocks`: evaluated by a sidecar against the original
            // client (as Istio's sidecars); a ztunnel has none, so they are HTTP-level there
            // (Istio's ztunnel: an ALLOW rule using them never matches).
            remote_ip: ctx
                .layers()
                .inbound_http
                .then(|| client.map_or(source_ip, |c| c.ip())),
            principal: Some(principal.to_owned()),
            namespace: Some(src_identity.namespace().to_owned()),
            destination: authority,
            close: close.clone(),
        },
        &ctx.state,
    );
    let refuse = |policy: &str| {
        warn!(
            target: "access",
            direction = "inbound",
            src.addr = %source_ip,
            src.identity = %src_identity,
            dst.addr = %authority,
            dst.workload = %dst.key(),
            reason = %policy,
            "connection refused by authorization policy: 401"
        );
        ctx.telemetry.tcp.refused(&labels, ResponseFlags::Deny);
        observe::log_refusal(access, record(), &format!("{policy} (401)"), start);
        StatusCode::UNAUTHORIZED
    };
    let live = match admitted {
        Ok(guard) => guard,
        Err(policy) => return Err(refuse(&policy)),
    };
    let app_client = client.map_or(source_ip, |c| c.ip());
    let connect = super::connect::connect_app(ctx, &dst, authority, Some(app_client));
    let upstream = tokio::select! {
        biased;
        () = close.cancelled() => return Err(refuse("no longer allowed by the new policies (during connect)")),
        r = connect => match r {
            Ok(u) => u,
            Err(super::connect::ConnectError { reason, .. }) => {
                warn!(%authority, %reason, dst.workload = %dst.key(), "application unreachable: 503");
                ctx.telemetry
                    .tcp
                    .refused(&labels, ResponseFlags::ConnectFailure);
                observe::log_refusal(access, record(), &format!("{reason} (503)"), start);
                return Err(StatusCode::SERVICE_UNAVAILABLE);
            }
        },
    };
    let rec = ctx.telemetry.tcp.open(&labels);
    Ok(Admitted {
        live: Some((live, close)),
        dst,
        src,
        client,
        host,
        upstream: Some((upstream, rec)),
    })
}
