//! Resources attached to the `istio-waypoint` GatewayClass (Istio 1.25: `targetRefs` to
//! `{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}`, in the root
//! namespace) apply at every waypoint, e.g. the waypoint default-deny (an ALLOW policy
//! without rules). They are added to each waypoint's own `Gateway/<ns>/<name>` entry at
//! config time, so a waypoint finds them where it finds its Gateway's policies.

use std::collections::HashMap;
use std::sync::Arc;

use super::Waypoint;
use super::model::WAYPOINT_CLASS;

/// Moves the entry of the `istio-waypoint` GatewayClass (`GatewayClass/<root>/istio-waypoint`)
/// of `by_target` to every waypoint's own entry.
pub(super) fn class_to_every_waypoint<T: Clone>(
    by_target: &mut HashMap<String, Vec<T>>,
    root_namespace: &str,
    waypoints: &HashMap<String, Arc<Waypoint>>,
) {
    let Some(class) = by_target.remove(&format!("GatewayClass/{root_namespace}/{WAYPOINT_CLASS}"))
    else {
        return;
    };
    for wp in waypoints.values() {
        by_target
            .entry(wp.target_key.clone())
            .or_default()
            .extend(class.iter().cloned());
    }
}
