//! Delivery to a workload with an application tunnel (`application_tunnel: PROXY`, Istio
//! 1.31): the connection goes to the tunnel's port when it sets one, and starts with a PROXY
//! v2 header, as istio/ztunnel's inbound writes it (`write_proxy_protocol`): source = the
//! HBONE peer's address, destination = the CONNECT authority, TLV `0xD0` = the peer's SPIFFE
//! id (from its certificate), and TLV `0xD1` = the targeted service's host name when the
//! mesh state names one (never a peer's unchecked claim).

use std::net::SocketAddr;

use mesh_hbone::InboundConnect;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{MeshState, Workload};

/// Where a connection for `dst` aimed at `authority` is delivered: the tunnel's port when set.
pub(super) fn target(dst: &Workload, authority: SocketAddr) -> SocketAddr {
    match &dst.application_tunnel {
        Some(t) => SocketAddr::new(authority.ip(), t.port_for(authority.port())),
        None => authority,
    }
}

/// Writes the PROXY v2 header on `upstream` when `dst` has an application tunnel.
pub(super) async fn write_header(
    state: &MeshState,
    dst: &Workload,
    req: &InboundConnect,
    asserted_host: Option<&str>,
    upstream: &mut TcpStream,
) -> Result<(), String> {
    if dst.application_tunnel.is_none() {
        return Ok(());
    }
    let service = service_host(state, dst, req.authority, asserted_host);
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

/// The host of the service this connection targets: the service at the authority (a VIP), or
/// the `Forwarded` host the peer sent when it names a service `dst` is an endpoint of.
fn service_host<'s>(
    state: &'s MeshState,
    dst: &Workload,
    authority: SocketAddr,
    asserted: Option<&str>,
) -> Option<&'s str> {
    if let Some(sp) = state.service_by_vip(authority) {
        return sp.service.hosts.first().map(String::as_str);
    }
    let host = asserted?.to_ascii_lowercase();
    let ports = state.by_host.get(&host)?;
    let member = ports.values().any(|sp| {
        sp.endpoints
            .iter()
            .any(|e| e.workload.name == dst.name && e.workload.namespace == dst.namespace)
    });
    let sp = ports.values().next().filter(|_| member)?;
    sp.service.hosts.first().map(String::as_str)
}
