//! `backendRefs[]`: a leaf module of the spec, shared by the rules and the `RequestMirror`
//! filter ([`crate::resilience::mirror`]).

use serde::Deserialize;

/// `backendRefs[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// `""` (core) for a Service.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` (default).
    #[serde(default)]
    pub kind: Option<String>,
    /// Service name (in the route's namespace).
    pub name: String,
    /// Not supported.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Not supported yet.
    #[serde(default)]
    pub filters: Option<serde::de::IgnoredAny>,
}
