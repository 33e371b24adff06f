//! Outbound: a local workload's connection (via SOCKS5 or a service VIP listener) to its
//! destination — HBONE to the destination workload's node, plain TCP to a workload outside the
//! mesh, or passthrough for addresses the mesh does not know.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_hbone::ConnectRequest;
use mesh_hbone::headers::{Baggage, ConnectHeaders};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::Ctx;
use super::route::{Route, route};
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
    proxy(ctx, tcp, peer, target, early, true).await;
}

/// Serves one connection to a service VIP listener: the destination is the listener address.
pub(super) async fn service(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr) {
    match tcp.local_addr() {
        Ok(vip) => proxy(ctx, tcp, peer, Target::Addr(vip), Vec::new(), false).await,
        Err(e) => warn!(error = %e, "no local address"),
    }
}

async fn reply(tcp: &mut TcpStream, socks: bool, r: Reply) {
    if socks {
        let _ = socks5::send_reply(tcp, r).await;
    }
}

fn baggage(w: &Workload) -> Baggage {
    Baggage {
        cluster: None,
        namespace: Some(w.namespace.clone()),
        workload_kind: Some("workloadentry".into()),
        workload_name: Some(w.name.clone()),
        service_name: Some(w.canonical_service().to_owned()),
        service_version: Some(w.canonical_revision().to_owned()),
    }
}

async fn proxy(
    ctx: Arc<Ctx>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    target: Target,
    early: Vec<u8>,
    socks: bool,
) {
    let start = tokio::time::Instant::now();
    let state = ctx.state.load_full();
    // The source workload is known from the client's address; only this node's workloads may
    // use this node's ztunnel (it holds only their identities).
    let src = match state.workload_by_ip(peer.ip()) {
        Some(w) if w.node.as_deref() == Some(ctx.node_name.as_str()) => w.clone(),
        _ => {
            warn!(
                src.addr = %peer,
                node = %ctx.node_name,
                "refused: client address is not a workload of this node"
            );
            return reply(&mut tcp, socks, Reply::NotAllowed).await;
        }
    };
    let decision = route(&state, &target);
    drop(state);
    let timeout = ctx.cfg.connect_timeout;
    match decision {
        Route::Hbone {
            workload,
            port,
            hbone_addr,
            service,
        } => {
            let source = match ctx.certs.store(&src.identity).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, src.identity = %src.identity, "no certificate for source");
                    return reply(&mut tcp, socks, Reply::GeneralFailure).await;
                }
            };
            let authority = SocketAddr::new(workload.address, port);
            let host = service
                .as_ref()
                .and_then(|s| s.service.hosts.first().cloned());
            let headers = ConnectHeaders {
                client: Some(peer),
                host: host.clone(),
                baggage: baggage(&src),
                traceparent: None,
            }
            .to_header_map();
            let req = ConnectRequest {
                source,
                destination_identity: workload.identity.clone(),
                hbone_addr,
                authority,
                headers,
            };
            // The pool bounds the dial itself by the same timeout; this bound adds the CONNECT
            // round trip, so a slow dial reports the pool's own error.
            // Boxed: the dial's state is large and short-lived; inline it would stay in every
            // idle tunnel's task for the tunnel's whole life.
            let connect = Box::pin(ctx.pool.connect(req));
            let tunnel = match tokio::time::timeout(timeout * 2, connect).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    let r = match &e {
                        mesh_hbone::Error::Status { status, .. }
                            if *status == http::StatusCode::UNAUTHORIZED =>
                        {
                            Reply::NotAllowed
                        }
                        mesh_hbone::Error::Status { .. } => Reply::ConnectionRefused,
                        _ => Reply::HostUnreachable,
                    };
                    warn!(
                        error = %e,
                        src.workload = %src.key(),
                        dst.workload = %workload.key(),
                        dst.identity = %workload.identity,
                        "outbound HBONE failed"
                    );
                    return reply(&mut tcp, socks, r).await;
                }
                Err(_) => {
                    warn!(dst.workload = %workload.key(), %hbone_addr, "outbound HBONE timed out");
                    return reply(&mut tcp, socks, Reply::HostUnreachable).await;
                }
            };
            reply(&mut tcp, socks, Reply::Success).await;
            let mut tunnel = tunnel;
            if !early.is_empty()
                && let Err(e) = tunnel.write_all(&early).await
            {
                return debug!(error = %e, "early data");
            }
            let (mut r, mut w) = tcp.split();
            let result = mesh_hbone::copy_bidirectional(&mut r, &mut w, tunnel, &()).await;
            let (sent, received, error) = match &result {
                Ok(s) => (s.plain_to_tunnel, s.tunnel_to_plain, None),
                Err(e) => (0, 0, Some(e.to_string())),
            };
            info!(
                target: "access",
                direction = "outbound",
                src.addr = %peer,
                src.workload = %src.key(),
                src.identity = %src.identity,
                dst.addr = %authority,
                dst.service = host.as_deref().unwrap_or("-"),
                dst.workload = %workload.key(),
                dst.identity = %workload.identity,
                dst.hbone = %hbone_addr,
                bytes_sent = sent,
                bytes_received = received,
                duration_ms = start.elapsed().as_millis() as u64,
                error = error.as_deref().unwrap_or("-"),
                "connection complete"
            );
        }
        Route::Plain { addr, .. } | Route::Passthrough(addr) => {
            let upstream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(u)) => u,
                Ok(Err(e)) => {
                    debug!(error = %e, %addr, "passthrough connect failed");
                    return reply(&mut tcp, socks, Reply::ConnectionRefused).await;
                }
                Err(_) => return reply(&mut tcp, socks, Reply::HostUnreachable).await,
            };
            let _ = upstream.set_nodelay(true);
            reply(&mut tcp, socks, Reply::Success).await;
            let mut upstream = upstream;
            if !early.is_empty() && upstream.write_all(&early).await.is_err() {
                return;
            }
            let result = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
            info!(
                target: "access",
                direction = "outbound",
                src.addr = %peer,
                src.workload = %src.key(),
                dst.addr = %addr,
                mtls = false,
                bytes_sent = result.as_ref().map_or(0, |r| r.0),
                bytes_received = result.as_ref().map_or(0, |r| r.1),
                duration_ms = start.elapsed().as_millis() as u64,
                "connection complete (plaintext: destination is outside the mesh)"
            );
        }
        Route::NoEndpoints(sp) => {
            warn!(service = %sp.service.name, port = sp.port, "service has no endpoints");
            reply(&mut tcp, socks, Reply::HostUnreachable).await;
        }
        Route::UnknownHost(h) => {
            debug!(host = %h, "unknown host");
            reply(&mut tcp, socks, Reply::HostUnreachable).await;
        }
    }
}
