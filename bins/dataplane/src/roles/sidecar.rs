//! The sidecar: the proxy beside one workload. It serves a `Node` of one workload
//! (`sidecar/<namespace>/<name>`) with the ztunnel's listeners, and turns on the HTTP layers:
//! client-side L7 on captured outbound, server-side L7 (the workload's JWT and HTTP policies)
//! on inbound; with TPROXY capture, transparent inbound.

use crate::proxy::{Layers, Role, serves};

/// A sidecar serving node `node` (`sidecar/<namespace>/<name>`); `transparent` when capture
/// uses TPROXY for inbound (`meshctl capture install --tproxy`).
pub fn sidecar(node: &str, transparent: bool) -> Role {
    Role::new(
        "sidecar",
        serves::node(node),
        Layers {
            outbound_http: true,
            inbound_http: true,
            transparent_inbound: transparent,
        },
    )
}
