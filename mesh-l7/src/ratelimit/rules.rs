//! An `EnvoyFilter` checked into rules ([`RateLimitRules`]): what a proxy's policy is built
//! from (and compared by, to keep its buckets across configs). Checking is in
//! [`super::compile`]; this module only holds the checked shapes.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode};

use super::descriptor::Recipe;
use super::parts::{Append, Fraction, GlobalFilter, VhostMatch};
use crate::resilience::ratelimit::BucketConfig;

/// Where a proxy's HTTP or TCP path sits (Istio's `match.context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// A sidecar's inbound (server side).
    SidecarInbound,
    /// A sidecar's outbound (client side).
    SidecarOutbound,
    /// A waypoint (Istio's `GATEWAY`).
    Gateway,
}

/// A configured descriptor's entries (a value `None`: any value).
pub(crate) type Entries = Vec<(String, Option<String>)>;

/// A local limiter's checked config (buckets made per proxy).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LocalTemplate {
    pub(crate) name: String,
    pub(crate) bucket: Option<BucketConfig>,
    pub(crate) enabled: Fraction,
    pub(crate) enforced: Fraction,
    pub(crate) headers: Vec<(HeaderName, HeaderValue, Append)>,
    pub(crate) x_headers: bool,
    pub(crate) descriptors: Vec<(Entries, BucketConfig)>,
    pub(crate) max_dynamic: usize,
    pub(crate) status: StatusCode,
}

/// One checked patch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rule {
    LocalFilter(LocalTemplate),
    GlobalFilter(Arc<GlobalFilter>),
    Route {
        port: Option<u16>,
        vhost: VhostMatch,
        route: Option<Option<String>>,
        rate_limits: Vec<Recipe>,
        local: Option<LocalTemplate>,
    },
    Connections {
        name: String,
        cfg: BucketConfig,
    },
}

/// One `EnvoyFilter`'s checked patches, by context.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimitRules {
    pub(super) rules: Vec<(Option<Context>, Rule)>,
}
