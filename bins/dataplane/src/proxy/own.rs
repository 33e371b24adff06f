//! The proxy's own endpoints, kept out of the data path: a workload must not reach its proxy's
//! admin (`/quitquitquit`, `/logging`), metrics, readiness or data listeners by asking the
//! proxy to connect there (SOCKS5, captured outbound, or HBONE/plaintext inbound delivery).
//!
//! Two checks, each enough on its own:
//! - [`OwnAddrs::contains`]: a destination that is one of the proxy's bound listeners (or an
//!   unspecified address, which the kernel routes to a local listener) is refused before any
//!   connect;
//! - [`is_own_socket`]: the admin server refuses state-changing requests on a connection whose
//!   client end is a socket of this very process (the proxy's own outbound socket), whatever
//!   address the first check missed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The addresses this proxy listens on (admin, metrics, readiness and every data listener),
/// replaced whenever the listeners change; read with one atomic load per check.
#[derive(Default)]
pub(crate) struct OwnAddrs {
    addrs: ArcSwap<Vec<SocketAddr>>,
}

impl OwnAddrs {
    /// Replaces the set.
    pub(crate) fn set(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort_unstable();
        addrs.dedup();
        self.addrs.store(Arc::new(addrs));
    }

    /// Whether a connection to `dst` would reach one of this proxy's listeners: `dst` is one
    /// of them, or shares the port of one bound to an unspecified address and is loopback or
    /// one of our addresses, or is itself unspecified (`0.0.0.0` and `::` reach local
    /// listeners).
    pub(crate) fn contains(&self, dst: SocketAddr) -> bool {
        let ip = dst.ip().to_canonical();
        if ip.is_unspecified() {
            return true;
        }
        let addrs = self.addrs.load();
        let ours = |ip: IpAddr| ip.is_loopback() || addrs.iter().any(|a| a.ip() == ip);
        addrs.iter().any(|a| {
            a.port() == dst.port() && (a.ip() == ip || (a.ip().is_unspecified() && ours(ip)))
        })
    }
}

/// Whether the TCP connection `peer` → `local` (as an accepting server sees it) was opened by
/// a socket of this process: its client end `peer` is listed in this network namespace's
/// `/proc/net/tcp{,6}` with an inode that one of our file descriptors holds. Read from
/// `/proc`, so only for rare requests (state-changing admin calls). `false` when `/proc` is
/// unavailable.
pub(crate) fn is_own_socket(peer: SocketAddr, local: SocketAddr) -> bool {
    let file = if peer.is_ipv4() {
        "/proc/self/net/tcp"
    } else {
        "/proc/self/net/tcp6"
    };
    let Ok(table) = std::fs::read_to_string(file) else {
        return false;
    };
    let Some(inode) = table.lines().skip(1).find_map(|l| inode_of(l, peer, local)) else {
        return false;
    };
    let want = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()))
}

/// The inode of a `/proc/net/tcp` line whose local end is `from` and remote end is `to`.
fn inode_of(line: &str, from: SocketAddr, to: SocketAddr) -> Option<u64> {
    let mut f = line.split_whitespace();
    let (_sl, l, r) = (f.next()?, f.next()?, f.next()?);
    if parse_proc_addr(l)? != from || parse_proc_addr(r)? != to {
        return None;
    }
    // st tx:rx tr:when retrnsmt uid timeout inode
    f.nth(6)?.parse().ok()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6): each 32-bit word as the kernel
/// printed it in host order.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::from(word(ip)?),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::from(b)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_and_unspecified_are_ours() {
        let own = OwnAddrs::default();
        own.set(vec![
            "127.0.1.1:15000".parse().unwrap(),
            "0.0.0.0:15020".parse().unwrap(),
            "10.0.0.5:15008".parse().unwrap(),
        ]);
        for dst in [
            "127.0.1.1:15000",
            "[::ffff:127.0.1.1]:15000",
            "0.0.0.0:8080",
            "[::]:15000",
            "127.0.0.1:15020",
            "10.0.0.5:15020",
            "10.0.0.5:15008",
        ] {
            assert!(own.contains(dst.parse().unwrap()), "{dst}");
        }
        for dst in ["127.0.1.2:15000", "10.0.0.6:15020", "10.0.0.5:8080"] {
            assert!(!own.contains(dst.parse().unwrap()), "{dst}");
        }
    }

    #[test]
    fn proc_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("zz:1"), None);
    }

    /// A connection this process opened is recognised at the server end; another process's
    /// is not.
    #[test]
    fn own_sockets_are_recognised() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(local).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        assert!(is_own_socket(peer, local));
        drop(c);
        // A client in another process (bash's /dev/tcp), holding the connection for a while.
        let mut child = std::process::Command::new("bash")
            .args([
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{}; sleep 5", local.port()),
            ])
            .spawn()
            .unwrap();
        let (_s2, peer2) = l.accept().unwrap();
        assert!(!is_own_socket(peer2, local));
        let _ = child.kill();
        let _ = child.wait();
    }
}
