//! The local mesh config: a multi-document YAML file of Istio resources (plus two small kinds of
//! our own), validated whole into an immutable [`MeshState`].
//!
//! Every problem found is reported, each naming the file, the document, the field and the
//! reason: `mesh.yaml: document 3 (WorkloadEntry demo/echo): spec.address: "1.2.3" is not an IP
//! address`. Nothing is applied unless the whole file is valid.

mod assemble;
mod attach;
mod fail_closed;
mod file;
mod l7file;
pub mod model;
mod parse;
mod protocol;
mod routes;
mod state;
mod waypoints;
pub mod xds;

use std::fmt;
use std::path::{Path, PathBuf};

use mesh_identity::TrustDomain;
// What the unit tests (`tests.rs`, `use super::*`) name from here.
#[cfg(test)]
use std::net::IpAddr;

pub use self::assemble::Resources;
pub use self::l7file::{load_l7_file, parse_l7};
pub use self::model::*;
pub use self::parse::{L7_FILE_KINDS, is_dns_label, is_dns_subdomain};
pub use self::protocol::Protocol;
pub use self::state::{
    Endpoint, EndpointSet, MeshState, Node, Service, ServicePort, Waypoint, WaypointFor, Workload,
};

/// Default HBONE port.
pub const DEFAULT_HBONE_PORT: u16 = 15008;
/// Default root namespace (Istio's).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Cluster name reported in metrics when `MeshConfig.clusterId` is not set (Istio's default).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Which document, e.g. `document 2 (WorkloadEntry demo/echo)`.
    pub location: String,
    /// The field path, e.g. `spec.ports[0].number`.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

/// A rejected config file: every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The problems.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.file.display(), issue.location)?;
            if !issue.field.is_empty() {
                write!(f, ": {}", issue.field)?;
            }
            write!(f, ": {}", issue.reason)?;
        }
        Ok(())
    }
}

/// Reads and validates a mesh config file.
pub fn load_file(path: &Path) -> Result<MeshState, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        issues: vec![ConfigIssue {
            location: "file".into(),
            field: String::new(),
            reason: format!("cannot read: {e}"),
        }],
    })?;
    parse(path, &text)
}

/// Validates mesh config text; `file` is used in error messages.
pub fn parse(file: &Path, text: &str) -> Result<MeshState, ConfigError> {
    let mut v = Validator::default();
    let raw = parse_raw(&mut v, file, text, parse::Mode::Full)?;
    let state = file::compile(&mut v, raw);
    v.into_result(file, state)
}

/// Parses the YAML documents of `text` into resources by kind: every document typed, every
/// problem reported to `v`. Fails only on YAML that does not parse.
fn parse_raw(
    v: &mut Validator,
    file: &Path,
    text: &str,
    mode: parse::Mode,
) -> Result<parse::Raw, ConfigError> {
    // YAML 1.2 booleans only: `n`, `no`, `on` stay strings (a Node named `n` is not `false`).
    // Budgets sized for meshes of tens of thousands of resources (the defaults stop at 1024
    // documents). Alias expansion is bounded by the text's size, not by the defaults (1M
    // events): with those, a 300-byte alias bomb cost 0.35–0.7 s and 200 MB (found by
    // `tests/fuzz_config.rs`); this way parsing stays linear in the input.
    let alias_work = text.len() + 16 * 1024;
    let options = serde_saphyr::options! {
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_documents: 200_000,
            max_nodes: 4_000_000,
            max_events: 16_000_000,
            max_recorded_anchor_events: alias_work,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: alias_work,
        },
    };
    let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple_with_options(text, options)
    {
        Ok(d) => d,
        Err(e) => {
            return Err(ConfigError {
                file: file.to_owned(),
                issues: vec![ConfigIssue {
                    location: "YAML".into(),
                    field: String::new(),
                    reason: e.to_string(),
                }],
            });
        }
    };
    let mut raw = parse::Raw::default();
    for (i, doc) in docs.into_iter().enumerate() {
        raw.add(v, i + 1, doc, mode);
    }
    Ok(raw)
}

/// Collects the problems found, each with its location.
#[derive(Default)]
struct Validator {
    issues: Vec<ConfigIssue>,
}

impl Validator {
    fn err(&mut self, location: &str, field: impl Into<String>, reason: impl Into<String>) {
        self.issues.push(ConfigIssue {
            location: location.to_owned(),
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// `ok` if no problem was found, else every problem found in `file`.
    fn into_result<T>(self, file: &Path, ok: T) -> Result<T, ConfigError> {
        if self.issues.is_empty() {
            Ok(ok)
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                issues: self.issues,
            })
        }
    }
}

/// The label (Istio's pod label) that gives a workload its own sidecar.
pub const SIDECAR_LABEL: &str = "sidecar.istio.io/inject";

/// The node name of a sidecar workload's proxy: `sidecar/<namespace>/<name>`.
pub fn sidecar_node_name(namespace: &str, name: &str) -> String {
    format!("sidecar/{namespace}/{name}")
}

pub(crate) fn default_trust_domain() -> TrustDomain {
    #[allow(clippy::expect_used)]
    // DEFAULT_TRUST_DOMAIN is a constant valid trust domain (checked by the unit tests).
    DEFAULT_TRUST_DOMAIN
        .parse()
        .expect("default trust domain is valid")
}

#[cfg(test)]
mod tests;
