//! The resilience mechanisms' sans-IO cores: each takes its spec, compiles it into a policy,
//! and decides per request from inputs (random rolls, `now`) the caller passes in; the tower
//! layers in [`crate::layer`] apply the decisions.

pub mod budget;
pub mod fault;
pub mod mirror;
pub mod outlier;
pub mod pool;
pub mod ratelimit;
pub mod retry;
pub mod retry_gateway;
