//! The restricted `networking.istio.io/v1alpha3` `EnvoyFilter` spec this data plane accepts:
//! the shapes of Istio's task "Enabling Rate Limits using Envoy" (local rate limit with
//! `envoy.filters.http.local_ratelimit`, global with `envoy.filters.http.ratelimit` and route
//! or virtual host `rate_limits`). Istio fields outside those shapes are typed here only to be
//! rejected by name when compiled; unknown fields fail to parse, naming the field. The
//! Envoy-side `patch.value` is kept as JSON and typed per `applyTo` when compiled
//! ([`super::envoy`]).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// `spec` of an `EnvoyFilter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvoyFilterSpec {
    /// The workloads (in the filter's namespace; every namespace from the root namespace)
    /// whose proxies get the patches.
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelectorSpec>,
    /// Waypoints (Gateway API `Gateway`, `gatewayClassName: istio-waypoint`) that get them.
    #[serde(default)]
    pub target_refs: Vec<TargetRefSpec>,
    /// The patches.
    #[serde(default)]
    pub config_patches: Vec<PatchSpec>,
    /// Rejected: this data plane applies a filter's patches in a fixed order.
    #[serde(default)]
    pub priority: Option<IgnoredAny>,
}

/// `workloadSelector`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelectorSpec {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `targetRefs[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRefSpec {
    /// `gateway.networking.k8s.io`.
    #[serde(default)]
    pub group: Option<String>,
    /// `Gateway` (a waypoint).
    pub kind: String,
    /// Its name, in the filter's namespace.
    pub name: String,
}

/// `configPatches[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchSpec {
    /// `HTTP_FILTER`, `HTTP_ROUTE`, `VIRTUAL_HOST` or `NETWORK_FILTER`.
    #[serde(default)]
    pub apply_to: Option<String>,
    /// Where.
    #[serde(default, rename = "match")]
    pub matches: Option<MatchSpec>,
    /// What.
    #[serde(default)]
    pub patch: Option<PatchBodySpec>,
}

/// `configPatches[].match`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    /// `SIDECAR_INBOUND`, `SIDECAR_OUTBOUND`, `GATEWAY` or `ANY` (the default).
    #[serde(default)]
    pub context: Option<String>,
    /// The listener (for `HTTP_FILTER` and `NETWORK_FILTER`).
    #[serde(default)]
    pub listener: Option<ListenerMatchSpec>,
    /// The route configuration (for `HTTP_ROUTE` and `VIRTUAL_HOST`).
    #[serde(default)]
    pub route_configuration: Option<RouteConfigurationMatchSpec>,
    /// Rejected: proxy version and metadata matches.
    #[serde(default)]
    pub proxy: Option<IgnoredAny>,
    /// Rejected: cluster patches.
    #[serde(default)]
    pub cluster: Option<IgnoredAny>,
}

/// `match.listener`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerMatchSpec {
    /// The filter chain.
    #[serde(default)]
    pub filter_chain: Option<FilterChainMatchSpec>,
    /// Only this port's listener.
    #[serde(default)]
    pub port_number: Option<u32>,
    /// Rejected: Envoy listener names.
    #[serde(default)]
    pub name: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub port_name: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub listener_filter: Option<IgnoredAny>,
}

/// `match.listener.filterChain`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterChainMatchSpec {
    /// The network filter.
    #[serde(default)]
    pub filter: Option<FilterMatchSpec>,
    /// Rejected.
    #[serde(default)]
    pub name: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub sni: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub transport_protocol: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub application_protocols: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub destination_port: Option<IgnoredAny>,
}

/// `match.listener.filterChain.filter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterMatchSpec {
    /// `envoy.filters.network.http_connection_manager` (or `envoy.filters.network.tcp_proxy`
    /// for `NETWORK_FILTER`).
    #[serde(default)]
    pub name: Option<String>,
    /// `envoy.filters.http.router`: the filter goes before it.
    #[serde(default)]
    pub sub_filter: Option<SubFilterMatchSpec>,
}

/// `match.listener.filterChain.filter.subFilter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubFilterMatchSpec {
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
}

/// `match.routeConfiguration`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfigurationMatchSpec {
    /// The virtual host.
    #[serde(default)]
    pub vhost: Option<VhostMatchSpec>,
    /// Only this port's route configuration.
    #[serde(default)]
    pub port_number: Option<u32>,
    /// Rejected.
    #[serde(default)]
    pub port_name: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub gateway: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub name: Option<IgnoredAny>,
}

/// `match.routeConfiguration.vhost`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostMatchSpec {
    /// `inbound|http|<port>` (a sidecar's inbound) or `<host>:<port>` (a service; `*` any
    /// host); absent or empty: every virtual host.
    #[serde(default)]
    pub name: Option<String>,
    /// The route (for `HTTP_ROUTE`).
    #[serde(default)]
    pub route: Option<RouteMatchSpec>,
}

/// `match.routeConfiguration.vhost.route`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchSpec {
    /// The route's name (a `VirtualService` `http[].name`).
    #[serde(default)]
    pub name: Option<String>,
    /// `ANY` (the default) or `ROUTE`; `REDIRECT` and `DIRECT_RESPONSE` never reach a limit.
    #[serde(default)]
    pub action: Option<String>,
}

/// `configPatches[].patch`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchBodySpec {
    /// `INSERT_BEFORE` / `INSERT_FIRST` (filters) or `MERGE` (routes, virtual hosts).
    #[serde(default)]
    pub operation: Option<String>,
    /// The Envoy configuration, typed when compiled.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// Rejected.
    #[serde(default)]
    pub filter_class: Option<IgnoredAny>,
}
