//! The small compiled parts of a rate limit config that both the checked rules
//! ([`super::rules`]) and a proxy's policy ([`super::policy`]) hold: fractions, header
//! append modes, the global filter and virtual host matches. A leaf module.

use std::time::Duration;

/// A fraction as Envoy's `FractionalPercent`, in parts per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction(pub(crate) u32);

impl Fraction {
    /// All requests.
    pub const ALL: Fraction = Fraction(1_000_000);

    /// Whether a roll (any `u32`) falls in the fraction.
    pub fn hit(self, roll: u32) -> bool {
        self.0 >= 1_000_000 || roll % 1_000_000 < self.0
    }
}

/// How a configured header is written on the 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Append {
    Overwrite,
    Add,
    IfAbsent,
}

/// The global (rate limit service) filter: Envoy's `RateLimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalFilter {
    /// The service's domain.
    pub domain: String,
    /// Refuse (500, `RLSE`) when the service fails (else let through).
    pub failure_mode_deny: bool,
    /// How long to wait for the service.
    pub timeout: Duration,
    /// The service's host (from Istio's `outbound|<port>||<host>` cluster name).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// `:authority` of the calls.
    pub authority: String,
    /// Write `x-ratelimit-*` headers from the service's answer.
    pub x_headers: bool,
}

/// Which virtual hosts a patch matches (`routeConfiguration.vhost.name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VhostMatch {
    Any,
    /// `inbound|http|<port>`.
    Inbound(u16),
    /// `<host>:<port>` (`None`: `*`).
    Host(Option<String>, u16),
}

/// The virtual host a request is on, as the proxy knows it.
#[derive(Debug, Clone, Copy)]
pub struct VhostFacts<'a> {
    /// The addressed service's host, if any.
    pub host: Option<&'a str>,
    /// The port the request arrived for (the service port, or the workload port inbound).
    pub port: u16,
}

impl VhostMatch {
    pub(super) fn matches(&self, v: VhostFacts<'_>) -> bool {
        match self {
            VhostMatch::Any => true,
            VhostMatch::Inbound(p) => *p == v.port,
            VhostMatch::Host(h, p) => {
                *p == v.port && h.as_deref().is_none_or(|h| v.host == Some(h))
            }
        }
    }
}
