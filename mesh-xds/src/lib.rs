//! A Delta ADS client (`envoy.service.discovery.v3.AggregatedDiscoveryService/
//! DeltaAggregatedResources`) for Istio's workload API, usable by any mesh project.
//!
//! - [`pb`]: Istio's `istio.workload` and `istio.security` messages, compiled from `.proto`
//!   files with Istio's names and field numbers (protox: no system `protoc`).
//! - [`Session`]: the xDS bookkeeping without IO: subscriptions, ACK, NACK with the rejected
//!   resources named in `error_detail` (the rest of the update still applies, as xDS
//!   requires), nonces, accepted versions and the resume with `initial_resource_versions`.
//! - [`Client`]: drives a [`Session`] over a `tonic` channel the caller built (plaintext, or
//!   TLS with its roots, e.g. `mesh_identity::grpc::ControlPlane::lazy_channel`), hands each
//!   update to a [`Handler`], reconnects with jittered exponential backoff, and relies on the
//!   channel's HTTP/2 keepalive pings to notice a control plane that went silent. The last
//!   applied state stays with the handlers while the control plane is away.
//! - `testing` (cargo feature): [`testing::FakeAds`], a fake control plane for tests.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mesh_xds::{Client, Config, NodeInfo, Rejection, Typed, pb, ADDRESS_TYPE};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let addresses = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, |upserts, removes| {
//!     for (name, address) in upserts {
//!         println!("{name}: {:?}", address.r#type);
//!     }
//!     println!("removed: {removes:?}");
//!     Vec::<Rejection>::new()
//! });
//! let address = "http://127.0.0.1:15010";
//! let channel = tonic::transport::Endpoint::from_shared(address)?.connect_lazy();
//! let config = Config::new(address, NodeInfo::ztunnel("10.0.0.1", "ztunnel-abc", "istio-system", "node-1", "Kubernetes"));
//! let client = Client::start(channel, config, vec![Arc::new(addresses)]);
//! client.wait_connected().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod client;
mod error;
mod handler;
mod node;
pub mod session;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{ADDRESS_TYPE, AUTHORIZATION_TYPE, Client, Config, Status};
pub use error::Error;
pub use handler::{Handler, Rejection, Typed};
pub use node::NodeInfo;
pub use session::Session;
/// The gRPC channel the [`Client`] streams over (tonic's), re-exported so callers need no
/// direct tonic dependency.
pub use tonic::transport::Channel;

/// Istio's workload API messages.
#[allow(missing_docs, clippy::all, unreachable_pub)]
pub mod pb {
    /// `istio.workload`: `Address` (a `Workload` or a `Service`) and their parts.
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
    }
    /// `istio.security`: `Authorization` (L4 policy for ztunnels).
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }
    /// `istio.workload.zds`: the istio-cni agent ↔ ztunnel protocol (`WorkloadRequest`,
    /// `WorkloadResponse`, `ZdsHello`).
    pub mod zds {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
    }
}
