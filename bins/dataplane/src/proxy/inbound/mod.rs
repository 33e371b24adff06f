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
use mesh_telemetry::metrics::{Reporter, SecurityPolicy};

use super::{Ctx, observe};

mod admit;
mod app_tunnel;

use admit::admit;

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

/// A sidecar's inbound CONNECT that is served as HTTP: the workload's JWT and policies
/// (with HTTP fields) are evaluated per request. `Some(h2)` when the port is declared
/// `HTTP` (`false`), `HTTP2` or `GRPC` (`true`) and the workload has such policies, a
/// `RequestAuthentication` or an HTTP rate limit; otherwise connection-level L4 applies.
pub(super) fn l7_inbound(ctx: &Ctx, authority: SocketAddr) -> Option<bool> {
    if !ctx.layers().inbound_http {
        return None;
    }
    let state = ctx.state.load();
    let w = state.workload_by_ip(authority.ip())?;
    let key = w.key();
    // HTTP rate limits (EnvoyFilter, SIDECAR_INBOUND) are enforced per request too.
    let rate_limited = state
        .rate_limits
        .inbound
        .get(&w.address)
        .is_some_and(|p| p.has_http());
    if state.authz.http_policies(&key).is_none()
        && !state.sidecar_authn.contains_key(&key)
        && !rate_limited
    {
        return None;
    }
    state
        .port_protocols
        .get(&(key, authority.port()))
        .and_then(|p| p.h2())
}

/// Serves an admitted CONNECT as HTTP to the local app ([`l7_inbound`]).
async fn serve_l7(ctx: Arc<Ctx>, req: InboundConnect, h2: bool, start: tokio::time::Instant) {
    let authority = req.authority;
    let src_identity = req.conn.peer_identity.clone();
    let a = match Box::pin(admit(&ctx, &req, start, true)).await {
        Ok(a) => a,
        Err(status) => return req.refuse(status),
    };
    let tunnel = match accept(&ctx, req, &a.dst) {
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
        profile: super::profiles::Profile::server_side(a.dst, authority.port(), true),
        h2,
    };
    super::http::serve(tunnel, stream).await;
}

/// Answers an admitted CONNECT 200, with destination `dst`'s `baggage` unless
/// `--response-baggage false` (`ENABLE_RESPONSE_BAGGAGE=false`), as Istio 1.29+'s ztunnel.
fn accept(
    ctx: &Ctx,
    req: InboundConnect,
    dst: &crate::config::Workload,
) -> Result<mesh_hbone::H2Stream, mesh_hbone::Error> {
    let baggage = ctx.cfg.response_baggage.then(|| observe::baggage(dst));
    req.accept_with_baggage(baggage.as_ref())
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
    let tunnel = match accept(&ctx, req, &a.dst) {
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
        // The destination's own view, as Istio's ztunnel logs it (`observe::log_copied`).
        rec.bytes_sent = from_app;
        rec.bytes_recv = to_app;
        rec.duration = observe::duration(start);
        if error.is_some() {
            rec.outcome = Some(Outcome::Error);
            rec.reason = error.as_deref();
        }
        access.log(&rec);
    }
}
