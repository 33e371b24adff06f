//! `destination` and its `port`: a leaf module of the spec, shared by the routes and the
//! mirrors ([`crate::resilience::mirror`]).

use serde::Deserialize;

/// `destination`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    /// Service host.
    pub host: String,
    /// DestinationRule subset.
    #[serde(default)]
    pub subset: Option<String>,
    /// Service port.
    #[serde(default)]
    pub port: Option<PortSpec>,
}

/// `port`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Number.
    pub number: u32,
}
