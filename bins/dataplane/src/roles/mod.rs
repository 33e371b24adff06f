//! Roles are compositions: a ztunnel, a waypoint and a sidecar are the same proxy core
//! ([`crate::proxy::Proxy`]) with a different [`Role`]: which listeners it opens for a mesh
//! state (its listener plan) and which layers its data paths turn on ([`Layers`]). This module and its
//! three files are the only place that knows the roles; the core asks "is this layer on", never
//! "which proxy am I".
//!
//! | role | serves | layers |
//! |---|---|---|
//! | [`ztunnel()`] | a `Node`'s workloads: inbound HBONE per workload, SOCKS5, plaintext, captured outbound, service VIPs, in-pod listeners | none: L4 only |
//! | [`sidecar()`] | the same, for a node of one workload | HTTP on captured outbound and on inbound to HTTP ports; optionally transparent (TPROXY) inbound |
//! | [`waypoint()`] | one HBONE listener at a waypoint `Gateway`'s address | the waypoint's HTTP stack on every stream |

pub mod sidecar;
pub mod waypoint;
pub mod ztunnel;
pub mod ztunnel_env;

pub use crate::proxy::{Layers, Role};
pub use sidecar::sidecar;
pub use waypoint::waypoint;
pub use ztunnel::ztunnel;
pub use {sidecar::SidecarArgs, waypoint::WaypointArgs, ztunnel::ZtunnelArgs};
