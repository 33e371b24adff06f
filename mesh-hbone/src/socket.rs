//! Outbound TCP sockets: where they are created ([`SocketSource`]), how they are marked
//! ([`set_mark`]) and connected ([`connect_tcp`]), and TCP keepalive on HBONE connections. A leaf
//! module, used by the pool and the server.

/// Where a proxy's outbound TCP sockets are created. By default in the proxy's own network
/// namespace; a node proxy serving workloads in their own namespaces (ztunnel's in-pod mode)
/// creates them in the workload's, so they leave with the workload's address and pass its
/// capture rules.
pub trait SocketSource: Send + Sync + std::fmt::Debug {
    /// A new, unconnected TCP socket of `addr`'s family.
    fn socket(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<tokio::net::TcpSocket>> + Send>,
    >;
    /// Tells sources apart in pool keys: connections from different sources are never shared.
    fn id(&self) -> u64;
}

/// Opens a TCP connection to `addr` with nodelay: on a socket from `source` (default: a new
/// one here), marked with `mark` (`SO_MARK`, Linux; needs `CAP_NET_ADMIN`) when given, so that
/// capture rules can tell a proxy's own connections from the application's (Istio marks with
/// 1337). Without the permission to mark (not root: then capture rules cannot have been
/// installed by this user either, or they exclude the proxy by uid) the socket stays unmarked,
/// with one warning.
pub async fn connect_tcp(
    addr: std::net::SocketAddr,
    mark: Option<u32>,
    source: Option<&std::sync::Arc<dyn SocketSource>>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match source {
        Some(s) => s.socket(addr).await?,
        None if mark.is_none() => {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            return Ok(tcp);
        }
        None if addr.is_ipv4() => tokio::net::TcpSocket::new_v4()?,
        None => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(mark) = mark {
        set_mark(&socket, mark)?;
    }
    let tcp = socket.connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Sets `SO_MARK` (see [`connect_tcp`]); lacking the permission is a warning, once.
pub fn set_mark<S: std::os::fd::AsFd>(socket: &S, mark: u32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if let Err(e) = socket2::SockRef::from(socket).set_mark(mark) {
        if e.kind() != std::io::ErrorKind::PermissionDenied {
            return Err(e);
        }
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                mark,
                "no permission to mark sockets (SO_MARK needs CAP_NET_ADMIN): the proxy's connections are unmarked"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (socket, mark);
    Ok(())
}

/// Turns on TCP keepalive so a peer that vanished without a FIN or RST is detected (after about
/// 30 s idle + 3 × 10 s probes) instead of holding its tunnels open for ever.
pub(crate) fn set_keepalive(tcp: &tokio::net::TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot enable TCP keepalive");
    }
}
