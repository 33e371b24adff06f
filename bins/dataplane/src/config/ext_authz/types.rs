//! The ext_authz config as data: `extensionProviders[]` as written, and the validated
//! providers by name that the state carries. A leaf of the config module.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use mesh_l7::layer::ext_authz::Provider;
use serde::Deserialize;

/// Istio's default `timeout` of an ext_authz provider (release note "authz-ext-authz": 10m).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// `extensionProviders[]`: a name and exactly one provider kind (kept as JSON until
/// validated, so an unsupported kind is rejected by its name).
#[derive(Debug, Clone, Deserialize)]
pub struct ExtensionProviderSpec {
    /// The name `CUSTOM` policies use in `provider.name`.
    pub name: String,
    /// The provider kind (`envoyExtAuthzGrpc`, …) and its settings.
    #[serde(flatten)]
    pub kind: BTreeMap<String, serde_json::Value>,
}

/// One provider: what the layer needs and where the authorizer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzProvider {
    /// Timeout, fail-open, status on error.
    pub settings: Provider,
    /// The authorizer's service host (`[<namespace>/]<hostname>` with the namespace dropped).
    pub host: String,
    /// The service port.
    pub port: u16,
}

/// The mesh's ext_authz providers by name, and whether any `CUSTOM` policy exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtAuthzProviders {
    /// By `extensionProviders[].name`.
    pub by_name: HashMap<String, Arc<ExtAuthzProvider>>,
    /// Some `CUSTOM` policy exists (the layer is active).
    pub has_custom: bool,
}
