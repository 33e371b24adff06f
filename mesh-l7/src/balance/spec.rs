//! The `loadBalancer` fields of a `DestinationRule` this module owns, as Istio writes them:
//! `consistentHash`, `localityLbSetting`, `warmup` (and `warmupDurationSecs`, a duration).

use std::collections::BTreeMap;

use serde::Deserialize;

/// `loadBalancer.consistentHash`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHashSpec {
    /// Hash a request header.
    #[serde(default)]
    pub http_header_name: Option<String>,
    /// Hash a cookie (generated when absent and `ttl` set).
    #[serde(default)]
    pub http_cookie: Option<HttpCookieSpec>,
    /// Hash the client's IP address.
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    /// Hash a query parameter.
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    /// Ring hash table.
    #[serde(default)]
    pub ring_hash: Option<RingHashSpec>,
    /// Maglev table.
    #[serde(default)]
    pub maglev: Option<MaglevSpec>,
    /// Deprecated: `ringHash.minimumRingSize`.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

/// `httpCookie`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCookieSpec {
    /// Cookie name.
    pub name: String,
    /// Its path when generated.
    #[serde(default)]
    pub path: Option<String>,
    /// Its lifetime when generated (a duration; absent: never generated).
    #[serde(default)]
    pub ttl: Option<String>,
    /// Not supported: rejected by name.
    #[serde(default)]
    pub attributes: Option<serde::de::IgnoredAny>,
}

/// `ringHash`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHashSpec {
    /// Smallest ring size.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

/// `maglev`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaglevSpec {
    /// Table size (a prime).
    #[serde(default)]
    pub table_size: Option<u64>,
}

/// `localityLbSetting`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityLbSettingSpec {
    /// Weighted distribution.
    #[serde(default)]
    pub distribute: Vec<DistributeSpec>,
    /// Region failover pairs.
    #[serde(default)]
    pub failover: Vec<FailoverSpec>,
    /// Labels to fail over by, in order.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Whether locality balancing applies (default: yes).
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// One `distribute` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DistributeSpec {
    /// Proxy locality pattern.
    pub from: String,
    /// Target locality patterns and weights.
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// One `failover` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverSpec {
    /// The proxy's region.
    pub from: String,
    /// The region to fail over to.
    pub to: String,
}

/// `warmup` (Istio 1.24+).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WarmupSpec {
    /// The window (a duration).
    pub duration: String,
    /// Smallest share in percent (default 10).
    #[serde(default)]
    pub minimum_percent: Option<f64>,
    /// Curve (default 1.0).
    #[serde(default)]
    pub aggression: Option<f64>,
}
