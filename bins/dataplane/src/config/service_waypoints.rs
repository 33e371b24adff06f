//! Which waypoint a service's connection goes through: its weighted waypoints
//! (`Service.weighted_waypoints`, a [`Weighted`](super::weighted::Weighted) table) chosen per
//! connection, else its single `waypoint`; and which waypoints serve (and so may deliver) a
//! service's traffic.

use std::sync::Arc;

use super::workload::{Service, Waypoint};

impl Service {
    /// The waypoint a new connection to this service goes through: one of its weighted
    /// waypoints, chosen now (O(log n)), else its single waypoint. The caller keeps it for
    /// the connection's life: a config change never moves a connection.
    pub fn waypoint_for_connection(&self) -> Option<&Arc<Waypoint>> {
        match &self.weighted_waypoints {
            Some(t) => Some(t.pick()),
            None => self.waypoint.as_ref(),
        }
    }

    /// Whether waypoint `namespace/name` serves this service: its single waypoint or one of
    /// its weighted ones, weight 0 included (compared without building a key).
    pub fn served_by(&self, namespace: &str, name: &str) -> bool {
        self.all_waypoints()
            .any(|w| w.namespace == namespace && w.name == name)
    }

    /// Every waypoint that may carry this service's traffic: the single one and the
    /// weighted ones (the destination accepts each).
    pub fn all_waypoints(&self) -> impl Iterator<Item = &Arc<Waypoint>> {
        self.waypoint.iter().chain(
            self.weighted_waypoints
                .as_ref()
                .map(|t| t.all())
                .unwrap_or_default(),
        )
    }
}
