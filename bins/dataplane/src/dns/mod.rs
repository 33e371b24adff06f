//! The DNS proxy (port 15053), as Istio's ztunnel runs it when istio-cni captures a pod's DNS
//! (`ISTIO_META_DNS_CAPTURE`): mesh service names are answered from the current mesh state,
//! everything else is relayed to the upstream resolvers of a `resolv.conf`.
//!
//! - [`index`]: the state's names in hash maps, built once per applied state.
//! - [`names`]: what a short or search-expanded name means from the asking pod's namespace.
//! - [`answer`]: the sans-IO resolver core (query in, answer or "forward" out).
//! - [`forward`]: the relay to the upstreams (random ID and port, answers checked).
//! - [`server`]: a listener's UDP and TCP loops and their bounds.
//! - [`resolv`]: the upstreams from a `resolv.conf`.
//! - [`proxy`]: what a process's DNS listeners share; [`settings`]: bounds, errors, ports.
//! - [`args`]: the flags; [`capture`]: the iptables rules sending port 53 here.
//!
//! Messages are hickory-proto's; no DNS wire format is parsed by hand here.

pub mod answer;
pub mod args;
pub mod capture;
pub mod forward;
pub mod index;
pub mod metrics;
pub(crate) mod names;
pub mod proxy;
pub mod resolv;
pub mod server;
pub mod settings;

#[cfg(test)]
mod tests;

pub use answer::{Outcome, resolve};
pub use args::DnsArgs;
pub use forward::{Forwarder, HostSockets, UpstreamSockets};
pub use index::{DnsEndpoint, DnsIndex, DnsPort, DnsService};
pub use metrics::DnsMetrics;
pub use proxy::DnsProxy;
pub use server::DnsListener;
pub use settings::{DNS_PORT, DnsError, DnsLimits, DnsSettings, IN_POD_ADDR};
