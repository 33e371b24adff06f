//! Sockets bound to a chosen source address, so a test HBONE client can act as a workload
//! (or an attacker) at that address: peers authorize by the TCP peer address.

use std::net::{IpAddr, SocketAddr};

/// A [`mesh_hbone::SocketSource`] whose sockets are bound to one address (port chosen by the
/// kernel).
#[derive(Debug)]
pub struct BindFrom(pub IpAddr);

impl mesh_hbone::SocketSource for BindFrom {
    fn socket(
        &self,
        addr: SocketAddr,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<tokio::net::TcpSocket>> + Send>,
    > {
        let ip = self.0;
        Box::pin(async move {
            let s = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            s.bind(SocketAddr::new(ip, 0))?;
            Ok(s)
        })
    }

    fn id(&self) -> u64 {
        match self.0 {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6) as u64,
        }
    }
}
