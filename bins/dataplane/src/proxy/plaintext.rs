//! Plaintext inbound (Istio's 15006): connections that capture rules (iptables REDIRECT or
//! DNAT) sent here instead of to a local workload. The original destination comes from
//! `SO_ORIGINAL_DST`; it must be a workload of this node. Its `PeerAuthentication` decides:
//! STRICT refuses plaintext (the connection is closed, logged and counted with
//! `response_flags="DENY"`), PERMISSIVE (the default) accepts it after L4 authorization with
//! no peer identity, as Istio's ztunnel does.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_telemetry::metrics::{PeerLabels, Reporter, ResponseFlags, SecurityPolicy};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::{Ctx, observe};

/// Serves one captured plaintext connection.
pub(super) async fn serve(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr) {
    let start = tokio::time::Instant::now();
    let access = &ctx.telemetry.access;
    // TPROXY keeps the original destination as the socket's own address; REDIRECT/DNAT
    // leave it in conntrack.
    let original = if ctx.layers().transparent_inbound {
        tcp.local_addr().ok()
    } else {
        crate::sockets::original_dst(&tcp)
    };
    let Some(dst_addr) = original else {
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
        return observe::log_refusal(
            access,
            rec,
            "no original destination (not a captured connection)",
            start,
        );
    };
    let state = ctx.state.load_full();
    // Never deliver to the proxy's own ports: a capture rule that also matched the proxy's
    // own connections would loop back here.
    let own_port =
        dst_addr.port() == ctx.hbone_port(&state) || Some(dst_addr) == ctx.cfg.plaintext_addr;
    let dst = match ctx.local_workload(&state, dst_addr.ip()) {
        Some(w) if !own_port => w,
        _ => {
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
            return observe::log_refusal(
                access,
                rec,
                "destination is not a workload of this node",
                start,
            );
        }
    };
    let src = state.workload_by_ip(peer.ip()).cloned();
    let src_labels = src
        .as_ref()
        .map_or_else(PeerLabels::unknown, |w| PeerLabels {
            // A plaintext peer proves no identity.
            principal: mesh_telemetry::metrics::Str::from(mesh_telemetry::metrics::UNKNOWN),
            ..w.telemetry.clone()
        });
    let labels = observe::labels(
        Reporter::Destination,
        &src_labels,
        &dst.telemetry,
        None,
        SecurityPolicy::Unknown,
    );
    let record = || {
        observe::record(
            "inbound",
            Some(peer),
            src.as_deref(),
            None,
            Some(dst_addr),
            Some(&dst),
            SecurityPolicy::Unknown,
        )
    };
    // PeerAuthentication STRICT: only mutual TLS (HBONE) may reach this workload port.
    if state.mtls.strict(&dst.key(), dst_addr.port()) {
        warn!(
            target: "access",
            direction = "inbound",
            src.addr = %peer,
            dst.addr = %dst_addr,
            dst.workload = %dst.key(),
            "plaintext refused: PeerAuthentication STRICT"
        );
        ctx.telemetry.tcp.refused(&labels, ResponseFlags::Deny);
        return observe::log_refusal(
            access,
            record(),
            "plaintext refused: PeerAuthentication is STRICT",
            start,
        );
    }
    // A sidecar serves declared HTTP ports of a workload with HTTP-field policies or JWT
    // rules per request (no peer identity), as on its HBONE inbound.
    if let Some(h2) = super::inbound::l7_inbound(&ctx, dst_addr) {
        drop(state);
        let stream = super::http::Stream {
            ctx: ctx.clone(),
            service: None,
            client: Some(peer),
            src_labels,
            src_identity: None,
            profile: super::profiles::Profile::sidecar_inbound(dst, dst_addr.port(), false),
            h2,
        };
        return super::http::serve(tcp, stream).await;
    }
    drop(state);
    // Register → decide → guard, the one admission path: L4 authorization with no peer
    // identity (policies on principals or namespaces do not match plaintext, as in Istio),
    // and a DENY or STRICT landing during the app connect or later closes the connection.
    let close = tokio_util::sync::CancellationToken::new();
    let admitted = ctx.live.admit(
        super::LiveInbound {
            workload: dst.key(),
            source_ip: peer.ip(),
            // `remote.ip` at a sidecar (Istio's sidecars); a ztunnel has none (Istio's).
            remote_ip: ctx.layers().inbound_http.then_some(peer.ip()),
            principal: None,
            namespace: None,
            destination: dst_addr,
            close: close.clone(),
        },
        &ctx.state,
    );
    let refuse = |reason: &str| {
        warn!(
            target: "access",
            direction = "inbound",
            src.addr = %peer,
            dst.addr = %dst_addr,
            dst.workload = %dst.key(),
            %reason,
            "plaintext connection refused by authorization policy"
        );
        ctx.telemetry.tcp.refused(&labels, ResponseFlags::Deny);
        observe::log_refusal(access, record(), reason, start);
    };
    let _live = match admitted {
        Ok(guard) => guard,
        Err(reason) => return refuse(&reason),
    };
    let connect = super::connect::connect_app(&ctx, &dst, dst_addr, Some(peer.ip()));
    let upstream = tokio::select! {
        biased;
        () = close.cancelled() => return refuse("no longer allowed by the new policies (during connect)"),
        r = connect => match r {
            Ok(u) => u,
            Err(super::connect::ConnectError { reason, .. }) => {
                debug!(%reason, "application unreachable");
                ctx.telemetry
                    .tcp
                    .refused(&labels, ResponseFlags::ConnectFailure);
                return observe::log_refusal(access, record(), &reason, start);
            }
        },
    };
    let rec = ctx.telemetry.tcp.open(&labels);
    drop((labels, src_labels));
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
    observe::log_copied(access, record(), &result, 0, Some(rec.totals()), start);
}
