//! The compiled policy index: for each workload, the DENY and ALLOW policies that apply to it,
//! computed once per config. A decision looks up one workload and evaluates only its policies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::{Action, Connection, Policy, Scope};

/// A workload as the index needs it.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadRef<'a> {
    /// A unique key (the data plane uses `namespace/name`).
    pub key: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// The outcome of an authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: no DENY matched, and no ALLOW applies or one matched.
    Allow,
    /// Denied by the named DENY policy (`namespace/name`).
    DeniedBy(String),
    /// Denied because ALLOW policies apply and none matched (their names, for the log).
    NotAllowed(Vec<String>),
}

impl Decision {
    /// Whether the connection may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

#[derive(Debug, Default, Clone)]
struct Applied {
    deny: Vec<Arc<Policy>>,
    allow: Vec<Arc<Policy>>,
}

/// Policies compiled per workload.
#[derive(Debug, Default, Clone)]
pub struct PolicyIndex {
    by_workload: HashMap<String, Applied>,
    policies: usize,
}

impl PolicyIndex {
    /// Builds the index. `root_namespace` is the mesh's root namespace (Istio: `istio-system`).
    /// Cost: one pass over the policies, then per workload only the policies of its own and the
    /// root namespace.
    pub fn build<'a>(
        policies: &[Policy],
        workloads: impl IntoIterator<Item = WorkloadRef<'a>>,
        root_namespace: &str,
    ) -> PolicyIndex {
        let mut mesh = Vec::new();
        let mut by_ns: HashMap<String, Vec<Arc<Policy>>> = HashMap::new();
        for p in policies {
            let p = Arc::new(p.clone());
            match &p.scope {
                Scope::Mesh => mesh.push(p),
                Scope::Selector(_) if p.namespace == root_namespace => mesh.push(p),
                Scope::Namespace | Scope::Selector(_) => {
                    by_ns.entry(p.namespace.clone()).or_default().push(p)
                }
            }
        }
        let mut by_workload = HashMap::new();
        for w in workloads {
            let mut applied = Applied::default();
            let candidates = mesh
                .iter()
                .chain(by_ns.get(w.namespace).into_iter().flatten());
            for p in candidates {
                if p.applies_to(root_namespace, w.namespace, w.labels) {
                    match p.action {
                        Action::Deny => applied.deny.push(p.clone()),
                        Action::Allow => applied.allow.push(p.clone()),
                    }
                }
            }
            if !applied.deny.is_empty() || !applied.allow.is_empty() {
                by_workload.insert(w.key.to_owned(), applied);
            }
        }
        PolicyIndex {
            by_workload,
            policies: policies.len(),
        }
    }

    /// Number of policies compiled.
    pub fn len(&self) -> usize {
        self.policies
    }

    /// Whether no policy was compiled.
    pub fn is_empty(&self) -> bool {
        self.policies == 0
    }

    /// The policies that apply to `workload` (`namespace/name` of each), DENY first.
    pub fn applied(&self, workload: &str) -> Vec<String> {
        self.by_workload
            .get(workload)
            .map(|a| {
                a.deny
                    .iter()
                    .chain(&a.allow)
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Decides a connection to `workload`. Istio semantics: any matching DENY denies; then, if
    /// any ALLOW policy applies, one must match; with no ALLOW policy the connection is allowed.
    pub fn evaluate(&self, workload: &str, c: &Connection<'_>) -> Decision {
        let Some(applied) = self.by_workload.get(workload) else {
            return Decision::Allow;
        };
        if let Some(p) = applied.deny.iter().find(|p| p.matches(c)) {
            return Decision::DeniedBy(format!("{}/{}", p.namespace, p.name));
        }
        if applied.allow.is_empty() || applied.allow.iter().any(|p| p.matches(c)) {
            return Decision::Allow;
        }
        Decision::NotAllowed(
            applied
                .allow
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect(),
        )
    }
}
