//! The two ways out of the proxy, each written once: [`dial_hbone`] (a tunnel to a mesh
//! peer: sources' ztunnels and sidecars, the waypoint, the L7 layers' upstreams) and
//! [`connect`] (plain TCP to a workload outside the mesh or a passthrough address, and
//! [`connect_app`], the local app: inbound delivery, TPROXY from the client's address). The
//! proxy's own listeners are refused first (`own.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

/// Why [`connect`] failed: the reason for the log, and whether it timed out (else refused).
pub(crate) struct ConnectError {
    pub(crate) reason: String,
    pub(crate) timed_out: bool,
    /// The destination is one of this proxy's own listeners: not even tried.
    pub(crate) own: bool,
}

impl ConnectError {
    fn own(addr: SocketAddr) -> ConnectError {
        ConnectError {
            reason: format!("{addr} is this proxy's own listener: not allowed"),
            timed_out: false,
            own: true,
        }
    }
}

/// Connects to `addr` with `timeout`, with nodelay set and the proxy's socket mark.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: std::time::Duration,
    mark: Option<u32>,
    source: Option<&Arc<dyn mesh_hbone::SocketSource>>,
) -> Result<tokio::net::TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, mesh_hbone::connect_tcp(addr, mark, source)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ConnectError {
            reason: format!("connect to {addr} failed: {e}"),
            timed_out: false,
            own: false,
        }),
        Err(_) => Err(ConnectError {
            reason: format!("connect to {addr} timed out"),
            timed_out: true,
            own: false,
        }),
    }
}

/// [`connect`] for the data path: refuses a destination that is one of this proxy's own
/// listeners (admin, metrics, readiness, data) before connecting.
pub(crate) async fn connect_out(
    ctx: &super::Ctx,
    addr: SocketAddr,
    source: Option<&Arc<dyn mesh_hbone::SocketSource>>,
) -> Result<tokio::net::TcpStream, ConnectError> {
    if ctx.own.contains(addr) {
        return Err(ConnectError::own(addr));
    }
    connect(addr, ctx.cfg.connect_timeout, ctx.cfg.socket_mark, source).await
}

/// Connects to a local workload's app at `addr` for a client at `client`: from the client's
/// own address when the proxy runs with TPROXY (so the app sees its real peer), else as
/// [`connect`] does (from the workload's namespace when it is served in-pod).
pub(crate) async fn connect_app(
    ctx: &super::Ctx,
    workload: &crate::config::Workload,
    addr: SocketAddr,
    client: Option<std::net::IpAddr>,
) -> Result<tokio::net::TcpStream, ConnectError> {
    let timeout = ctx.cfg.connect_timeout;
    if ctx.own.contains(addr) {
        return Err(ConnectError::own(addr));
    }
    match client.filter(|c| {
        ctx.layers().transparent_inbound && *c != addr.ip() && c.is_ipv4() == addr.is_ipv4()
    }) {
        Some(c) => match tokio::time::timeout(
            timeout,
            crate::sockets::connect_transparent(addr, c, crate::capture::TPROXY_MARK),
        )
        .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ConnectError {
                reason: format!("connect to {addr} from {c} (transparent) failed: {e}"),
                timed_out: false,
                own: false,
            }),
            Err(_) => Err(ConnectError {
                reason: format!("connect to {addr} timed out"),
                timed_out: true,
                own: false,
            }),
        },
        None => connect_out(ctx, addr, ctx.socket_source(workload).as_ref()).await,
    }
}

/// Why [`dial_hbone`] failed: who failed, for the status and response flags to report.
#[derive(Debug)]
pub(crate) enum DialError {
    /// This proxy holds no certificate for the source identity.
    NoCertificate(String),
    /// The destination answered the CONNECT with this status (401: its policy refused, or it
    /// accepts only its waypoint).
    Status(http::StatusCode, String),
    /// The dial, the TLS handshake or the CONNECT failed or timed out.
    Unreachable(String),
}

impl DialError {
    /// The reason, for logs.
    pub(crate) fn reason(&self) -> &str {
        match self {
            DialError::NoCertificate(r) | DialError::Status(_, r) | DialError::Unreachable(r) => r,
        }
    }

    /// Whether the destination refused by policy (401).
    pub(crate) fn unauthorized(&self) -> bool {
        matches!(self, DialError::Status(s, _) if *s == http::StatusCode::UNAUTHORIZED)
    }

    /// The response flags of the refused connection: `Deny` for a policy refusal, else a
    /// connect failure.
    pub(crate) fn flags(&self) -> mesh_telemetry::metrics::ResponseFlags {
        use mesh_telemetry::metrics::ResponseFlags;
        if self.unauthorized() {
            ResponseFlags::Deny
        } else {
            ResponseFlags::ConnectFailure
        }
    }
}

/// Where an HBONE tunnel goes: the peer proxy at `hbone_addr`, which must present
/// `destination`, and the `authority` it delivers to.
pub(crate) struct HboneTarget<'a> {
    pub(crate) destination: &'a mesh_identity::SpiffeId,
    pub(crate) hbone_addr: SocketAddr,
    pub(crate) authority: SocketAddr,
}

/// Opens an HBONE tunnel as `source` (its certificate from this proxy's store) through the
/// pooled connection to `to.hbone_addr`, with `headers` on the CONNECT, from
/// `socket_source` (a workload's address or namespace; `None`: the proxy's). Bounded by twice
/// the connect timeout: the pool bounds the dial itself by one, this adds the CONNECT round
/// trip, so a slow dial reports the pool's own error.
pub(crate) async fn dial_hbone(
    ctx: &super::Ctx,
    source: &mesh_identity::SpiffeId,
    to: HboneTarget<'_>,
    headers: http::HeaderMap,
    socket_source: Option<Arc<dyn mesh_hbone::SocketSource>>,
) -> Result<mesh_hbone::H2Stream, DialError> {
    dial_hbone_within(ctx, source, to, headers, socket_source, None).await
}

/// [`dial_hbone`] bounded by `timeout` when set (a destination's
/// `connectionPool.tcp.connectTimeout`: the whole dial, TCP, TLS and CONNECT, as at L4),
/// else by twice the proxy's connect timeout.
pub(crate) async fn dial_hbone_within(
    ctx: &super::Ctx,
    source: &mesh_identity::SpiffeId,
    to: HboneTarget<'_>,
    headers: http::HeaderMap,
    socket_source: Option<Arc<dyn mesh_hbone::SocketSource>>,
    timeout: Option<std::time::Duration>,
) -> Result<mesh_hbone::H2Stream, DialError> {
    let source = ctx
        .certs
        .store(source)
        .await
        .map_err(|e| DialError::NoCertificate(e.to_string()))?;
    let req = mesh_hbone::ConnectRequest {
        source,
        destination_identity: to.destination.clone(),
        hbone_addr: to.hbone_addr,
        authority: to.authority,
        headers,
        socket_source,
    };
    let within = timeout.unwrap_or(ctx.cfg.connect_timeout * 2);
    match tokio::time::timeout(within, ctx.pool.connect(req)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e @ mesh_hbone::Error::Status { status, .. })) => {
            Err(DialError::Status(status, e.to_string()))
        }
        Ok(Err(e)) => Err(DialError::Unreachable(e.to_string())),
        Err(_) if timeout.is_some() => Err(DialError::Unreachable(
            "HBONE connect timed out (connectionPool.tcp.connectTimeout)".to_owned(),
        )),
        Err(_) => Err(DialError::Unreachable("HBONE connect timed out".to_owned())),
    }
}
