//! The L4 proxy of a node: inbound HBONE listeners (one per local workload address, so the
//! certificate presented is chosen by the destination address, as Istio's ztunnel does), the
//! SOCKS5 listener and service-VIP listeners for outbound traffic, and their connection tasks.
//!
//! Every task is spawned on the proxy's `TaskTracker` with a span; `shutdown` stops accepting,
//! lets open connections finish until the drain deadline, then force-closes the rest.
//!
//! A new config is applied with [`Proxy::apply`]: certificates for new local workloads are
//! fetched and new listeners bound first (any failure rejects the config and keeps the old one
//! serving), then the state is swapped with one pointer store, listeners no longer wanted stop
//! accepting, and live inbound connections that the new policies deny are closed.

mod admin;
mod apply;
mod connect;
mod ctx;
mod dns_listen;
mod ext_authz;
mod grpc_channel;
pub(crate) mod health;
mod http;
mod hygiene;
mod inbound;
mod jwks;
pub mod k8s;
mod listeners;
mod live;
mod observe;
mod outbound;
mod outbound_dial;
mod outbound_src;
mod own;
mod plaintext;
mod pods;
mod profiles;
mod ratelimit_client;
mod reset;
mod role;
pub mod route;
mod runtime;
pub(crate) mod serves;
mod settings;
mod sniff;
mod upstreams;
mod waypoint;
mod xds;
mod zds_pods;

pub use hygiene::L7Limits;
pub(crate) use live::{LiveGuard, LiveInbound};
pub(crate) use role::ListenerAddrs;
pub use role::{Layers, Role};
pub use settings::{ListenerKind, Listening, ProxyConfig};
pub use xds::XdsFollower;

pub(crate) use ctx::Ctx;
pub use runtime::{ApplyReport, Proxy};
