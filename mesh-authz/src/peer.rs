//! Istio `PeerAuthentication`: which connections a workload accepts without mutual TLS.
//!
//! Semantics (Istio's `security/v1beta1/peer_authentication.proto` and istiod's ambient
//! translation): a policy in the root namespace without a selector is mesh-wide, one in
//! another namespace without a selector is namespace-wide, one with a selector applies to the
//! matching workloads of its namespace. `UNSET` inherits from the next wider scope; with
//! nothing set the mode is `PERMISSIVE`. `portLevelMtls` (keyed by the workload's own port,
//! not a service port) needs a selector. In ambient mode `DISABLE` behaves as `PERMISSIVE`:
//! plaintext is accepted (HBONE is always mutual TLS).
//!
//! Where Istio breaks a tie by creation time (two mesh-wide policies, two namespace-wide in
//! one namespace, two selectors matching one workload), a file has no creation time, so the
//! tie is a configuration error naming both. Istio ignores selector policies in the root
//! namespace; here they are an error, never silently ignored.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::error::FieldError;
use crate::index::WorkloadRef;
use crate::istio::spec::WorkloadSelector;

/// `mtls.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the wider scope.
    #[default]
    Unset,
    /// Accept plaintext (ambient treats it as `PERMISSIVE`).
    Disable,
    /// Accept mutual TLS and plaintext.
    Permissive,
    /// Accept only mutual TLS.
    Strict,
}

/// `mtls` / `portLevelMtls[port]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSpec {
    /// Mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `spec` of a `security.istio.io/v1` `PeerAuthentication`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workload selector; absent means namespace (or mesh, in the root namespace) scope.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Mode for every port.
    #[serde(default)]
    pub mtls: Option<MtlsSpec>,
    /// Per-port modes, keyed by the workload's port number.
    #[serde(default)]
    pub port_level_mtls: Option<BTreeMap<String, MtlsSpec>>,
}

/// A validated `PeerAuthentication`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerAuthentication {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Selector labels (`None`: namespace or mesh scope).
    pub selector: Option<BTreeMap<String, String>>,
    /// Mode for every port.
    pub mode: MtlsMode,
    /// Per-port modes.
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl PeerAuthenticationSpec {
    /// Validates the spec of policy `namespace/name`.
    pub fn to_policy(
        &self,
        namespace: &str,
        name: &str,
        root_namespace: &str,
    ) -> Result<PeerAuthentication, Vec<FieldError>> {
        let mut errs = Vec::new();
        // Istio: an empty selector (`matchLabels: {}`) is no selector.
        let selector = self
            .selector
            .as_ref()
            .filter(|s| !s.match_labels.is_empty());
        let err = |errs: &mut Vec<FieldError>, field: &str, reason: String| {
            errs.push(FieldError {
                field: field.to_owned(),
                reason,
            })
        };
        if selector.is_some() && namespace == root_namespace {
            err(
                &mut errs,
                "spec.selector",
                format!(
                    "a selector policy in the root namespace {root_namespace:?} has no effect in Istio; move it to the workload's namespace or drop the selector for a mesh-wide policy"
                ),
            );
        }
        let mut ports = BTreeMap::new();
        if let Some(pl) = &self.port_level_mtls {
            if selector.is_none() {
                err(
                    &mut errs,
                    "spec.portLevelMtls",
                    "mesh/namespace peer authentication cannot have port level mTLS (portLevelMtls requires selector)".into(),
                );
            }
            if pl.is_empty() {
                err(
                    &mut errs,
                    "spec.portLevelMtls",
                    "port level mTLS, if defined, must have at least one element".into(),
                );
            }
            for (k, v) in pl {
                match k.parse::<u16>() {
                    Ok(p) if p > 0 => {
                        ports.insert(p, v.mode);
                    }
                    _ => err(
                        &mut errs,
                        &format!("spec.portLevelMtls.{k}"),
                        "port must be in range 1..65535".into(),
                    ),
                }
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(PeerAuthentication {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            selector: selector.map(|s| s.match_labels.clone()),
            mode: self.mtls.as_ref().map_or(MtlsMode::Unset, |m| m.mode),
            ports,
        })
    }
}

/// The effective peer-authentication modes of one workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadMtls {
    /// Mode of ports without an override.
    pub mode: MtlsMode,
    /// Per-port overrides (already resolved: never `Unset`).
    pub ports: HashMap<u16, MtlsMode>,
}

impl WorkloadMtls {
    /// Whether plaintext to `port` is refused.
    pub fn strict(&self, port: u16) -> bool {
        self.ports.get(&port).copied().unwrap_or(self.mode) == MtlsMode::Strict
    }
}

/// Effective modes per workload, resolved at config time.
#[derive(Debug, Clone, Default)]
pub struct PeerAuthnIndex {
    by_workload: HashMap<String, WorkloadMtls>,
    default: WorkloadMtls,
}

/// A conflict Istio would settle by creation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The policies involved (`namespace/name`).
    pub policies: Vec<String>,
    /// What they conflict on.
    pub reason: String,
}

fn resolve(modes: &[MtlsMode]) -> MtlsMode {
    // The narrowest scope that sets a mode wins; nothing set is PERMISSIVE.
    modes
        .iter()
        .copied()
        .find(|m| *m != MtlsMode::Unset)
        .map_or(MtlsMode::Permissive, |m| {
            if m == MtlsMode::Disable {
                MtlsMode::Permissive
            } else {
                m
            }
        })
}

impl PeerAuthnIndex {
    /// Resolves `policies` for every workload. Returns the conflicts Istio would break by
    /// creation time (the index is still built, using the first policy of each conflict).
    pub fn build<'a>(
        policies: &[PeerAuthentication],
        workloads: impl IntoIterator<Item = WorkloadRef<'a>>,
        root_namespace: &str,
    ) -> (PeerAuthnIndex, Vec<Conflict>) {
        let mut conflicts = Vec::new();
        let id = |p: &PeerAuthentication| format!("{}/{}", p.namespace, p.name);
        let mut mesh: Option<&PeerAuthentication> = None;
        let mut namespaces: HashMap<&str, &PeerAuthentication> = HashMap::new();
        let mut selectors: HashMap<&str, Vec<&PeerAuthentication>> = HashMap::new();
        for p in policies {
            match (&p.selector, p.namespace == root_namespace) {
                (None, true) => match mesh {
                    Some(first) => conflicts.push(Conflict {
                        policies: vec![id(first), id(p)],
                        reason: "more than one mesh-wide PeerAuthentication (Istio would use the oldest)".into(),
                    }),
                    None => mesh = Some(p),
                },
                (None, false) => match namespaces.get(p.namespace.as_str()) {
                    Some(first) => conflicts.push(Conflict {
                        policies: vec![id(first), id(p)],
                        reason: format!(
                            "more than one namespace-wide PeerAuthentication in {:?} (Istio would use the oldest)",
                            p.namespace
                        ),
                    }),
                    None => {
                        namespaces.insert(&p.namespace, p);
                    }
                },
                (Some(_), _) => selectors.entry(&p.namespace).or_default().push(p),
            }
        }
        let mesh_mode = mesh.map_or(MtlsMode::Unset, |p| p.mode);
        let default = WorkloadMtls {
            mode: resolve(&[mesh_mode]),
            ports: HashMap::new(),
        };
        let mut by_workload = HashMap::new();
        for w in workloads {
            let ns_mode = namespaces
                .get(w.namespace)
                .map_or(MtlsMode::Unset, |p| p.mode);
            let matching: Vec<&PeerAuthentication> = selectors
                .get(w.namespace)
                .map(|ps| {
                    ps.iter()
                        .copied()
                        .filter(|p| {
                            p.selector
                                .as_ref()
                                .is_some_and(|s| s.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if matching.len() > 1 {
                conflicts.push(Conflict {
                    policies: matching.iter().map(|p| id(p)).collect(),
                    reason: format!(
                        "more than one PeerAuthentication selects workload {} (Istio would use the oldest)",
                        w.key
                    ),
                });
            }
            let wl = matching.first();
            let wl_mode = wl.map_or(MtlsMode::Unset, |p| p.mode);
            let mode = resolve(&[wl_mode, ns_mode, mesh_mode]);
            let ports = wl
                .map(|p| {
                    p.ports
                        .iter()
                        .map(|(port, m)| (*port, resolve(&[*m, wl_mode, ns_mode, mesh_mode])))
                        .collect()
                })
                .unwrap_or_default();
            let eff = WorkloadMtls { mode, ports };
            if eff != default {
                by_workload.insert(w.key.to_owned(), eff);
            }
        }
        (
            PeerAuthnIndex {
                by_workload,
                default,
            },
            conflicts,
        )
    }

    /// The effective modes of workload `key`.
    pub fn workload(&self, key: &str) -> &WorkloadMtls {
        self.by_workload.get(key).unwrap_or(&self.default)
    }

    /// Whether plaintext to `port` of workload `key` is refused.
    pub fn strict(&self, key: &str, port: u16) -> bool {
        self.workload(key).strict(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa(ns: &str, name: &str, json: &str) -> PeerAuthentication {
        let spec: PeerAuthenticationSpec = serde_json::from_str(json).unwrap();
        spec.to_policy(ns, name, "istio-system").unwrap()
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_owned(), app.to_owned())].into_iter().collect()
    }

    #[test]
    fn scopes_inherit_and_override() {
        let (db, web, other) = (labels("db"), labels("web"), labels("x"));
        let ws = [
            WorkloadRef {
                key: "shop/db",
                namespace: "shop",
                labels: &db,
            },
            WorkloadRef {
                key: "shop/web",
                namespace: "shop",
                labels: &web,
            },
            WorkloadRef {
                key: "blog/x",
                namespace: "blog",
                labels: &other,
            },
        ];
        // Nothing set: PERMISSIVE.
        let (idx, c) = PeerAuthnIndex::build(&[], ws, "istio-system");
        assert!(c.is_empty());
        assert!(!idx.strict("shop/db", 5432));
        let policies = [
            pa("istio-system", "mesh", r#"{"mtls": {"mode": "STRICT"}}"#),
            pa("shop", "ns", r#"{"mtls": {"mode": "PERMISSIVE"}}"#),
            pa(
                "shop",
                "db",
                r#"{"selector": {"matchLabels": {"app": "db"}}, "portLevelMtls": {"5432": {"mode": "STRICT"}, "9090": {"mode": "DISABLE"}, "8080": {"mode": "UNSET"}}}"#,
            ),
        ];
        let (idx, c) = PeerAuthnIndex::build(&policies, ws, "istio-system");
        assert!(c.is_empty(), "{c:?}");
        // Mesh STRICT applies where nothing narrower is set.
        assert!(idx.strict("blog/x", 80));
        assert!(
            idx.strict("unknown/w", 80),
            "workloads not in the index get the mesh mode"
        );
        // Namespace PERMISSIVE overrides mesh STRICT.
        assert!(!idx.strict("shop/web", 80));
        // Workload policy with UNSET mode inherits the namespace's PERMISSIVE...
        assert!(!idx.strict("shop/db", 80));
        // ...and its port-level STRICT wins on that port; DISABLE and UNSET ports are open.
        assert!(idx.strict("shop/db", 5432));
        assert!(!idx.strict("shop/db", 9090));
        assert!(!idx.strict("shop/db", 8080));
    }

    #[test]
    fn validation_and_conflicts() {
        let bad = |ns: &str, json: &str| {
            let spec: PeerAuthenticationSpec = serde_json::from_str(json).unwrap();
            spec.to_policy(ns, "p", "istio-system").unwrap_err()
        };
        let e = bad("shop", r#"{"portLevelMtls": {"80": {"mode": "STRICT"}}}"#);
        assert!(e[0].reason.contains("requires selector"), "{e:?}");
        let e = bad(
            "shop",
            r#"{"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {}}"#,
        );
        assert!(e[0].reason.contains("at least one element"), "{e:?}");
        let e = bad(
            "shop",
            r#"{"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"0": {"mode": "STRICT"}}}"#,
        );
        assert_eq!(e[0].field, "spec.portLevelMtls.0");
        let e = bad(
            "istio-system",
            r#"{"selector": {"matchLabels": {"a": "b"}}}"#,
        );
        assert_eq!(e[0].field, "spec.selector");
        assert!(
            serde_json::from_str::<PeerAuthenticationSpec>(r#"{"mtls": {"mode": "LOOSE"}}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<PeerAuthenticationSpec>(
                r#"{"mtls": {"mode": "STRICT"}, "extra": 1}"#
            )
            .is_err()
        );

        let l = labels("db");
        let ws = [WorkloadRef {
            key: "shop/db",
            namespace: "shop",
            labels: &l,
        }];
        let policies = [
            pa("istio-system", "a", r#"{"mtls": {"mode": "STRICT"}}"#),
            pa("istio-system", "b", r#"{}"#),
            pa(
                "shop",
                "s1",
                r#"{"selector": {"matchLabels": {"app": "db"}}}"#,
            ),
            pa(
                "shop",
                "s2",
                r#"{"selector": {"matchLabels": {"app": "db"}}}"#,
            ),
            // An empty selector is namespace scope (Istio), not a third selector.
            pa(
                "shop",
                "ns",
                r#"{"selector": {"matchLabels": {}}, "mtls": {"mode": "STRICT"}}"#,
            ),
        ];
        assert_eq!(policies[4].selector, None);
        let (idx, c) = PeerAuthnIndex::build(&policies, ws, "istio-system");
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].policies, ["istio-system/a", "istio-system/b"]);
        assert_eq!(c[1].policies, ["shop/s1", "shop/s2"]);
        assert!(
            idx.strict("shop/other", 80),
            "namespace-wide STRICT applies"
        );
    }
}
