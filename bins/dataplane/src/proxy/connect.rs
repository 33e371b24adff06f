//! One way to connect to a destination that is not an HBONE peer: a plain workload or
//! passthrough address (outbound), or the local app (inbound delivery, TPROXY from the
//! client's address). The proxy's own listeners are refused first (`own.rs`).

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
