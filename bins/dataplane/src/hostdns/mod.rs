//! The sans-IO core for hostname workloads (Istio workload API: `Workload.hostname` without
//! `addresses`, resolved by DNS when a connection picks the workload): the answer's safety
//! check, the address choice and a bounded cache honouring the answer's TTL.
//!
//! NOT WIRED YET: the xDS conversion still rejects hostname-only workloads by name
//! (`config::xds::convert`). What is left to serve them: a `hostname` on the compiled workload
//! (kept out of the by-address index, the DNS proxy's index, health checks and rate limits), a
//! resolver (hickory-resolver from the ztunnel's `/etc/resolv.conf`, overridable for tests)
//! driving this core at dial time, and the `DF` response flag on failure.
//!
//! Istio's ztunnel (`src/state.rs`, `resolve_on_demand_dns`) looks the hostname up with
//! hickory's resolver at connect time, prefers an address of the downstream connection's IP
//! family, else any, chosen at random; no answer is a connect failure. This core adds what a
//! proxy must not skip: an answer pointing into the proxy or its node is refused.

mod cache;
mod resolve;
#[cfg(test)]
mod resolve_tests;
#[cfg(test)]
mod tests;

pub use cache::{Cache, Limits, Outcome, Own, Refused, check_answer, pick, unsafe_reason};
pub use resolve::{MAX_IN_FLIGHT, Resolver};
