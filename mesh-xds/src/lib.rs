//! A Delta ADS client (`envoy.service.discovery.v3.AggregatedDiscoveryService/
//! DeltaAggregatedResources`) for Istio's workload API, usable by any mesh project.
//!
//! - [`pb`]: Istio's `istio.workload` and `istio.security` messages, compiled from `.proto`
//!   files with Istio's names and field numbers (protox: no system `protoc`).
//! - [`Client`]: subscribes to resource types, hands each update to a [`Handler`], ACKs it or
//!   NACKs it with the rejected resources named in `error_detail` (the rest of the update
//!   still applies, as xDS requires), tracks nonces and versions, reconnects with jittered
//!   exponential backoff and resumes with `initial_resource_versions`, and relies on HTTP/2
//!   keepalive pings to notice a control plane that went silent. The last applied state stays
//!   with the handlers while the control plane is away.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mesh_xds::{Client, Config, NodeInfo, Rejection, Typed, pb, ADDRESS_TYPE};
//!
//! # async fn run() {
//! let addresses = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, |upserts, removes| {
//!     for (name, address) in upserts {
//!         println!("{name}: {:?}", address.r#type);
//!     }
//!     println!("removed: {removes:?}");
//!     Vec::<Rejection>::new()
//! });
//! let config = Config::new("http://127.0.0.1:15010", NodeInfo::ztunnel("10.0.0.1", "ztunnel-abc", "istio-system", "node-1", "Kubernetes"));
//! let client = Client::start(config, vec![Arc::new(addresses)]);
//! client.wait_connected().await;
//! # }
//! ```

#![warn(missing_docs)]

mod client;

pub use client::{
    ADDRESS_TYPE, AUTHORIZATION_TYPE, Client, Config, Handler, NodeInfo, Rejection, Status, Typed,
};

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
}
