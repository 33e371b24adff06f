//! The waypoint: a shared L7 proxy for the services and workloads that name it. One HBONE
//! listener at the waypoint `Gateway`'s address; every stream goes through the waypoint's
//! HTTP stack (its targets' JWT and L7 policies, routing) or, when not HTTP, its L4 policies.

use crate::proxy::{Layers, Role, serves};

/// A waypoint serving the `Gateway` `gateway` (`namespace/name`) of the mesh config.
pub fn waypoint(gateway: &str) -> Role {
    Role::new("waypoint", serves::gateway(gateway), Layers::default())
}
