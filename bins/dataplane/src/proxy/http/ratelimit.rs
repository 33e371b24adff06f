//! What the rate limit layer asks of a stream: the policy of the proxy it is on (a
//! waypoint's, or a workload's inbound or outbound), the virtual host (the addressed service
//! and port, or the workload port inbound), the client address the mesh asserts, and the
//! global rate limit client.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use mesh_l7::layer::{GlobalAnswer, GlobalError, RateLimitSource};
use mesh_l7::ratelimit::{Descriptor, GlobalFilter, RateLimitPolicy, VhostFacts};

use super::Stream;
use crate::proxy::profiles::RateLimitScope;

/// A stream's rate limit source.
#[derive(Clone)]
pub(super) struct Limits(pub(super) Arc<Stream>);

impl RateLimitSource for Limits {
    type Check = Pin<Box<dyn Future<Output = Result<GlobalAnswer, GlobalError>> + Send>>;

    fn with_policy<T>(&self, f: impl FnOnce(&RateLimitPolicy, VhostFacts<'_>) -> T) -> Option<T> {
        let s = &self.0;
        let state = s.ctx.state.load();
        let rl = &state.rate_limits;
        if rl.is_empty() {
            return None;
        }
        let host = s.service.as_ref().and_then(|sp| sp.service.hosts.first());
        let host = host.map(String::as_str);
        let service_port = s.service.as_ref().map_or(0, |sp| sp.port);
        let (policy, port) = match &s.profile.rate_limits {
            RateLimitScope::Inbound(ip, port) => (rl.inbound.get(ip), *port),
            RateLimitScope::Gateway(key) => (rl.waypoints.get(key), service_port),
            RateLimitScope::Outbound(ip) => (rl.outbound.get(ip), service_port),
        };
        Some(f(policy?, VhostFacts { host, port }))
    }

    fn client(&self) -> Option<IpAddr> {
        // The original client as the peer proxy asserted it (`Forwarded` from a trusted
        // peer), never a header the client wrote.
        self.0.client.map(|c| c.ip())
    }

    fn check(&self, filter: &GlobalFilter, descriptors: Vec<Descriptor>) -> Self::Check {
        let s = &self.0;
        let state = s.ctx.state.load();
        let mark = s.ctx.cfg.socket_mark;
        Box::pin(s.ctx.rate_limit.check(&state, filter, descriptors, mark))
    }

    fn refused(&self, limiter: &str, status: http::StatusCode) {
        let s = &self.0;
        // Debug only: the access log line (flag RL) records every refusal; a flood of them
        // must not flood the proxy's own log.
        tracing::debug!(
            direction = s.profile.name,
            src.identity = s.src_identity.as_ref().map_or("-", |i| i.as_str()),
            limiter,
            status = status.as_u16(),
            "request refused by local rate limit"
        );
    }
}
