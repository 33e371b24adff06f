//! Admission of an inbound CONNECT: the authority must be this listener's workload (400),
//! a workload behind waypoints accepts only them (401), the original client is believed only
//! from the workload's own waypoint, then register → decide → guard (401) and the app connect
//! (503). Each refusal is logged and counted once.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh_hbone::InboundConnect;
use mesh_telemetry::access::ConnectionRecord;
use mesh_telemetry::metrics::{
    ConnectionLabels, ConnectionRecorder, Reporter, ResponseFlags, SecurityPolicy,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::super::{Ctx, observe};
use crate::config::{MeshState, Workload};

/// A CONNECT that passed the checks: what the tunnel's life and its log line need.
pub(super) struct Admitted<'a> {
    pub(super) dst: Arc<Workload>,
    pub(super) src: Option<Arc<Workload>>,
    pub(super) client: Option<SocketAddr>,
    pub(super) host: Option<String>,
    /// The app connection and its metrics (none when served as HTTP: connected per request).
    pub(super) upstream: Option<(TcpStream, ConnectionRecorder)>,
    /// The registration that a policy change cancels (`close`); none when served as HTTP
    /// (authorized per request).
    pub(super) live: Option<(super::super::LiveGuard<'a>, CancellationToken)>,
}

/// What the checks know of a CONNECT, for its refusals' log lines and its metrics.
struct Checked<'r> {
    req: &'r InboundConnect,
    dst: Option<Arc<Workload>>,
    src: Option<Arc<Workload>>,
    /// The client as logged: the TCP peer, or the address the workload's waypoint asserted.
    client: Option<SocketAddr>,
    host: Option<String>,
    start: tokio::time::Instant,
}

impl Checked<'_> {
    fn record(&self) -> ConnectionRecord<'_> {
        let mut rec = observe::record(
            "inbound",
            self.client,
            self.src.as_deref(),
            Some(self.req.conn.peer_identity.as_str()),
            Some(self.req.authority),
            self.dst.as_deref(),
            SecurityPolicy::MutualTls,
        );
        rec.dst_hbone_addr = Some(self.req.conn.local_addr);
        rec.dst_service = self.host.as_deref();
        rec
    }

    /// Logs (and counts, with the labels when known) a refusal; returns the status to answer.
    fn refuse(
        &self,
        ctx: &Ctx,
        counted: Option<(&ConnectionLabels, ResponseFlags)>,
        reason: &str,
        status: StatusCode,
    ) -> StatusCode {
        observe::refuse(&ctx.telemetry, counted, self.record(), reason, self.start);
        status
    }
}

/// Checks a CONNECT (its authority is this listener's workload, the waypoint rule, the
/// authorization policy) and connects to the application; with `l7`, stops before the policy
/// (evaluated per request) and the connect (per request). A refusal is logged, counted and
/// returned as the status to answer.
pub(super) async fn admit<'c>(
    ctx: &'c Ctx,
    req: &InboundConnect,
    start: tokio::time::Instant,
    l7: bool,
) -> Result<Admitted<'c>, StatusCode> {
    let state = ctx.state.load_full();
    let mut c = Checked {
        req,
        dst: None,
        src: None,
        client: Some(req.conn.peer_addr),
        // Set by `from_its_waypoint`, when believed (`believed_host`).
        host: None,
        start,
    };
    let dst = destination(ctx, &state, &c)?;
    c.dst = Some(dst.clone());
    from_its_waypoint(ctx, &state, &dst, &mut c)?;
    // The source workload, when the client address is a workload with the peer's identity;
    // otherwise only what the certificate tells.
    let src_identity = &req.conn.peer_identity;
    c.src = state
        .workload_by_ip(c.client.map_or(req.conn.peer_addr.ip(), |a| a.ip()))
        .filter(|w| w.identity == *src_identity)
        .cloned();
    if l7 {
        // Authorized per request (with the HTTP fields), connected per request: the
        // connection's rate limit token is taken at admission.
        admit_connection(ctx, &state, &c, &dst, None)?;
        return Ok(Admitted {
            live: None,
            dst,
            src: c.src,
            client: c.client,
            host: c.host,
            upstream: None,
        });
    }
    let labels = labels(&state, &c, &dst);
    drop(state);
    let (live, close, upstream) = authorize_and_connect(ctx, &c, &dst, &labels).await?;
    let rec = ctx.telemetry.tcp.open(&labels);
    Ok(Admitted {
        live: Some((live, close)),
        dst,
        src: c.src,
        client: c.client,
        host: c.host,
        upstream: Some((upstream, rec)),
    })
}

/// Takes a token from the workload's connection rate limit (Envoy's network local rate
/// limit closes the connection; a tunnel gets 429, which the caller neither retries nor
/// counts against the endpoint's health).
fn admit_connection(
    ctx: &Ctx,
    state: &MeshState,
    c: &Checked<'_>,
    dst: &Workload,
    labels: Option<&ConnectionLabels>,
) -> Result<(), StatusCode> {
    if state.rate_limits.admit_connection(dst.address, c.start) {
        return Ok(());
    }
    let made;
    let labels = match labels {
        Some(l) => l,
        None => {
            made = self::labels(state, c, dst);
            &made
        }
    };
    let counted = Some((labels, ResponseFlags::RateLimited));
    let reason = "connection rate limit exceeded (429)";
    Err(c.refuse(ctx, counted, reason, StatusCode::TOO_MANY_REQUESTS))
}

/// The local workload the CONNECT names: it must be this listener's (the certificate
/// presented was its), and not the HBONE port itself (a loop into ourselves).
fn destination(ctx: &Ctx, state: &MeshState, c: &Checked<'_>) -> Result<Arc<Workload>, StatusCode> {
    let authority = c.req.authority;
    let local = c.req.conn.local_addr;
    match ctx.local_workload(state, authority.ip()) {
        Some(w) if w.address == local.ip() && authority.port() != ctx.hbone_port(state) => Ok(w),
        _ => {
            warn!(
                %authority,
                src.identity = %c.req.conn.peer_identity,
                "CONNECT to an address that is not this listener's workload: 400"
            );
            Err(c.refuse(
                ctx,
                None,
                "CONNECT authority is not this listener's workload (400)",
                StatusCode::BAD_REQUEST,
            ))
        }
    }
}

/// A workload with waypoints (its own, or its services') accepts traffic only from them
/// (Istio: the waypoint is where its L7 policy is enforced; skipping it is refused, 401).
/// Only that waypoint may assert the original client and the targeted service (`Forwarded`
/// `for=` and `host=`): from any other mesh peer the header is ignored, or any certificate
/// holder could claim any IP, or any service (`destination_service`, TLV `0xD1`).
fn from_its_waypoint(
    ctx: &Ctx,
    state: &MeshState,
    dst: &Workload,
    c: &mut Checked<'_>,
) -> Result<(), StatusCode> {
    let Some(wps) = state.waypoints_of.get(&dst.key()) else {
        c.host = believed_host(state, dst, c, false);
        return Ok(());
    };
    let src_identity = &c.req.conn.peer_identity;
    if wps.iter().any(|w| w.identity == *src_identity) {
        if let Some(client) = c.req.connect_headers().client {
            c.client = Some(client);
        }
        c.host = believed_host(state, dst, c, true);
        return Ok(());
    }
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
    let reason = format!("not from the workload's waypoint {} (401)", via.join(", "));
    let counted = Some((&labels, ResponseFlags::Deny));
    Err(c.refuse(ctx, counted, &reason, StatusCode::UNAUTHORIZED))
}

/// The service the peer's `Forwarded: host=` names, when believed: one `dst` serves on the
/// CONNECT's port, or on any port from `dst`'s own waypoint.
fn believed_host(
    state: &MeshState,
    dst: &Workload,
    c: &Checked<'_>,
    from_waypoint: bool,
) -> Option<String> {
    let named = c.req.connect_headers().host?;
    let port = c.req.authority.port();
    (state.claimed_service_host(dst, port, &named, from_waypoint)).map(str::to_owned)
}

/// The connection's metric labels (destination reporter, mutual TLS).
fn labels(state: &MeshState, c: &Checked<'_>, dst: &Workload) -> ConnectionLabels {
    let src_identity = &c.req.conn.peer_identity;
    let src_labels = match &c.src {
        Some(w) => w.telemetry.clone(),
        None => observe::identity_labels(src_identity.as_str(), src_identity.namespace()),
    };
    let service = c
        .host
        .as_deref()
        .and_then(|h| state.service_by_hostname(&h.to_ascii_lowercase()));
    observe::labels(
        Reporter::Destination,
        &src_labels,
        &dst.telemetry,
        service.map(|s| &s.telemetry),
        SecurityPolicy::MutualTls,
    )
}

/// L4 authorization, by the destination's proxy (Istio: the enforcement point is the
/// receiving side), then the app connect: register → decide → guard (the one admission
/// path), so a policy change during the connect or the tunnel's life closes it.
/// `source.ip` is the TCP peer; `remote.ip` the original client that the workload's waypoint
/// asserted, else the peer.
async fn authorize_and_connect<'c>(
    ctx: &'c Ctx,
    c: &Checked<'_>,
    dst: &Workload,
    labels: &ConnectionLabels,
) -> Result<(super::super::LiveGuard<'c>, CancellationToken, TcpStream), StatusCode> {
    let src_identity = &c.req.conn.peer_identity;
    let authority = c.req.authority;
    let source_ip = c.req.conn.peer_addr.ip();
    let client_ip = c.client.map_or(source_ip, |a| a.ip());
    let principal = src_identity
        .as_str()
        .strip_prefix("spiffe://")
        .unwrap_or(src_identity.as_str());
    let close = CancellationToken::new();
    let admitted = ctx.live.admit(
        super::super::LiveInbound {
            workload: dst.key(),
            source_ip,
            // `remote.ip` / `remoteIpBlocks`: evaluated against the original client where the
            // inbound HTTP layer is on (as Istio's sidecars); a ztunnel has none, so they are
            // HTTP-level there (Istio's ztunnel: an ALLOW rule using them never matches).
            remote_ip: ctx.layers().inbound_http.then_some(client_ip),
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
        let reason = format!("{policy} (401)");
        c.refuse(
            ctx,
            Some((labels, ResponseFlags::Deny)),
            &reason,
            StatusCode::UNAUTHORIZED,
        )
    };
    let live = admitted.map_err(|policy| refuse(&policy))?;
    // After authorization: a denied peer does not spend the workload's connection tokens.
    admit_connection(ctx, &ctx.state.load(), c, dst, Some(labels))?;
    // An application tunnel may deliver on its own port (`application_tunnel.port`).
    let to = super::app_tunnel::target(dst, authority);
    let connect = super::super::connect::connect_app(ctx, dst, to, Some(client_ip));
    let upstream = tokio::select! {
        biased;
        () = close.cancelled() => {
            return Err(refuse("no longer allowed by the new policies (during connect)"));
        }
        r = connect => r,
    };
    match upstream {
        Ok(mut u) => {
            // `application_tunnel: PROXY`: the header goes first (503 if it cannot).
            let host = c.host.as_deref();
            match super::app_tunnel::write_header(dst, c.req, host, &mut u).await {
                Ok(()) => Ok((live, close, u)),
                Err(reason) => {
                    let counted = Some((labels, ResponseFlags::ConnectFailure));
                    let reason = format!("{reason} (503)");
                    Err(c.refuse(ctx, counted, &reason, StatusCode::SERVICE_UNAVAILABLE))
                }
            }
        }
        Err(super::super::connect::ConnectError { reason, .. }) => {
            warn!(%authority, %reason, dst.workload = %dst.key(), "application unreachable: 503");
            let counted = Some((labels, ResponseFlags::ConnectFailure));
            let reason = format!("{reason} (503)");
            Err(c.refuse(ctx, counted, &reason, StatusCode::SERVICE_UNAVAILABLE))
        }
    }
}
