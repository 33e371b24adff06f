//! Istio's `AuthorizationPolicy` spec (security.istio.io/v1) as users write it: serde types
//! only, unknown fields refused. Shared with `RequestAuthentication` and `PeerAuthentication`
//! (selector, `targetRefs`). Depends on nothing else in the crate.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workload selector; absent means namespace (or mesh, in the root namespace) scope.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (default), `DENY`, `AUDIT` or `CUSTOM`.
    #[serde(default)]
    pub action: Option<String>,
    /// The external authorizer of a `CUSTOM` policy (a mesh `extensionProviders` name).
    #[serde(default)]
    pub provider: Option<ProviderSpec>,
    /// Rules; absent or empty matches nothing.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Waypoint attachment: the Services or Gateways (waypoints) whose waypoint enforces it.
    #[serde(default)]
    pub target_refs: Vec<TargetRefSpec>,
    /// The single-target form of `targetRefs`.
    #[serde(default)]
    pub target_ref: Option<TargetRefSpec>,
}

/// `provider` of a `CUSTOM` policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The name of one of the mesh's `extensionProviders`.
    pub name: String,
}

/// `targetRefs[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRefSpec {
    /// API group (`""` or `core` for Service, `gateway.networking.k8s.io` for Gateway,
    /// `networking.istio.io` for ServiceEntry).
    #[serde(default)]
    pub group: Option<String>,
    /// `Service`, `ServiceEntry` or `Gateway`.
    pub kind: String,
    /// Name, in the policy's namespace.
    pub name: String,
    /// Not supported: a policy targets resources of its own namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `selector`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `rules[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `from[]`.
    #[serde(default)]
    pub from: Vec<FromSpec>,
    /// `to[]`.
    #[serde(default)]
    pub to: Vec<ToSpec>,
    /// `when[]`.
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

/// `from[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromSpec {
    /// `source`.
    pub source: SourceSpec,
}

/// `to[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToSpec {
    /// `operation`.
    pub operation: OperationSpec,
}

/// `source`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
}

/// `operation`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OperationSpec {
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `when[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionSpec {
    /// Attribute name, e.g. `source.ip`.
    pub key: String,
    /// Values, any of which matches.
    #[serde(default)]
    pub values: Vec<String>,
    /// Values, none of which may match.
    #[serde(default)]
    pub not_values: Vec<String>,
}
