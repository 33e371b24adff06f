//! HTTP routing for a mesh proxy, sans-IO: Istio `VirtualService` as users write it
//! ([`istio`]), compiled into per-host route tables ([`RouteTable`]) that pick a route for a
//! request's facts and a weighted destination for it; `DestinationRule` subsets and load
//! balancing ([`DestinationPolicy`], [`choose`]). The decisions do no I/O: the proxy that
//! carries requests asks, this crate answers.
//!
//! [`layer`] is the L7 request path built on them, as tower layers any role of the proxy
//! composes (trace context, recording, request checks, JWT, authorization, routing) in front
//! of the proxy's own upstream service; `examples/proxy.rs` runs one stack in memory.
//!
//! ```
//! use mesh_l7::{RequestFacts, RouteTable, istio::VirtualServiceSpec};
//! let vs: VirtualServiceSpec = serde_json::from_str(r#"{
//!   "hosts": ["reviews.shop.svc"],
//!   "http": [
//!     {"match": [{"headers": {"x-user": {"exact": "tester"}}}],
//!      "route": [{"destination": {"host": "reviews.shop.svc", "subset": "v2"}}]},
//!     {"route": [{"destination": {"host": "reviews.shop.svc", "subset": "v1"}, "weight": 80},
//!                {"destination": {"host": "reviews.shop.svc", "subset": "v2"}, "weight": 20}]}
//!   ]
//! }"#).unwrap();
//! let table = RouteTable::compile(&vs).unwrap();
//! let mut headers = http::HeaderMap::new();
//! headers.insert("x-user", "tester".parse().unwrap());
//! let req = RequestFacts { method: "GET", path: "/", authority: "reviews", port: 80, headers: &headers };
//! let route = table.select(&req).unwrap();
//! assert_eq!(route.pick(0).unwrap().subset.as_deref(), Some("v2"));
//! ```

#![warn(missing_docs)]

pub mod balance;
pub mod duration;
pub mod gateway;
pub mod istio;
pub mod layer;
pub mod ratelimit;
pub mod resilience;
mod route;

pub use balance::{DestinationPolicy, LoadBalancer, Subset, choose};
pub use route::{
    Action, Destination, HeaderOps, HeaderRules, HttpRoute, Redirect, RequestFacts, Rewrite,
    RouteTable, StringMatch,
};

/// A problem in a route spec, with the field path (such as `spec.http[0].match[1].uri.regex`):
/// the one field error type of the mesh's policy crates, shared with `mesh-authz`.
pub use mesh_authz::istio::FieldError;
