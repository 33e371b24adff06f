//! The dial of an outbound HBONE tunnel (ztunnel L4, and the TCP paths of a sidecar) under the
//! destination's `DestinationRule`: `connectionPool.tcp.maxConnections` (refused with `UO`),
//! `connectTimeout`, outlier detection (connect failures and successes reported; an ejected
//! endpoint is not dialed) and, on a connect failure, a bounded retry on another healthy
//! endpoint of the same service, before any byte reached the client (`URX` when all fail).

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_hbone::headers::ConnectHeaders;
use mesh_l7::resilience::outlier::Outcome;
use mesh_l7::resilience::pool::{Kind, Permit};
use mesh_telemetry::metrics::{ConnectionRecorder, Reporter, ResponseFlags, SecurityPolicy};
use tracing::{debug, warn};

use super::health::{HostHealth, L4_CONNECT_RETRIES, next_endpoint};
use super::{Ctx, observe};
use crate::config::Workload;
use crate::socks5::Reply;

/// Where an outbound HBONE tunnel goes: a workload's node, or a waypoint.
pub(super) struct Dest {
    /// The identity the HBONE server must present.
    pub(super) identity: mesh_identity::SpiffeId,
    pub(super) hbone_addr: SocketAddr,
    /// The CONNECT authority.
    pub(super) authority: SocketAddr,
    /// The destination workload, when known here.
    pub(super) workload: Option<Arc<Workload>>,
    pub(super) service: Option<Arc<crate::config::ServicePort>>,
    /// Set when the tunnel goes to the destination's waypoint.
    pub(super) waypoint: Option<Arc<crate::config::Waypoint>>,
}

/// A failed dial: the SOCKS reply, the reason to log, and whether another endpoint may
/// help (the peer was unreachable or could not reach the workload).
pub(super) struct Failure {
    pub(super) reply: Reply,
    pub(super) reason: String,
    retryable: bool,
}

/// An opened tunnel, its recorder, and its slot in the host's connection pool.
pub(super) type Opened = (mesh_hbone::H2Stream, ConnectionRecorder, Option<Permit>);

fn labels(src: &Workload, dest: &Dest) -> mesh_telemetry::metrics::ConnectionLabels {
    let unknown = mesh_telemetry::metrics::PeerLabels::unknown();
    let dst_labels = dest.workload.as_ref().map_or(&unknown, |w| &w.telemetry);
    observe::labels(
        Reporter::Source,
        &src.telemetry,
        dst_labels,
        dest.service.as_ref().map(|s| &s.service.telemetry),
        SecurityPolicy::MutualTls,
    )
}

/// Points `dest` at endpoint `ep` of its service.
fn retarget(dest: &mut Dest, ep: crate::config::Endpoint) -> bool {
    let Some(hbone_addr) = ep.workload.hbone_addr else {
        return false;
    };
    dest.identity = ep.workload.identity.clone();
    dest.hbone_addr = hbone_addr;
    dest.authority = SocketAddr::new(ep.workload.address, ep.port);
    dest.workload = Some(ep.workload);
    true
}

/// Dials `dest` under its host's policies (see the module doc); `dest` ends pointing at the
/// endpoint last tried.
pub(super) async fn attempts(
    ctx: &Ctx,
    src: &Workload,
    dest: &mut Dest,
    host: Option<&String>,
    peer: SocketAddr,
) -> Result<Opened, Failure> {
    // Through a waypoint, the waypoint applies the service's DestinationRule (Istio ambient:
    // L7 policy at the waypoint); the tunnel to it is not the destination's connection.
    let health = (dest.service.as_ref())
        .filter(|_| dest.waypoint.is_none())
        .and_then(|sp| ctx.health.for_service(&sp.service));
    let Some(h) = health.as_deref() else {
        let (t, rec) = dial(ctx, src, dest, host, peer, true, None).await?;
        return Ok((t, rec, None));
    };
    let permit = match h.admit(Kind::Connection) {
        Ok(p) => p,
        Err(_) => {
            ctx.telemetry
                .tcp
                .refused(&labels(src, dest), ResponseFlags::UpstreamOverflow);
            let reason = "connection pool overflow (connectionPool.tcp.maxConnections)";
            warn!(dst.addr = %dest.authority, "refused: {reason}");
            return Err(Failure {
                reply: Reply::ConnectionRefused,
                reason: reason.into(),
                retryable: false,
            });
        }
    };
    let now = tokio::time::Instant::now();
    if dest.waypoint.is_none()
        && h.is_ejected(dest.authority, now)
        && let Some(ep) = (dest.service.as_deref())
            .and_then(|sp| next_endpoint(sp, &[dest.authority], Some(h), now))
    {
        retarget(dest, ep);
    }
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        // Retried only to another endpoint of a service (not through a waypoint).
        let more = dest.waypoint.is_none() && tried.len() < L4_CONNECT_RETRIES;
        let r = dial(ctx, src, dest, host, peer, false, Some(h)).await;
        let now = tokio::time::Instant::now();
        let failure = match r {
            Ok((t, rec)) => {
                h.report(dest.authority, Outcome::Success, now);
                return Ok((t, rec, permit));
            }
            Err(f) => f,
        };
        if failure.retryable {
            h.report(dest.authority, Outcome::ConnectFailure, now);
        }
        tried.push(dest.authority);
        let next = (more && failure.retryable)
            .then_some(dest.service.as_deref())
            .flatten()
            .and_then(|sp| next_endpoint(sp, &tried, Some(h), now));
        if let Some(ep) = next
            && retarget(dest, ep)
        {
            debug!(dst.addr = %dest.authority, attempt = tried.len() + 1, "connect failed: retrying on another endpoint");
            h.count_retry();
            continue;
        }
        if failure.retryable {
            // Counted once for the connection: URX when more than one endpoint failed.
            let flags = if tried.len() > 1 {
                ResponseFlags::UpstreamRetryLimitExceeded
            } else {
                ResponseFlags::ConnectFailure
            };
            ctx.telemetry.tcp.refused(&labels(src, dest), flags);
        }
        return Err(failure);
    }
}

/// Opens the HBONE tunnel for one outbound connection (within the host's `connectTimeout`
/// when it sets one) and records it as opened; on failure records the refusal in the
/// metrics unless `count` is false (the caller may retry and counts once).
async fn dial(
    ctx: &Ctx,
    src: &Workload,
    dest: &Dest,
    host: Option<&String>,
    peer: SocketAddr,
    count: bool,
    health: Option<&HostHealth>,
) -> Result<(mesh_hbone::H2Stream, ConnectionRecorder), Failure> {
    let labels = labels(src, dest);
    let headers = ConnectHeaders {
        client: Some(peer),
        host: host.cloned(),
        baggage: observe::baggage(src),
        traceparent: None,
    }
    .to_header_map();
    let to = super::connect::HboneTarget {
        destination: &dest.identity,
        hbone_addr: dest.hbone_addr,
        authority: dest.authority,
    };
    let dialed =
        super::connect::dial_hbone(ctx, &src.identity, to, headers, ctx.socket_source(src));
    let timeout = health.and_then(|h| h.pool()?.connect_timeout);
    let result = match timeout {
        // Istio connectTimeout (default 10 s, the proxy's own --connect-timeout).
        Some(t) => tokio::time::timeout(t, dialed).await.unwrap_or_else(|_| {
            Err(super::connect::DialError::Unreachable(
                "connect timed out (connectionPool.tcp.connectTimeout)".to_owned(),
            ))
        }),
        None => dialed.await,
    };
    let e = match result {
        Ok(t) => return Ok((t, ctx.telemetry.tcp.open(&labels))),
        Err(e) => e,
    };
    let reply = match &e {
        super::connect::DialError::NoCertificate(reason) => {
            warn!(error = %reason, src.identity = %src.identity, "no certificate for source");
            ctx.telemetry.tcp.refused(&labels, e.flags());
            return Err(Failure {
                reply: Reply::GeneralFailure,
                reason: "no certificate for the source workload".into(),
                retryable: false,
            });
        }
        _ if e.unauthorized() => Reply::NotAllowed,
        super::connect::DialError::Status(s, _) if *s == http::StatusCode::TOO_MANY_REQUESTS => {
            Reply::NotAllowed
        }
        super::connect::DialError::Status(..) => Reply::ConnectionRefused,
        super::connect::DialError::Unreachable(_) => Reply::HostUnreachable,
    };
    warn!(
        error = %e.reason(),
        src.workload = %src.key(),
        dst.addr = %dest.authority,
        dst.identity = %dest.identity,
        hbone = %dest.hbone_addr,
        waypoint = dest.waypoint.as_ref().map(|w| w.key()).as_deref().unwrap_or("-"),
        "outbound HBONE failed"
    );
    // 429: the destination's connection rate limit refused, a policy decision like 401:
    // another attempt (or endpoint) would only spend more tokens, and the endpoint is
    // healthy (not reported to outlier detection, which only sees retryable failures).
    let rate_limited = matches!(&e, super::connect::DialError::Status(s, _) if *s == http::StatusCode::TOO_MANY_REQUESTS);
    let retryable = !e.unauthorized() && !rate_limited;
    if count || !retryable {
        let flags = if rate_limited {
            ResponseFlags::RateLimited
        } else {
            e.flags()
        };
        ctx.telemetry.tcp.refused(&labels, flags);
    }
    Err(Failure {
        reply,
        reason: e.reason().to_owned(),
        retryable,
    })
}
