//! The Kubernetes source of L7 resources (sans-IO): what a waypoint or a sidecar beside istiod
//! watches ([`KUBE_KINDS`], the kinds a local L7 file may hold that Kubernetes stores as
//! objects), and [`KubeObjects`], the objects seen so far, each checked alone on arrival with
//! the same serde types and checks as the L7 file ([`super::parse_l7`]), so both feed the one
//! assembler through [`KubeObjects::resources`].
//!
//! Invariants: an object is keyed by (kind, namespace, name) and held only for the namespace
//! it was watched in; a bad object is rejected alone (reported by kind, namespace, name and
//! field) and the last good version of it, if any, stays; the number of objects and the size
//! of each are capped ([`KubeLimits`]); a relist (`Init` … `InitDone`) replaces a watch's
//! objects only once it is complete.

mod kinds;
mod objects;
mod scope;
#[cfg(test)]
mod tests;

pub use self::kinds::{KUBE_KINDS, KubeKind, KubeLimits, WatchKey};
pub use self::objects::{Applied, KubeObjects};
pub use self::scope::KubeScope;
