//! Delivery to a workload with an application tunnel (`application_tunnel: PROXY`, Istio
//! 1.31): the connection goes to the tunnel's port when it sets one, and starts with a PROXY
//! v2 header, as istio/ztunnel's inbound writes it (`write_proxy_protocol`): source = the
//! HBONE peer's address, destination = the CONNECT authority, TLV `0xD0` = the peer's SPIFFE
//! id (from its certificate), and TLV `0xD1` = the targeted service's host name when the
//! peer's `Forwarded: host=` is believed (`MeshState::claimed_service_host`: a service the
//! workload serves on the CONNECT's port, on any port from its own waypoint).

use std::net::SocketAddr;

use mesh_hbone::InboundConnect;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::Workload;

/// Where a connection for `dst` aimed at `authority` is delivered: the tunnel's port when set.
pub(super) fn target(dst: &Workload, authority: SocketAddr) -> SocketAddr {
    match &dst.application_tunnel {
        Some(t) => SocketAddr::new(authority.ip(), t.port_for(authority.port())),
        None => authority,
    }
}

/// Writes the PROXY v2 header on `upstream` when `dst` has an application tunnel; `service`
/// is the believed `Forwarded` host (already checked against the mesh state).
pub(super) async fn write_header(
    dst: &Workload,
    req: &InboundConnect,
    service: Option<&str>,
    upstream: &mut TcpStream,
) -> Result<(), String> {
    if dst.application_tunnel.is_none() {
        return Ok(());
    }
    let header = mesh_hbone::proxy_protocol::header(
        req.conn.peer_addr,
        req.authority,
        Some(req.conn.peer_identity.as_str()),
        service,
    )
    .map_err(|e| e.to_string())?;
    upstream
        .write_all(&header)
        .await
        .map_err(|e| format!("writing the PROXY header: {e}"))
}
