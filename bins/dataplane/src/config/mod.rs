//! The local mesh config: a multi-document YAML file of Istio resources (plus two small kinds of
//! our own), validated whole into an immutable [`MeshState`].
//!
//! Every problem found is reported, each naming the file, the document, the field and the
//! reason: `mesh.yaml: document 3 (WorkloadEntry demo/echo): spec.address: "1.2.3" is not an IP
//! address`. Nothing is applied unless the whole file is valid.

mod app_tunnel;
mod assemble;
mod attach;
mod bind;
mod defaults;
mod endpoint_stats;
mod endpoints;
mod errors;
pub mod ext_authz;
mod fail_closed;
mod file;
pub mod k8s;
mod l7file;
mod load;
mod locality;
mod lookup;
pub mod model;
mod netindex;
mod parse;
mod placement;
mod protocol;
pub mod ratelimits;
pub mod retry;
mod routes;
mod service_waypoints;
mod state;
mod visibility;
mod waypoints;
mod weighted;
mod workload;
pub mod xds;

// What the unit tests (`tests.rs`, `use super::*`) name from here.
#[cfg(test)]
use std::net::IpAddr;
#[cfg(test)]
use std::path::Path;

pub use self::app_tunnel::AppTunnel;
pub(crate) use self::defaults::default_trust_domain;
pub use self::defaults::{
    DEFAULT_CLUSTER_ID, DEFAULT_HBONE_PORT, DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN,
    SIDECAR_LABEL, sidecar_node_name,
};
pub use self::endpoint_stats::{EndpointRegistry, Here};
pub use self::endpoints::{Choice, InFlight};
pub use self::errors::{ConfigError, ConfigIssue};
pub use self::l7file::{load_l7_file, parse_l7};
pub use self::load::{load_file, parse};
pub use self::model::*;
pub use self::parse::{L7_FILE_KINDS, Resources, is_dns_label, is_dns_subdomain};
pub use self::protocol::Protocol;
pub use self::state::{
    Endpoint, EndpointSet, MeshState, Node, Service, ServicePort, Waypoint, WaypointFor, Workload,
};
pub use self::visibility::Visibility;

#[cfg(test)]
mod tests;
