//! The Envoy side of an `EnvoyFilter` patch (`patch.value`), in Envoy's snake_case JSON, for
//! the rate limit shapes only: `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`,
//! `envoy.extensions.filters.http.ratelimit.v3.RateLimit`,
//! `envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit`, and the route /
//! virtual host `rate_limits` and `typed_per_filter_config`. Fields Envoy has but this data
//! plane does not implement are typed as [`IgnoredAny`] to be rejected by name; others fail to
//! parse, naming the field.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// `patch.value` of `HTTP_FILTER` and `NETWORK_FILTER` patches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterValue {
    /// `envoy.filters.http.local_ratelimit`, `envoy.filters.http.ratelimit` or
    /// `envoy.filters.network.local_ratelimit`.
    pub name: String,
    /// Its config (`@type` the filter's, or a `udpa.type.v1.TypedStruct` wrapping it).
    #[serde(default)]
    pub typed_config: Option<serde_json::Value>,
}

/// `patch.value` of a `VIRTUAL_HOST` patch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostValue {
    /// Rate limit actions for the virtual host's routes.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitEntry>,
    /// Per-filter configs, by filter name.
    #[serde(default)]
    pub typed_per_filter_config: BTreeMap<String, serde_json::Value>,
}

/// `patch.value` of an `HTTP_ROUTE` patch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteValue {
    /// The route action's fields.
    #[serde(default)]
    pub route: Option<RouteActionValue>,
    /// Per-filter configs, by filter name.
    #[serde(default)]
    pub typed_per_filter_config: BTreeMap<String, serde_json::Value>,
}

/// `route` of an `HTTP_ROUTE` patch value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteActionValue {
    /// Rate limit actions for the route.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitEntry>,
}

/// `envoy.config.route.v3.RateLimit`: actions making one descriptor.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitEntry {
    /// The actions, each one entry of the descriptor.
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
    /// Rejected.
    #[serde(default)]
    pub stage: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub disable_key: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub limit: Option<IgnoredAny>,
}

/// `RateLimit.Action`: exactly one of the fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// A request header's value.
    #[serde(default)]
    pub request_headers: Option<RequestHeadersSpec>,
    /// The client's address.
    #[serde(default)]
    pub remote_address: Option<IgnoredAny>,
    /// The client's address masked to a prefix (one bucket per network).
    #[serde(default)]
    pub masked_remote_address: Option<MaskedRemoteAddressSpec>,
    /// A constant.
    #[serde(default)]
    pub generic_key: Option<GenericKeySpec>,
    /// A constant when the headers match.
    #[serde(default)]
    pub header_value_match: Option<HeaderValueMatchSpec>,
}

/// `Action.MaskedRemoteAddress`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskedRemoteAddressSpec {
    /// IPv4 prefix length (0-32, default 32).
    #[serde(default)]
    pub v4_prefix_mask_len: Option<u32>,
    /// IPv6 prefix length (0-128, default 128).
    #[serde(default)]
    pub v6_prefix_mask_len: Option<u32>,
}

/// `Action.RequestHeaders`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestHeadersSpec {
    /// The header (`:path`, `:authority`, `:method` too).
    pub header_name: String,
    /// The descriptor entry's key.
    pub descriptor_key: String,
    /// Absent header: skip this entry (true) or the whole descriptor (false, the default).
    #[serde(default)]
    pub skip_if_absent: bool,
}

/// `Action.GenericKey`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericKeySpec {
    /// The value.
    pub descriptor_value: String,
    /// The key (default `generic_key`).
    #[serde(default)]
    pub descriptor_key: Option<String>,
}

/// `Action.HeaderValueMatch`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueMatchSpec {
    /// The value.
    pub descriptor_value: String,
    /// The key (default `header_match`).
    #[serde(default)]
    pub descriptor_key: Option<String>,
    /// Whether the entry is made when the headers match (true, the default) or when not.
    #[serde(default)]
    pub expect_match: Option<bool>,
    /// All must match.
    #[serde(default)]
    pub headers: Vec<HeaderMatcherSpec>,
}

/// `envoy.config.route.v3.HeaderMatcher`, restricted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcherSpec {
    /// Header name (`:path`, `:method`, `:authority` too).
    pub name: String,
    /// Equal.
    #[serde(default)]
    pub exact_match: Option<String>,
    /// Starts with.
    #[serde(default)]
    pub prefix_match: Option<String>,
    /// Ends with.
    #[serde(default)]
    pub suffix_match: Option<String>,
    /// Present (or, false, absent).
    #[serde(default)]
    pub present_match: Option<bool>,
    /// A string matcher.
    #[serde(default)]
    pub string_match: Option<StringMatcherSpec>,
    /// Inverts the result.
    #[serde(default)]
    pub invert_match: bool,
}

/// `envoy.type.matcher.v3.StringMatcher`, restricted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatcherSpec {
    /// Equal.
    #[serde(default)]
    pub exact: Option<String>,
    /// Starts with.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Ends with.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Rejected.
    #[serde(default)]
    pub ignore_case: Option<IgnoredAny>,
}

/// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimitSpec {
    /// Names the limiter in logs.
    #[serde(default)]
    pub stat_prefix: String,
    /// The default bucket (absent: the filter only passes, as Envoy's without one).
    #[serde(default)]
    pub token_bucket: Option<TokenBucketSpec>,
    /// Fraction of requests checked (absent: none, as Envoy).
    #[serde(default)]
    pub filter_enabled: Option<RuntimeFractionSpec>,
    /// Fraction of checked requests refused when out of tokens (absent: none).
    #[serde(default)]
    pub filter_enforced: Option<RuntimeFractionSpec>,
    /// Headers added to the 429.
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOptionSpec>,
    /// `DRAFT_VERSION_03`: `x-ratelimit-limit`, `-remaining`, `-reset` on every checked
    /// response; `OFF` (the default): none.
    #[serde(default)]
    pub enable_x_ratelimit_headers: Option<String>,
    /// Buckets for descriptors made by the route's `rate_limits`.
    #[serde(default)]
    pub descriptors: Vec<LocalDescriptorSpec>,
    /// Per wildcard descriptor, how many distinct values keep a bucket (default 20).
    #[serde(default)]
    pub max_dynamic_descriptors: Option<u32>,
    /// The refusal's status (default 429).
    #[serde(default)]
    pub status: Option<HttpStatusSpec>,
    /// Rejected.
    #[serde(default)]
    pub request_headers_to_add_when_not_enforced: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub local_rate_limit_per_downstream_connection: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub always_consume_default_token_bucket: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub stage: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub rate_limited_as_resource_exhausted: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub local_cluster_rate_limit: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub vh_rate_limits: Option<IgnoredAny>,
    /// Rejected (give `rate_limits` on the route or virtual host).
    #[serde(default)]
    pub rate_limits: Option<IgnoredAny>,
}

/// `envoy.type.v3.HttpStatus`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStatusSpec {
    /// The code.
    pub code: u16,
}

/// `envoy.config.core.v3.TokenBucket`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketSpec {
    /// Capacity (> 0).
    pub max_tokens: u32,
    /// Per fill (default 1).
    #[serde(default)]
    pub tokens_per_fill: Option<u32>,
    /// Interval (>= 50ms), as `60s`, `0.5s` or `500ms`.
    pub fill_interval: String,
}

/// `envoy.config.core.v3.RuntimeFractionalPercent`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFractionSpec {
    /// This data plane has no runtime layer: the default value always applies, as in an
    /// Envoy whose runtime does not hold the key.
    #[serde(default)]
    pub runtime_key: Option<String>,
    /// The fraction.
    pub default_value: FractionSpec,
}

/// `envoy.type.v3.FractionalPercent`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FractionSpec {
    /// Numerator.
    #[serde(default)]
    pub numerator: u32,
    /// `HUNDRED` (the default), `TEN_THOUSAND` or `MILLION`.
    #[serde(default)]
    pub denominator: Option<String>,
}

/// `envoy.config.core.v3.HeaderValueOption`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOptionSpec {
    /// The header.
    pub header: HeaderValueSpec,
    /// false: replace (the only kind on a response the proxy makes itself).
    #[serde(default)]
    pub append: Option<bool>,
    /// `OVERWRITE_IF_EXISTS_OR_ADD`, `APPEND_IF_EXISTS_OR_ADD`, `ADD_IF_ABSENT`.
    #[serde(default)]
    pub append_action: Option<String>,
    /// Rejected.
    #[serde(default)]
    pub keep_empty_value: Option<IgnoredAny>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueSpec {
    /// Name.
    pub key: String,
    /// Value.
    #[serde(default)]
    pub value: String,
    /// Rejected.
    #[serde(default)]
    pub raw_value: Option<IgnoredAny>,
}

/// `LocalRateLimit.descriptors[]` (`envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDescriptorSpec {
    /// Entries a request descriptor must equal (a value omitted: any value, each its own
    /// bucket).
    pub entries: Vec<DescriptorEntrySpec>,
    /// The bucket.
    pub token_bucket: TokenBucketSpec,
}

/// A descriptor entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorEntrySpec {
    /// Key.
    pub key: String,
    /// Value (omitted: a wildcard).
    #[serde(default)]
    pub value: Option<String>,
}

/// `envoy.extensions.filters.http.ratelimit.v3.RateLimit` (global).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRateLimitSpec {
    /// The rate limit service's domain.
    pub domain: String,
    /// true: refuse (500, `RLSE`) when the service fails; false (the default): let through.
    #[serde(default)]
    pub failure_mode_deny: bool,
    /// How long to wait for the service (default 20ms, as Envoy).
    #[serde(default)]
    pub timeout: Option<String>,
    /// The service.
    pub rate_limit_service: RateLimitServiceSpec,
    /// `DRAFT_VERSION_03`: `x-ratelimit-*` headers from the service's answer; `OFF` (default).
    #[serde(default)]
    pub enable_x_ratelimit_headers: Option<String>,
    /// Rejected.
    #[serde(default)]
    pub stage: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub request_type: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub rate_limited_as_resource_exhausted: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub status_on_error: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub rate_limited_status: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub disable_x_envoy_ratelimited_header: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub response_headers_to_add: Option<IgnoredAny>,
}

/// `envoy.config.ratelimit.v3.RateLimitServiceConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitServiceSpec {
    /// The gRPC service.
    pub grpc_service: GrpcServiceSpec,
    /// `V3` (the only version).
    #[serde(default)]
    pub transport_api_version: Option<String>,
}

/// `envoy.config.core.v3.GrpcService`, restricted to `envoy_grpc`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServiceSpec {
    /// The cluster.
    #[serde(default)]
    pub envoy_grpc: Option<EnvoyGrpcSpec>,
    /// Rejected.
    #[serde(default)]
    pub google_grpc: Option<IgnoredAny>,
    /// Rejected (give the filter's `timeout`).
    #[serde(default)]
    pub timeout: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub initial_metadata: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub retry_policy: Option<IgnoredAny>,
}

/// `GrpcService.EnvoyGrpc`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyGrpcSpec {
    /// Istio's cluster name `outbound|<port>||<host>`.
    pub cluster_name: String,
    /// `:authority` of the calls (default the host).
    #[serde(default)]
    pub authority: Option<String>,
}

/// `envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit` (connections).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkLocalRateLimitSpec {
    /// Names the limiter in logs.
    #[serde(default)]
    pub stat_prefix: String,
    /// One token per connection.
    pub token_bucket: TokenBucketSpec,
    /// Rejected.
    #[serde(default)]
    pub runtime_enabled: Option<IgnoredAny>,
    /// Rejected.
    #[serde(default)]
    pub share_key: Option<IgnoredAny>,
}
