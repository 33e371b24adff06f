//! Plaintext inbound (Istio's 15006): connections that capture rules (iptables REDIRECT or
//! DNAT) sent here instead of to a local workload. The original destination comes from
//! `SO_ORIGINAL_DST`; it must be a workload of this node. Its `PeerAuthentication` decides:
//! STRICT refuses plaintext (the connection is closed, logged and counted with
//! `response_flags="DENY"`), PERMISSIVE (the default) accepts it after L4 authorization with
//! no peer identity, as Istio's ztunnel does.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_telemetry::access::ConnectionRecord;
use mesh_telemetry::metrics::{
    ConnectionLabels, PeerLabels, Reporter, ResponseFlags, SecurityPolicy,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Ctx, observe};
use crate::config::{MeshState, Workload};

/// A captured connection to a local workload: what its checks and log lines need.
struct Captured {
    peer: SocketAddr,
    dst_addr: SocketAddr,
    dst: Arc<Workload>,
    src: Option<Arc<Workload>>,
    start: tokio::time::Instant,
}

impl Captured {
    fn record(&self) -> ConnectionRecord<'_> {
        observe::record(
            "inbound",
            Some(self.peer),
            self.src.as_deref(),
            None,
            Some(self.dst_addr),
            Some(&self.dst),
            SecurityPolicy::Unknown,
        )
    }
}

/// Serves one captured plaintext connection.
pub(super) async fn serve(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr) {
    let start = tokio::time::Instant::now();
    let Some(dst_addr) = original_destination(&ctx, &tcp, peer, start) else {
        return;
    };
    let state = ctx.state.load_full();
    let Some(dst) = destination(&ctx, &state, peer, dst_addr, start) else {
        return;
    };
    let c = Captured {
        peer,
        dst_addr,
        dst,
        src: state.workload_by_ip(peer.ip()).cloned(),
        start,
    };
    let src_labels = c
        .src
        .as_ref()
        .map_or_else(PeerLabels::unknown, |w| PeerLabels {
            // A plaintext peer proves no identity.
            principal: mesh_telemetry::metrics::Str::from(mesh_telemetry::metrics::UNKNOWN),
            ..w.telemetry.clone()
        });
    let labels = observe::labels(
        Reporter::Destination,
        &src_labels,
        &c.dst.telemetry,
        None,
        SecurityPolicy::Unknown,
    );
    // PeerAuthentication STRICT: only mutual TLS (HBONE) may reach this workload port.
    if state.mtls.strict(&c.dst.key(), dst_addr.port()) {
        warn!(
            target: "access",
            direction = "inbound",
            src.addr = %peer,
            dst.addr = %dst_addr,
            dst.workload = %c.dst.key(),
            "plaintext refused: PeerAuthentication STRICT"
        );
        let reason = "plaintext refused: PeerAuthentication is STRICT";
        let counted = Some((&labels, ResponseFlags::Deny));
        return observe::refuse(&ctx.telemetry, counted, c.record(), reason, start);
    }
    drop(state);
    // Where the inbound HTTP layer is on, declared HTTP ports of a workload with HTTP-field
    // policies or JWT rules are served per request (no peer identity), as on HBONE inbound.
    // Authorized per request there, so the connection's token is taken here.
    if let Some(h2) = super::inbound::l7_inbound(&ctx, dst_addr) {
        if !admit_connection(&ctx, &c, &labels) {
            return;
        }
        let stream = super::http::Stream {
            ctx: ctx.clone(),
            service: None,
            client: Some(peer),
            src_labels,
            src_identity: None,
            profile: super::profiles::Profile::server_side(c.dst, dst_addr.port(), false),
            h2,
        };
        return super::http::serve(tcp, stream).await;
    }
    drop(src_labels);
    Box::pin(admit_and_carry(&ctx, tcp, &c, labels)).await;
}

/// The address the client dialled: TPROXY keeps it as the socket's own address,
/// REDIRECT/DNAT leave it in conntrack. `None` (logged): not a captured connection.
fn original_destination(
    ctx: &Ctx,
    tcp: &TcpStream,
    peer: SocketAddr,
    start: tokio::time::Instant,
) -> Option<SocketAddr> {
    let original = if ctx.layers().transparent_inbound {
        tcp.local_addr().ok()
    } else {
        // A ZDS pod's listener is transparent: istio-cni's in-pod rules TPROXY to it.
        crate::sockets::original_dst(tcp).or_else(|| {
            crate::sockets::is_transparent(tcp)
                .then(|| tcp.local_addr().ok())
                .flatten()
        })
    };
    if original.is_none() {
        warn!(src.addr = %peer, "plaintext inbound connection was not redirected by capture rules: closed");
        let rec = observe::record(
            "inbound",
            Some(peer),
            None,
            None,
            tcp.local_addr().ok(),
            None,
            SecurityPolicy::Unknown,
        );
        let reason = "no original destination (not a captured connection)";
        observe::refuse(&ctx.telemetry, None, rec, reason, start);
    }
    original
}

/// The local workload at `dst_addr`; never the proxy's own ports (a capture rule that also
/// matched the proxy's own connections would loop back here). `None` (logged): refused.
fn destination(
    ctx: &Ctx,
    state: &MeshState,
    peer: SocketAddr,
    dst_addr: SocketAddr,
    start: tokio::time::Instant,
) -> Option<Arc<Workload>> {
    let own_port =
        dst_addr.port() == ctx.hbone_port(state) || Some(dst_addr) == ctx.cfg.plaintext_addr;
    let dst = ctx
        .local_workload(state, dst_addr.ip())
        .filter(|_| !own_port);
    if dst.is_none() {
        warn!(src.addr = %peer, dst.addr = %dst_addr, "plaintext inbound to an address that is not a workload of this node: closed");
        let rec = observe::record(
            "inbound",
            Some(peer),
            None,
            None,
            Some(dst_addr),
            None,
            SecurityPolicy::Unknown,
        );
        let reason = "destination is not a workload of this node";
        observe::refuse(&ctx.telemetry, None, rec, reason, start);
    }
    dst
}

/// Takes a token from the workload's connection rate limit (Envoy's network local rate
/// limit); `false` (logged, counted `RL`): the connection is closed.
fn admit_connection(ctx: &Ctx, c: &Captured, labels: &ConnectionLabels) -> bool {
    if ctx
        .state
        .load()
        .rate_limits
        .admit_connection(c.dst.address, c.start)
    {
        return true;
    }
    let reason = "connection rate limit exceeded";
    let counted = Some((labels, ResponseFlags::RateLimited));
    observe::refuse(&ctx.telemetry, counted, c.record(), reason, c.start);
    false
}

/// Register → decide → guard, the one admission path: L4 authorization with no peer
/// identity (policies on principals or namespaces do not match plaintext, as in Istio), and a
/// DENY or STRICT landing during the app connect or later closes the connection. Then the
/// app connect and the copy.
async fn admit_and_carry(ctx: &Ctx, tcp: TcpStream, c: &Captured, labels: ConnectionLabels) {
    let close = CancellationToken::new();
    let admitted = ctx.live.admit(
        super::LiveInbound {
            workload: c.dst.key(),
            source_ip: c.peer.ip(),
            // `remote.ip` where the inbound HTTP layer is on (Istio's sidecars); a ztunnel
            // has none (Istio's).
            remote_ip: ctx.layers().inbound_http.then_some(c.peer.ip()),
            principal: None,
            namespace: None,
            destination: c.dst_addr,
            close: close.clone(),
        },
        &ctx.state,
    );
    let refuse = |reason: &str| {
        warn!(
            target: "access",
            direction = "inbound",
            src.addr = %c.peer,
            dst.addr = %c.dst_addr,
            dst.workload = %c.dst.key(),
            %reason,
            "plaintext connection refused by authorization policy"
        );
        let counted = Some((&labels, ResponseFlags::Deny));
        observe::refuse(&ctx.telemetry, counted, c.record(), reason, c.start);
    };
    let _live = match admitted {
        Ok(guard) => guard,
        Err(reason) => return refuse(&reason),
    };
    // After authorization: a denied peer does not spend the workload's connection tokens.
    if !admit_connection(ctx, c, &labels) {
        return;
    }
    let connect = connect_app(ctx, c);
    let upstream = tokio::select! {
        biased;
        () = close.cancelled() => return refuse("no longer allowed by the new policies (during connect)"),
        r = connect => r,
    };
    let upstream = match upstream {
        Ok(u) => u,
        Err(reason) => {
            debug!(%reason, "application unreachable");
            let counted = Some((&labels, ResponseFlags::ConnectFailure));
            return observe::refuse(&ctx.telemetry, counted, c.record(), &reason, c.start);
        }
    };
    let rec = ctx.telemetry.tcp.open(&labels);
    drop(labels);
    // A copy that fails (one side reset, a policy change closed it) resets both sides: a cut
    // connection never looks like a complete, shorter one.
    let mut tcp = super::reset::ResetOnDrop::new(tcp);
    let mut upstream = super::reset::ResetOnDrop::new(upstream);
    let result = tokio::select! {
        biased;
        () = close.cancelled() => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "closed: no longer allowed by the new policies",
        )),
        r = observe::copy_counted(&mut tcp, &mut upstream, &rec) => r,
    };
    if result.is_ok() {
        tcp.clean();
        upstream.clean();
    }
    let access = &ctx.telemetry.access;
    observe::log_copied(access, c.record(), &result, 0, Some(rec.totals()), c.start);
}

/// Connects to the workload. One with an application tunnel (`application_tunnel: PROXY`) is
/// reached on its tunnel's port and gets our PROXY v2 header first (source = the plaintext
/// peer, no `0xD0`: it proved no identity, no `0xD1`: it names none), so a header the client forged is payload after
/// ours, never believed. istio/ztunnel's inbound passthrough writes no header and connects to
/// the original port, letting a plaintext client that reaches the tunnel's port forge `0xD0`.
async fn connect_app(ctx: &Ctx, c: &Captured) -> Result<TcpStream, String> {
    let Some(tunnel) = c.dst.application_tunnel else {
        let r = super::connect::connect_app(ctx, &c.dst, c.dst_addr, Some(c.peer.ip())).await;
        return r.map_err(|e| e.reason);
    };
    let to = SocketAddr::new(c.dst_addr.ip(), tunnel.port_for(c.dst_addr.port()));
    let mut upstream = super::connect::connect_app(ctx, &c.dst, to, Some(c.peer.ip()))
        .await
        .map_err(|e| e.reason)?;
    let header = mesh_hbone::proxy_protocol::header(c.peer, c.dst_addr, None, None)
        .map_err(|e| e.to_string())?;
    upstream
        .write_all(&header)
        .await
        .map_err(|e| format!("writing the PROXY header: {e}"))?;
    Ok(upstream)
}
