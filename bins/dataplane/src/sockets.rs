//! Socket facts the kernel keeps for captured connections. Capture (iptables REDIRECT/DNAT)
//! rewrites a connection's destination; the original one is read back from conntrack with
//! `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

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
