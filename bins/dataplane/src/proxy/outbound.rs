//! Outbound: a local workload's connection (via SOCKS5 or a service VIP listener) to its
//! destination — HBONE to the destination workload's node, plain TCP to a workload outside the
//! mesh, or passthrough for addresses the mesh does not know.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use mesh_telemetry::access::Outcome;
use mesh_telemetry::metrics::{Reporter, ResponseFlags, SecurityPolicy};

use super::outbound_dial::{Dest, attempts};
use super::role::NetnsKey;
use super::route::{Route, route};
use super::sniff::Sniffed;
use super::{Ctx, observe};
use crate::config::Workload;
use crate::socks5::{self, Reply, Target};

const SOCKS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one SOCKS5 client.
pub(super) async fn socks5(ctx: Arc<Ctx>, mut tcp: TcpStream, peer: SocketAddr) {
    let hs = tokio::time::timeout(SOCKS_HANDSHAKE_TIMEOUT, socks5::handshake(&mut tcp)).await;
    let (target, early) = match hs {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return debug!(error = %e, "socks5 handshake failed"),
        Err(_) => return debug!("socks5 handshake timed out"),
    };
    proxy(ctx, tcp, peer, target, early, true, None).await;
}

/// Serves one connection to a service VIP listener: the destination is the listener address.
pub(super) async fn service(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr) {
    match tcp.local_addr() {
        Ok(vip) => proxy(ctx, tcp, peer, Target::Addr(vip), Vec::new(), false, None).await,
        Err(e) => warn!(error = %e, "no local address"),
    }
}

/// Serves one connection that capture rules redirected to the outbound listener: the
/// destination is the one the application connected to (`SO_ORIGINAL_DST`). On an in-pod
/// listener (`ns`), the source is the workload of that namespace (`outbound_src`).
pub(super) async fn captured(
    ctx: Arc<Ctx>,
    tcp: TcpStream,
    peer: SocketAddr,
    ns: Option<NetnsKey>,
) {
    let Some(dst) = crate::sockets::original_dst(&tcp) else {
        return warn!(src.addr = %peer, "outbound connection was not redirected by capture rules: closed");
    };
    // The proxy's own listeners are never a destination: a workload must not reach admin or
    // metrics through its proxy, and a capture rule that also caught the proxy's own
    // connections would loop here.
    if ctx.own.contains(dst) {
        return warn!(src.addr = %peer, dst.addr = %dst, "captured outbound connection to the proxy's own listener: closed");
    }
    proxy(ctx, tcp, peer, Target::Addr(dst), Vec::new(), false, ns).await;
}

async fn reply(tcp: &mut TcpStream, socks: bool, r: Reply) {
    if socks {
        let _ = socks5::send_reply(tcp, r).await;
    }
}

async fn proxy(
    ctx: Arc<Ctx>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    target: Target,
    early: Vec<u8>,
    socks: bool,
    ns: Option<NetnsKey>,
) {
    let start = tokio::time::Instant::now();
    if let Some(ns) = &ns
        && let Err(e) = super::outbound_src::wait_for(&ctx, ns, peer.ip()).await
    {
        ctx.telemetry
            .connections_refused
            .get_or_create(&[("listener", "outbound"), ("limit", "source")])
            .inc();
        return warn!(src.addr = %peer, reason = %e, "refused: no source workload for an in-pod outbound connection");
    }
    let state = ctx.state.load_full();
    // The source workload is known from the client's address; only this node's workloads may
    // use this node's ztunnel (it holds only their identities). In-pod, the source is the
    // namespace's workload, checked against the client's address above.
    let src = match &ns {
        Some(ns) => super::outbound_src::resolve(&ctx, &state, ns, peer.ip()).ok(),
        None => ctx.local_workload(&state, peer.ip()),
    };
    let src = match src {
        Some(w) => w,
        None => {
            warn!(
                src.addr = %peer,
                node = %ctx.node_name,
                "refused: client address is not a workload of this node"
            );
            return reply(&mut tcp, socks, Reply::NotAllowed).await;
        }
    };
    // A sidecar routes HTTP to services without a waypoint itself, per request (with a
    // waypoint, L7 happens there, once).
    if ctx.layers().outbound_http
        && !socks
        && let Target::Addr(addr) = &target
        && let Some(sp) = state
            .vip_for_client(*addr, &src.namespace)
            .filter(|sp| sp.service.waypoint.is_none() && sp.protocol.is_http())
            .cloned()
    {
        drop(state);
        let sniffed = super::sniff::peek(&tcp).await;
        let h2 = sp.protocol.h2().or(match sniffed {
            Sniffed::Http2 => Some(true),
            Sniffed::Http1 => Some(false),
            _ => None,
        });
        if let Some(h2) = h2 {
            let stream = super::http::Stream {
                ctx: ctx.clone(),
                service: Some(sp),
                client: Some(peer),
                src_identity: Some(src.identity.clone()),
                src_labels: src.telemetry.clone(),
                profile: super::profiles::Profile::client_side(src),
                h2,
            };
            // An HTTP connection that fails (an upstream cut mid-response) is reset. Boxed:
            // an HTTP server connection is a large future that an L4 tunnel's task must not
            // carry for the tunnel's life (task sizes: BENCHMARKS.md, issue 18).
            return Box::pin(super::http::serve(
                super::reset::ResetOnDrop::new(tcp),
                stream,
            ))
            .await;
        }
        // Not HTTP after all (an undeclared port): carried as TCP below.
        return Box::pin(l4(ctx, tcp, peer, src, target, early, socks, start)).await;
    }
    drop(state);
    l4(ctx, tcp, peer, src, target, early, socks, start).await;
}

/// The L4 path of an outbound connection: routed as a whole.
#[allow(clippy::too_many_arguments)]
async fn l4(
    ctx: Arc<Ctx>,
    tcp: TcpStream,
    peer: SocketAddr,
    src: Arc<Workload>,
    target: Target,
    early: Vec<u8>,
    socks: bool,
    start: tokio::time::Instant,
) {
    let state = ctx.state.load_full();
    let decision = route(&state, &target, &src.namespace);
    drop(state);
    // One `tunnel` call for both HBONE routes: two inline calls could each take room in this
    // future, which lives as long as the tunnel does.
    let dest = match decision {
        Route::Hbone {
            workload,
            port,
            hbone_addr,
            service,
        } => Dest {
            identity: workload.identity.clone(),
            hbone_addr,
            authority: SocketAddr::new(workload.address, port),
            workload: Some(workload),
            service,
            waypoint: None,
        },
        Route::Waypoint {
            waypoint,
            authority,
            service,
            workload,
        } => Dest {
            identity: waypoint.identity.clone(),
            hbone_addr: waypoint.hbone_addr(),
            authority,
            workload,
            service,
            waypoint: Some(waypoint),
        },
        // Boxed: rare paths; inline, their state would size every tunnel's task.
        other => {
            let rest = not_tunneled(&ctx, tcp, peer, &src, other, early, socks, start);
            return Box::pin(rest).await;
        }
    };
    tunnel(&ctx, tcp, peer, &src, dest, early, socks, start).await;
}

/// The routes of [`l4`] that are not an HBONE tunnel.
#[allow(clippy::too_many_arguments)]
async fn not_tunneled(
    ctx: &Ctx,
    mut tcp: TcpStream,
    peer: SocketAddr,
    src: &Workload,
    decision: Route,
    early: Vec<u8>,
    socks: bool,
    start: tokio::time::Instant,
) {
    match decision {
        // Tunnelled by `l4`, which never passes them here.
        Route::Hbone { .. } | Route::Waypoint { .. } => {}
        Route::Plain {
            addr,
            workload,
            service,
        } => {
            let labels = observe::labels(
                Reporter::Source,
                &src.telemetry,
                &workload.telemetry,
                service.as_ref().map(|s| &s.service.telemetry),
                SecurityPolicy::Unknown,
            );
            let host = service
                .as_ref()
                .and_then(|s| s.service.hosts.first().map(String::as_str));
            let dst = Some((&*workload, labels, host));
            plain(ctx, tcp, peer, src, addr, dst, early, socks, start).await;
        }
        Route::Passthrough(addr) => {
            plain(ctx, tcp, peer, src, addr, None, early, socks, start).await;
        }
        Route::NoEndpoints(sp) => {
            warn!(service = %sp.service.name, port = sp.port, "service has no endpoints");
            reply(&mut tcp, socks, Reply::HostUnreachable).await;
        }
        Route::UnknownHost(h) => {
            debug!(host = %h, "unknown host");
            reply(&mut tcp, socks, Reply::HostUnreachable).await;
        }
        Route::OtherNetwork(addr, network) => {
            other_network(ctx, src, peer, addr, &network, start);
            reply(&mut tcp, socks, Reply::HostUnreachable).await;
        }
    }
}

/// Carries one outbound connection through an HBONE tunnel to `dest`.
#[allow(clippy::too_many_arguments)]
async fn tunnel(
    ctx: &Ctx,
    mut tcp: TcpStream,
    peer: SocketAddr,
    src: &Workload,
    dest: Dest,
    early: Vec<u8>,
    socks: bool,
    start: tokio::time::Instant,
) {
    let access = &ctx.telemetry.access;
    let host = dest
        .service
        .as_ref()
        .and_then(|s| s.service.hosts.first().cloned());
    // Boxed: the dial's state (labels, certificate lookup, the pool's handshake) is large and
    // short-lived; inline it would stay in every tunnel's task for the tunnel's whole life
    // (idle-tunnel memory). It may move `dest` to another endpoint (connect retries).
    let mut dest = dest;
    let dialed = Box::pin(attempts(ctx, src, &mut dest, host.as_ref(), peer)).await;
    let dest = dest;
    let record = || {
        let mut rec = observe::record(
            "outbound",
            Some(peer),
            Some(src),
            Some(src.identity.as_str()),
            Some(dest.authority),
            dest.workload.as_deref(),
            SecurityPolicy::MutualTls,
        );
        rec.dst_identity = Some(dest.identity.as_str());
        rec.dst_hbone_addr = Some(dest.hbone_addr);
        rec.dst_service = host.as_deref();
        rec
    };
    let (tunnel, rec, _pool_slot) = match dialed {
        Ok(x) => x,
        Err(f) => {
            observe::log_refusal(access, record(), &f.reason, start);
            return reply(&mut tcp, socks, f.reply).await;
        }
    };
    reply(&mut tcp, socks, Reply::Success).await;
    let mut tunnel = tunnel;
    if !early.is_empty() {
        if let Err(e) = tunnel.write_all(&early).await {
            return debug!(error = %e, "early data");
        }
        rec.request_bytes(early.len() as u64);
    }
    // A tunnel that ends in an error (or is cut short) resets the client's connection.
    let mut tcp = super::reset::ResetOnDrop::new(tcp);
    let (mut r, mut w) = tcp.split();
    let counter = observe::TunnelBytes {
        rec: &rec,
        reporter: Reporter::Source,
    };
    let copy = mesh_hbone::copy_bidirectional(&mut r, &mut w, tunnel, &counter);
    // connectionPool.tcp maxConnectionDuration / idleTimeout close the tunnel (cleanly).
    let health = (dest.service.as_ref())
        .filter(|_| dest.waypoint.is_none())
        .and_then(|sp| ctx.health.for_service(&sp.service));
    let pool = health.as_deref().and_then(|h| h.pool());
    let result = match super::health::bounded(std::pin::pin!(copy), pool, || rec.totals()).await {
        Some(r) => r.map(|_| ()),
        None => {
            debug!(dst.addr = %dest.authority, "tunnel closed by connectionPool.tcp duration or idle limit");
            Ok(())
        }
    };
    if result.is_ok() {
        tcp.clean();
    }
    // Counted as they passed (early data included), so also right after an error.
    let (sent, received) = rec.totals();
    let error = result.err().map(|e| e.to_string());
    debug!(
        src.workload = %src.key(),
        dst.addr = %dest.authority,
        bytes_sent = sent,
        bytes_received = received,
        "connection complete"
    );
    if access.enabled() {
        let mut rec = record();
        rec.bytes_sent = sent;
        rec.bytes_recv = received;
        rec.duration = observe::duration(start);
        if error.is_some() {
            rec.outcome = Some(Outcome::Error);
            rec.reason = error.as_deref();
        }
        access.log(&rec);
    }
}

/// Plain TCP to a workload outside the mesh (counted in metrics) or passthrough to an address
/// the mesh does not know (access log only).
#[allow(clippy::too_many_arguments)]
async fn plain(
    ctx: &Ctx,
    mut tcp: TcpStream,
    peer: SocketAddr,
    src: &Workload,
    addr: SocketAddr,
    known: Option<(
        &Workload,
        mesh_telemetry::metrics::ConnectionLabels,
        Option<&str>,
    )>,
    early: Vec<u8>,
    socks: bool,
    start: tokio::time::Instant,
) {
    let access = &ctx.telemetry.access;
    let (dst_workload, dst_service, labels) = match known {
        Some((w, labels, host)) => (Some(w), host, Some(labels)),
        None => (None, None, None),
    };
    let record = || {
        let mut rec = observe::record(
            "outbound",
            Some(peer),
            Some(src),
            Some(src.identity.as_str()),
            Some(addr),
            dst_workload,
            SecurityPolicy::Unknown,
        );
        rec.dst_service = dst_service;
        rec
    };
    let mut upstream = match super::connect::connect_out(ctx, addr, ctx.socket_source(src).as_ref())
        .await
    {
        Ok(u) => u,
        Err(e) => {
            debug!(reason = %e.reason, "plaintext connect failed");
            if let Some(labels) = &labels {
                ctx.telemetry
                    .tcp
                    .refused(labels, ResponseFlags::ConnectFailure);
            }
            observe::log_refusal(access, record(), &e.reason, start);
            let r = if e.own {
                warn!(src.addr = %peer, dst.addr = %addr, "refused: destination is this proxy's own listener");
                Reply::NotAllowed
            } else if e.timed_out {
                Reply::HostUnreachable
            } else {
                Reply::ConnectionRefused
            };
            return reply(&mut tcp, socks, r).await;
        }
    };
    // DestinationRule connectionPool.tcp of the addressed service: keepalive, duration, idle.
    let health = dst_service.and_then(|h| ctx.health.host(h));
    let pool = health.as_deref().and_then(|h| h.pool());
    super::health::keepalive(&upstream, pool);
    // The label set is consumed here, not stored in the task for the connection's life.
    let rec = labels.map(|l| ctx.telemetry.tcp.open(&l));
    reply(&mut tcp, socks, Reply::Success).await;
    if !early.is_empty() {
        if upstream.write_all(&early).await.is_err() {
            return;
        }
        if let Some(r) = &rec {
            r.request_bytes(early.len() as u64);
        }
    }
    // A copy that fails resets both sides (a cut connection never looks complete).
    let mut tcp = super::reset::ResetOnDrop::new(tcp);
    let mut upstream = super::reset::ResetOnDrop::new(upstream);
    let result = match &rec {
        Some(r) => {
            let copy = observe::copy_counted(&mut tcp, &mut upstream, r);
            match super::health::bounded(std::pin::pin!(copy), pool, || r.totals()).await {
                Some(res) => res,
                // Closed by maxConnectionDuration / idleTimeout: a clean close.
                None => Ok((0, 0)),
            }
        }
        None => tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await,
    };
    if result.is_ok() {
        tcp.clean();
        upstream.clean();
    }
    let totals = rec.as_ref().map(|r| r.totals());
    observe::log_copied(access, record(), &result, early.len() as u64, totals, start);
}

/// Logs and counts a connection to a workload on another network (`NR`): multi-network
/// meshes need a network gateway, which is not supported, and the address may be another
/// host on ours, so it is never dialled.
fn other_network(
    ctx: &Ctx,
    src: &Workload,
    peer: SocketAddr,
    addr: SocketAddr,
    network: &str,
    start: tokio::time::Instant,
) {
    warn!(src.addr = %peer, dst.addr = %addr, dst.network = %network, "refused: the destination is a workload on another network (network gateways are not supported)");
    let labels = observe::labels(
        Reporter::Source,
        &src.telemetry,
        &mesh_telemetry::metrics::PeerLabels::unknown(),
        None,
        SecurityPolicy::Unknown,
    );
    let rec = observe::record(
        "outbound",
        Some(peer),
        Some(src),
        Some(src.identity.as_str()),
        Some(addr),
        None,
        SecurityPolicy::Unknown,
    );
    let counted = Some((&labels, ResponseFlags::NoRoute));
    observe::refuse(
        &ctx.telemetry,
        counted,
        rec,
        "destination on another network (no network gateway)",
        start,
    );
}
