//! The `networking.istio.io/v1` `VirtualService` spec as users write it (HTTP routes for mesh
//! traffic). Fields this data plane does not implement are rejected by name when compiled,
//! never silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

pub(crate) mod destination;

pub use self::destination::{DestinationSpec, PortSpec};

/// `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// Hosts the routes apply to (service host names).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `mesh` (the default) is the only gateway supported.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP routes, first match wins.
    #[serde(default)]
    pub http: Vec<HttpRouteSpec>,
    /// TCP routes: not supported yet.
    #[serde(default)]
    pub tcp: Option<serde::de::IgnoredAny>,
    /// TLS routes: not supported yet.
    #[serde(default)]
    pub tls: Option<serde::de::IgnoredAny>,
    /// Not supported: every route is visible mesh-wide.
    #[serde(default)]
    pub export_to: Option<serde::de::IgnoredAny>,
}

/// `http[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Name (for logs).
    #[serde(default)]
    pub name: Option<String>,
    /// Matches, any of which selects the route (none: every request).
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchSpec>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestinationSpec>,
    /// Redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<RedirectSpec>,
    /// Answer directly instead of forwarding.
    #[serde(default)]
    pub direct_response: Option<DirectResponseSpec>,
    /// Rewrite before forwarding.
    #[serde(default)]
    pub rewrite: Option<RewriteSpec>,
    /// Header manipulation for every destination.
    #[serde(default)]
    pub headers: Option<HeadersSpec>,
    /// Request timeout (`0s`: none, Istio's default): 504 `UT` past it.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retry policy (none: the mesh's default).
    #[serde(default)]
    pub retries: Option<crate::resilience::retry::RetrySpec>,
    /// Fault injection (delay, abort).
    #[serde(default)]
    pub fault: Option<crate::resilience::fault::FaultSpec>,
    /// Copies of the requests go there too (fire and forget).
    #[serde(default)]
    pub mirror: Option<DestinationSpec>,
    /// Share of requests `mirror` takes (none: all).
    #[serde(default)]
    pub mirror_percentage: Option<crate::resilience::fault::PercentSpec>,
    /// Several mirrors, each with its share (instead of `mirror`).
    #[serde(default)]
    pub mirrors: Vec<crate::resilience::mirror::MirrorSpec>,
    /// Not supported.
    #[serde(default)]
    pub cors_policy: Option<serde::de::IgnoredAny>,
}

/// A string match: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchSpec {
    /// Exact.
    #[serde(default)]
    pub exact: Option<String>,
    /// Prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// RE2-style regular expression, matching the whole value.
    #[serde(default)]
    pub regex: Option<String>,
}

/// `http[].match[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchSpec {
    /// Name (for logs).
    #[serde(default)]
    pub name: Option<String>,
    /// Path (without the query).
    #[serde(default)]
    pub uri: Option<StringMatchSpec>,
    /// Method.
    #[serde(default)]
    pub method: Option<StringMatchSpec>,
    /// Authority (Host).
    #[serde(default)]
    pub authority: Option<StringMatchSpec>,
    /// Headers, all of which must match (lower-case names).
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatchSpec>,
    /// Headers that must not match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatchSpec>,
    /// Query parameters, all of which must match.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatchSpec>,
    /// The service port the request arrived for.
    #[serde(default)]
    pub port: Option<u32>,
    /// Labels the source workload must carry.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Match `uri` case-insensitively.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Not supported.
    #[serde(default)]
    pub scheme: Option<serde::de::IgnoredAny>,
    /// Not supported.
    #[serde(default)]
    pub gateways: Option<serde::de::IgnoredAny>,
    /// Not supported.
    #[serde(default)]
    pub source_namespace: Option<serde::de::IgnoredAny>,
    /// Not supported.
    #[serde(default)]
    pub stat_prefix: Option<serde::de::IgnoredAny>,
}

/// `route[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestinationSpec {
    /// Where.
    pub destination: DestinationSpec,
    /// Relative weight (default 100 when alone, else 0).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Header manipulation for this destination.
    #[serde(default)]
    pub headers: Option<HeadersSpec>,
}

/// `redirect`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedirectSpec {
    /// New path.
    #[serde(default)]
    pub uri: Option<String>,
    /// New authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// Status (default 301).
    #[serde(default)]
    pub redirect_code: Option<u32>,
    /// Scheme.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<u32>,
}

/// `directResponse`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseSpec {
    /// Status.
    pub status: u32,
    /// Body.
    #[serde(default)]
    pub body: Option<BodySpec>,
}

/// `directResponse.body`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodySpec {
    /// Text body.
    #[serde(default)]
    pub string: Option<String>,
    /// Not supported.
    #[serde(default)]
    pub bytes: Option<serde::de::IgnoredAny>,
}

/// `rewrite`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RewriteSpec {
    /// Replaces the matched `uri` prefix (or the whole path for exact/regex matches).
    #[serde(default)]
    pub uri: Option<String>,
    /// New authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// Not supported yet.
    #[serde(default)]
    pub uri_regex_rewrite: Option<serde::de::IgnoredAny>,
}

/// `headers`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSpec {
    /// Request operations.
    #[serde(default)]
    pub request: Option<HeaderOpsSpec>,
    /// Response operations.
    #[serde(default)]
    pub response: Option<HeaderOpsSpec>,
}

/// `set` / `add` / `remove`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsSpec {
    /// Replace.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `networking.istio.io/v1` `DestinationRule` spec: subsets and load balancing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service host.
    pub host: String,
    /// Default policy for the host.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
    /// Named subsets.
    #[serde(default)]
    pub subsets: Vec<SubsetSpec>,
    /// Not supported: every rule is visible mesh-wide.
    #[serde(default)]
    pub export_to: Option<serde::de::IgnoredAny>,
    /// Not supported yet.
    #[serde(default)]
    pub workload_selector: Option<serde::de::IgnoredAny>,
}

/// `subsets[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubsetSpec {
    /// Name (referenced by `VirtualService` destinations).
    pub name: String,
    /// Labels an endpoint's workload must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Policy overriding the host's.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
}

/// `trafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// Load balancing.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSpec>,
    /// Connection pool limits and timeouts (circuit breaking).
    #[serde(default)]
    pub connection_pool: Option<crate::resilience::pool::ConnectionPoolSpec>,
    /// Passive health checking: ejection of failing endpoints.
    #[serde(default)]
    pub outlier_detection: Option<crate::resilience::outlier::OutlierDetectionSpec>,
    /// Not supported: mesh traffic is always HBONE mTLS.
    #[serde(default)]
    pub tls: Option<serde::de::IgnoredAny>,
    /// Not supported yet.
    #[serde(default)]
    pub port_level_settings: Option<serde::de::IgnoredAny>,
    /// Not supported yet.
    #[serde(default)]
    pub tunnel: Option<serde::de::IgnoredAny>,
    /// Not supported yet.
    #[serde(default)]
    pub proxy_protocol: Option<serde::de::IgnoredAny>,
    /// Retry budget (Istio 1.27): active retries capped by a share of active requests.
    #[serde(default)]
    pub retry_budget: Option<crate::resilience::budget::RetryBudgetSpec>,
}

/// `loadBalancer`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM` (`UNSPECIFIED`: the default).
    #[serde(default)]
    pub simple: Option<String>,
    /// Consistent hashing.
    #[serde(default)]
    pub consistent_hash: Option<crate::balance::spec::ConsistentHashSpec>,
    /// Locality balancing and failover.
    #[serde(default)]
    pub locality_lb_setting: Option<crate::balance::spec::LocalityLbSettingSpec>,
    /// Slow start (Istio 1.24+).
    #[serde(default)]
    pub warmup: Option<crate::balance::spec::WarmupSpec>,
    /// Slow start window (a duration), the older form of `warmup`.
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
}
