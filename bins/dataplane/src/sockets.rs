//! Sockets and network namespaces: the one module of the core that deals with them.
//!
//! Socket facts the kernel keeps for captured connections. Capture (iptables REDIRECT/DNAT)
//! rewrites a connection's destination; the original one is read back from conntrack with
//! `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::{TcpSocket, TcpStream};

/// The socket mark a sidecar uses by default (Istio's 1337): capture rules leave sockets
/// with it alone.
pub const DEFAULT_SOCKET_MARK: u32 = 1337;

/// The destination the client originally connected to, before a REDIRECT or DNAT rule sent
/// the connection here. `None` when the connection was not rewritten (then the kernel has no
/// conntrack entry with a different destination, or the lookup fails).
pub fn original_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    let local = tcp.local_addr().ok()?;
    let orig = match local {
        SocketAddr::V4(_) => {
            let a = getsockopt(tcp, sockopt::OriginalDst).ok()?;
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                u16::from_be(a.sin_port),
            )
        }
        SocketAddr::V6(_) => {
            let a = getsockopt(tcp, sockopt::Ip6tOriginalDst).ok()?;
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                u16::from_be(a.sin6_port),
            )
        }
    };
    (orig != local).then_some(orig)
}

/// A network namespace the proxy works in (ztunnel's in-pod mode): a thread that entered it
/// creates sockets there on request. A socket belongs to the namespace it was created in,
/// whichever thread uses it later, so listeners opened here accept the pod's connections and
/// connections opened here leave with the pod's address (and meet the pod's capture rules, which
/// skip the socket mark set here). The thread ends when the last handle is dropped.
pub struct Netns {
    path: PathBuf,
    id: u64,
    mark: Option<u32>,
    jobs: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.path.display())
    }
}

impl Netns {
    /// Enters the namespace at `path` (e.g. `/var/run/netns/NAME`, `/proc/PID/ns/net`) on a
    /// thread of its own; sockets created there get `mark`.
    pub fn open(path: &Path, mark: Option<u32>) -> io::Result<Arc<Netns>> {
        let file = std::fs::File::open(path)?;
        Netns::enter(file.into(), path.to_owned(), mark)
    }

    /// Enters the namespace `fd` refers to (ZDS: the pod's namespace the CNI agent handed over
    /// with `SCM_RIGHTS`), named `label` in logs; sockets created there get `mark`. Fails
    /// (`InvalidInput`, with the reason) when `fd` is not a network namespace.
    pub fn from_fd(
        fd: std::os::fd::OwnedFd,
        label: &str,
        mark: Option<u32>,
    ) -> io::Result<Arc<Netns>> {
        Netns::enter(fd, PathBuf::from(label), mark)
    }

    fn enter(fd: std::os::fd::OwnedFd, path: PathBuf, mark: Option<u32>) -> io::Result<Arc<Netns>> {
        let file = fd;
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("netns thread ended"))?
            .map_err(|e| match e.raw_os_error() {
                // setns(2): EINVAL when the fd is not a namespace of the asked type.
                Some(code) if code == nix::errno::Errno::EINVAL as i32 => {
                    io::Error::new(io::ErrorKind::InvalidInput, "not a network namespace")
                }
                _ => e,
            })?;
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Ok(Arc::new(Netns {
            path,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            mark,
            jobs,
        }))
    }

    /// The identity of the namespace `fd` refers to (device and inode, as `ip netns identify`
    /// compares them): two fds of one namespace have the same.
    pub fn id_of(fd: &impl std::os::fd::AsFd) -> io::Result<(u64, u64)> {
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(io::Error::from)?;
        #[allow(clippy::useless_conversion)] // the widths differ between targets
        Ok((u64::from(st.st_dev), u64::from(st.st_ino)))
    }

    /// The namespace's path (or label, for one opened from an fd).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A listener bound to `addr` inside the namespace.
    pub async fn bind(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let l = run_in(&self.jobs, move || {
            let l = listen(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .await?;
        tokio::net::TcpListener::from_std(l)
    }

    /// A listener on `addr` inside the namespace with `IP_TRANSPARENT`: it also accepts the
    /// connections TPROXY rules deliver with their original destination as the local address
    /// (istio-cni's in-pod rules send inbound to 15008 and 15006 so).
    pub async fn bind_transparent(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let l = run_in(&self.jobs, move || {
            let s = transparent_socket(addr)?;
            s.set_reuse_address(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&addr.into())?;
            s.listen(LISTEN_BACKLOG)?;
            Ok(std::net::TcpListener::from(s))
        })
        .await?;
        tokio::net::TcpListener::from_std(l)
    }

    /// Runs `f` on the namespace's thread (sockets it creates belong to the namespace).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        run_in(&self.jobs, f).await
    }

    /// The mark of the sockets created for the namespace's connections.
    pub fn mark(&self) -> Option<u32> {
        self.mark
    }
}

/// Connections made on behalf of a workload that runs on this host (a node proxy's local
/// workloads on loopback or host addresses, a sidecar's workload): bound to the workload's own
/// address, so the peer sees the workload's address as the TCP source and needs no header to
/// learn it (HBONE peers authorize by the TCP peer address, not by `Forwarded`). When the
/// address is not local here (or of the other family), the kernel picks the source as before.
#[derive(Debug)]
pub struct SourceAddr {
    ip: IpAddr,
}

impl SourceAddr {
    /// Connections from `ip`.
    pub fn new(ip: IpAddr) -> Arc<SourceAddr> {
        Arc::new(SourceAddr { ip })
    }
}

impl mesh_hbone::SocketSource for SourceAddr {
    fn socket(
        &self,
        addr: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<TcpSocket>> + Send>> {
        let ip = self.ip;
        Box::pin(async move {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if ip.is_ipv4() != addr.is_ipv4() {
                return Ok(socket);
            }
            // The port is chosen at connect time, per destination (no ephemeral port is
            // reserved at bind, so one source address is not limited to ~28k connections).
            if ip.is_ipv4() {
                let _ = nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::IpBindAddressNoPort,
                    &true,
                );
            }
            match socket.bind(SocketAddr::new(ip, 0)) {
                Ok(()) => Ok(socket),
                // Not an address of this host: unbound, the kernel picks the source.
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                    if addr.is_ipv4() {
                        TcpSocket::new_v4()
                    } else {
                        TcpSocket::new_v6()
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    fn id(&self) -> u64 {
        // Distinct from namespace ids (small counters) and per address: pooled connections
        // of two workloads are never shared.
        match self.ip {
            IpAddr::V4(v4) => 1 << 63 | u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                1 << 62 | (u128::from(v6) as u64 ^ (u128::from(v6) >> 64) as u64) >> 2
            }
        }
    }
}

/// Accept queue of every listener: a connection flood overflows the 128 of `std`'s default
/// (measured: 1098 overflows in a flood of 5000 handshakes), and what the kernel drops then
/// is the legitimate clients' SYNs too. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: i32 = 4096;

/// A listening socket on `addr` with `SO_REUSEADDR` and a [`LISTEN_BACKLOG`] queue.
pub fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

async fn run_in<T: Send + 'static>(
    jobs: &std::sync::mpsc::Sender<Job>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    jobs.send(Box::new(move || {
        let _ = tx.send(f());
    }))
    .map_err(|_| io::Error::other("netns thread ended"))?;
    rx.await
        .map_err(|_| io::Error::other("netns thread ended"))?
}

impl mesh_hbone::SocketSource for Netns {
    fn socket(
        &self,
        addr: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<TcpSocket>> + Send>> {
        let jobs = self.jobs.clone();
        let mark = self.mark;
        Box::pin(async move {
            let std_stream = run_in(&jobs, move || {
                let s = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                s.set_nonblocking(true)?;
                if let Some(m) = mark {
                    mesh_hbone::set_mark(&s, m)?;
                }
                Ok(std::net::TcpStream::from(s))
            })
            .await?;
            Ok(TcpSocket::from_std_stream(std_stream))
        })
    }

    fn id(&self) -> u64 {
        self.id
    }
}

fn transparent_socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv4() {
        s.set_ip_transparent_v4(true)?;
    } else {
        s.set_ip_transparent_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Whether `tcp` has `IP_TRANSPARENT` (inherited from its listener): then its local address
/// is the destination its client dialled (TPROXY), not a port of ours.
pub fn is_transparent(tcp: &TcpStream) -> bool {
    let s = socket2::SockRef::from(tcp);
    match tcp.local_addr() {
        Ok(SocketAddr::V4(_)) => s.ip_transparent_v4().unwrap_or(false),
        Ok(SocketAddr::V6(_)) => s.ip_transparent_v6().unwrap_or(false),
        Err(_) => false,
    }
}

/// A listener with `IP_TRANSPARENT`, for connections that TPROXY rules deliver with their
/// original addresses (the accepted socket's local address is the original destination).
pub fn bind_transparent(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let s = transparent_socket(addr)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// Connects to `addr` from `source` (an address that is not this host's: the client's, with
/// `IP_TRANSPARENT`), marked `mark` so TPROXY's policy routing brings the replies back here.
pub async fn connect_transparent(
    addr: SocketAddr,
    source: IpAddr,
    mark: u32,
) -> io::Result<TcpStream> {
    let s = transparent_socket(addr)?;
    mesh_hbone::set_mark(&s, mark)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    let tcp = TcpSocket::from_std_stream(s.into()).connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
