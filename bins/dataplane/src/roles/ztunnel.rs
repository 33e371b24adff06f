//! The ztunnel: a node's L4 proxy. It serves every workload of its `Node`: an inbound HBONE
//! listener per workload address (or inside the workload's network namespace, in-pod),
//! SOCKS5, plaintext and captured outbound listeners when configured, and the service VIPs
//! when the node asks for them. No HTTP layer.

use crate::proxy::{Layers, Role, serves};

/// A ztunnel serving node `node` of the mesh config.
pub fn ztunnel(node: &str) -> Role {
    Role::new("ztunnel", serves::node(node), Layers::default())
}
