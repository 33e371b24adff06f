//! The shared data-plane core (crate `mesh-dataplane`): the mesh config and its compiled state,
//! listeners, the inbound and outbound pipelines, and the assembly of the library layers into
//! the `ztunnel` and `waypoint` roles. The binaries only parse their command line and call in here.
//!
//! - [`config`]: the local mesh file (Istio resources) → validated [`config::MeshState`].
//! - [`proxy`]: a node's L4 proxy: inbound HBONE, SOCKS5 and service-VIP outbound.
//! - [`netns`]: network-namespace "pods" (veth, addresses, capture) for tests and the bench.
//! - [`socks5`]: the SOCKS5 handshake.
//! - [`roles`]: the ztunnel, waypoint and sidecar: each a composition of the core's listeners
//!   and layers, with its command line and process main.
//! - [`zds`]: the istio-cni agent's protocol: pods handed over with their network namespaces.
//! - [`process`]: what every proxy process shares: the common command line, logging, the
//!   runtime, certificates, following istiod, the stop.

#![warn(missing_docs)]

/// Makes jemalloc the global allocator of the binary that invokes it (at its crate root), with
/// the `jemalloc` feature; without it, nothing. A macro, not a `#[global_allocator]` here: a
/// library must not choose the process's allocator for every program that links it (a test
/// binary counting its allocations brings its own).
#[cfg(feature = "jemalloc")]
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::Jemalloc = $crate::Jemalloc;
    };
}

/// Makes jemalloc the global allocator of the binary that invokes it, with the `jemalloc`
/// feature; without it (this build), nothing.
#[cfg(not(feature = "jemalloc"))]
#[macro_export]
macro_rules! global_allocator {
    () => {};
}

/// The allocator [`global_allocator!`] installs.
#[cfg(feature = "jemalloc")]
#[doc(hidden)]
pub use tikv_jemallocator::Jemalloc;

pub mod capture;
pub mod config;
pub mod dns;
mod duration;
mod error;
pub mod hostdns;
pub mod limits;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod roles;
pub mod sockets;
pub mod socks5;
pub mod zds;

pub use error::Error;
pub use process::ProxyArgs;
pub use roles::{SidecarArgs, WaypointArgs, ZtunnelArgs};
