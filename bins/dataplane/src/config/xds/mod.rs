//! Istio's workload API (Delta ADS from istiod) → the same [`MeshState`](super::MeshState) the
//! local file produces, so both sources feed one validated, atomically swapped state.
//!
//! Each resource is validated on its own when it arrives ([`XdsStore::apply_addresses`],
//! [`XdsStore::apply_authorizations`]): a bad one is rejected by name with a reason (the xDS
//! client NACKs it) and the rest of the update applies. [`XdsStore::build`] then assembles the
//! whole state from the accepted resources; references between resources (a workload's
//! services, waypoint and policies) are resolved there and never fail, since the control
//! plane may send them in any order.
//!
//! Mapping (Istio's ztunnel semantics):
//! - `Workload` → a workload: its first address, `trust_domain`/`namespace`/`service_account`
//!   identity, `canonical_name`/`canonical_revision` for telemetry. With `tunnel_protocol:
//!   HBONE` it is in the mesh: on node `node`, reached by HBONE on `<address>:15008`; without,
//!   it is reached in plaintext. `UNHEALTHY` workloads are not service endpoints.
//! - `Service` → a service: `hostname`, its VIPs, ports with their endpoints from each
//!   workload's `services["<namespace>/<hostname>"]` (per-workload target ports).
//! - `waypoint` (a VIP or a `namespace/hostname`) → the waypoint service's first endpoint.
//! - `Authorization` → a policy: `GLOBAL`, `NAMESPACE`, or `WORKLOAD_SELECTOR` (applied where
//!   a workload lists it in `authorization_policies`); rules ORed, clauses ANDed, a clause's
//!   matches ORed.
//!
//! The store's [`Local`] says which workloads are this proxy's own: a ztunnel's are
//! those on its node; a sidecar's, its one workload; a waypoint has none, and is itself a
//! waypoint in the state. A waypoint and a sidecar also hold the L7 kinds of their local file
//! ([`XdsStore::set_l7`]), merged with istiod's resources by the shared assembler.
//!
//! Files: `store` (the store, its records and build cache: a leaf), `convert` (resources →
//! records), `apply` (updates → records, rejections), `build` (records → state, through the
//! shared assembler), `patch` (workload-only changes patched into the last state).

mod app_tunnel;
mod apply;
mod build;
mod convert;
#[cfg(test)]
mod hostname_tests;
mod network;
mod patch;
mod store;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_131;
#[cfg(test)]
mod tests_131_lookup;
#[cfg(test)]
mod tests_131_prop;
mod weighted;
#[cfg(test)]
mod weighted_tests;

// What the unit tests (`tests.rs`, `use super::*`) name from here.
#[cfg(test)]
use super::Resources;

pub use store::{Local, XdsSettings, XdsStore};
