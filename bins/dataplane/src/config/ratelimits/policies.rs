//! The rate limit policies of every proxy of a mesh state ([`RateLimits`]): a leaf module,
//! held by the state and built by [`super::index`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use mesh_l7::ratelimit::RateLimitPolicy;

/// Rate limit policies by proxy.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// A workload's server side (`SIDECAR_INBOUND`), by its address.
    pub inbound: HashMap<IpAddr, Arc<RateLimitPolicy>>,
    /// A workload's client side (`SIDECAR_OUTBOUND`), by its address.
    pub outbound: HashMap<IpAddr, Arc<RateLimitPolicy>>,
    /// A waypoint (`GATEWAY`), by its `Gateway/<ns>/<name>` key.
    pub waypoints: HashMap<String, Arc<RateLimitPolicy>>,
}

impl RateLimits {
    /// Whether no proxy has any.
    pub fn is_empty(&self) -> bool {
        self.inbound.is_empty() && self.outbound.is_empty() && self.waypoints.is_empty()
    }

    /// Whether a new inbound connection to `workload` at `now` passes its connection rate
    /// limit (`envoy.filters.network.local_ratelimit`, `SIDECAR_INBOUND`); takes a token.
    pub fn admit_connection(&self, workload: IpAddr, now: tokio::time::Instant) -> bool {
        let limit = self.inbound.get(&workload).and_then(|p| p.connections());
        limit.is_none_or(|l| l.admit(now))
    }
}
