//! Rate limiting as Istio users configure it: a restricted `EnvoyFilter` ([`spec`]) with the
//! shapes of Istio's task "Enabling Rate Limits using Envoy" — Envoy's local rate limit
//! (`envoy.filters.http.local_ratelimit`, per proxy, per route, per client with descriptors),
//! the global one (`envoy.filters.http.ratelimit` asking a RateLimitService), and connection
//! limits (`envoy.filters.network.local_ratelimit`). [`RateLimitRules::compile`] checks a
//! spec (every field it does not implement rejected by name); [`RateLimitPolicy::build`] makes
//! one proxy's policy, whose buckets live as long as it; [`RateLimitPolicy::decide`] decides
//! per request, sans-IO. The token bucket itself is [`crate::resilience::ratelimit`].

mod actions;
mod compile;
mod descriptor;
pub mod envoy;
mod fields;
mod filters;
mod parts;
mod policy;
mod rules;
mod shapes;
pub mod spec;

pub use descriptor::{Descriptor, RequestView};
pub use parts::{Fraction, GlobalFilter, VhostFacts};
pub use policy::{ConnectionLimit, LocalOutcome, RateLimitPolicy, Verdict, x_ratelimit_headers};
pub use rules::{Context, RateLimitRules};
pub use spec::EnvoyFilterSpec;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;
