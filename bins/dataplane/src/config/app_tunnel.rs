//! A workload's application tunnel (workload API `Workload.application_tunnel`, Istio 1.31):
//! the workload (a sandwiched waypoint or gateway) wants each delivered connection preceded by
//! a PROXY protocol v2 header (source and destination addresses, TLVs `0xD0` source SPIFFE id
//! and `0xD1` service host), on `port` when set, else on the connection's target port. A leaf
//! module: the state's workload holds it, the inbound path writes the header.

/// What the destination's proxy does before delivering a tunnel's bytes to the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AppTunnel {
    /// Deliver on this port instead of the target port (`application_tunnel.port`).
    pub port: Option<u16>,
}

impl AppTunnel {
    /// The port a connection aimed at `target_port` is delivered on.
    pub fn port_for(&self, target_port: u16) -> u16 {
        self.port.unwrap_or(target_port)
    }
}
