//! The compiled policy index: for each workload, the DENY and ALLOW policies that apply to it,
//! computed once per config. A decision looks up one workload and evaluates only its policies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::compiled::CompiledPolicy;
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

/// The outcome of an authorization decision. Borrows the index, so deciding never allocates;
/// its `Display` is the reason for the log (`denied by ns/name`, `not allowed by ns/a, ns/b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Allowed: no DENY matched, and no ALLOW applies or one matched.
    Allow,
    /// Denied by this DENY policy.
    DeniedBy(&'a Policy),
    /// Denied because these ALLOW policies apply and none matched.
    NotAllowed(&'a [Arc<Policy>]),
}

impl Decision<'_> {
    /// Whether the connection may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// The deciding policies, `namespace/name` each (the DENY that matched, or every ALLOW
    /// that applied); empty when allowed.
    pub fn policies(&self) -> Vec<String> {
        match self {
            Decision::Allow => Vec::new(),
            Decision::DeniedBy(p) => vec![format!("{}/{}", p.namespace, p.name)],
            Decision::NotAllowed(ps) => ps
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect(),
        }
    }
}

impl std::fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Allow => f.write_str("allowed"),
            Decision::DeniedBy(p) => write!(f, "denied by {}/{}", p.namespace, p.name),
            Decision::NotAllowed(ps) => {
                f.write_str("not allowed by ")?;
                for (i, p) in ps.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}/{}", p.namespace, p.name)?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Applied {
    deny: Vec<Arc<CompiledPolicy>>,
    allow_compiled: Vec<Arc<CompiledPolicy>>,
    /// The ALLOW policies, for [`Decision::NotAllowed`].
    allow: Vec<Arc<Policy>>,
    /// Every applied policy (AUDIT too), for per-request evaluation by an L7 proxy.
    all: Vec<Arc<Policy>>,
    /// Some applied policy uses HTTP fields.
    uses_http: bool,
}

/// The policies sorted by how they apply, each compiled once.
#[derive(Debug, Default)]
struct Catalog {
    root_namespace: String,
    mesh: Vec<Arc<Policy>>,
    by_ns: HashMap<String, Vec<Arc<Policy>>>,
    /// `Scope::Assigned` policies by `namespace/name`.
    assigned: HashMap<String, Arc<Policy>>,
    /// By the address of the `Arc<Policy>` the catalog holds (an identity, never followed).
    compiled: HashMap<usize, Arc<CompiledPolicy>>,
}

fn identity(p: &Arc<Policy>) -> usize {
    Arc::as_ptr(p) as usize
}

impl Catalog {
    fn new(policies: &[Policy], root_namespace: &str) -> Catalog {
        let mut c = Catalog {
            root_namespace: root_namespace.to_owned(),
            ..Catalog::default()
        };
        for p in policies {
            let p = Arc::new(p.clone());
            match &p.scope {
                Scope::Mesh => c.mesh.push(p),
                Scope::Selector(_) if p.namespace == root_namespace => c.mesh.push(p),
                Scope::Namespace | Scope::Selector(_) => {
                    c.by_ns.entry(p.namespace.clone()).or_default().push(p)
                }
                // Enforced by waypoints (see `http`), not compiled for ztunnels.
                Scope::TargetRefs(_) => {}
                Scope::Assigned => {
                    c.assigned.insert(format!("{}/{}", p.namespace, p.name), p);
                }
            }
        }
        // Each policy compiled once, shared by every workload it applies to.
        c.compiled = c
            .mesh
            .iter()
            .chain(c.by_ns.values().flatten())
            .chain(c.assigned.values())
            .map(|p| (identity(p), Arc::new(CompiledPolicy::new(p.clone()))))
            .collect();
        c
    }

    /// The policies applying to one workload; `None` if none does.
    fn applied(&self, w: &WorkloadRef<'_>, listed: &[String]) -> Option<Arc<Applied>> {
        let mut applied = Applied::default();
        let candidates = self
            .mesh
            .iter()
            .chain(self.by_ns.get(w.namespace).into_iter().flatten())
            .map(|p| (p, false))
            .chain(
                listed
                    .iter()
                    .filter_map(|k| self.assigned.get(k))
                    .map(|p| (p, true)),
            );
        for (p, listed) in candidates {
            let applies = if listed {
                // Listed twice by the control plane: applied once.
                !applied.all.iter().any(|a| Arc::ptr_eq(a, p))
            } else {
                p.applies_to(&self.root_namespace, w.namespace, w.labels)
            };
            if applies {
                applied.all.push(p.clone());
                applied.uses_http |= p.uses_http();
                let compiled = self.compiled.get(&identity(p)).cloned();
                match (p.action, compiled) {
                    // CUSTOM at L4 (a ztunnel, a sidecar's TCP port): no request to send to
                    // the authorizer, so enforced as a DENY without its HTTP fields, as Istio's
                    // ztunnel fails safe on L7 policies it is given (fail closed).
                    (Action::Deny | Action::Custom, Some(c)) => applied.deny.push(c),
                    (Action::Allow, Some(c)) => {
                        applied.allow_compiled.push(c);
                        applied.allow.push(p.clone());
                    }
                    _ => {}
                }
            }
        }
        (!applied.all.is_empty()).then(|| Arc::new(applied))
    }
}

/// Policies compiled per workload.
#[derive(Debug, Default, Clone)]
pub struct PolicyIndex {
    /// Workloads with the same namespace, labels and listed policies share one `Applied`;
    /// keys are shared too, so cloning the index copies no string.
    by_workload: HashMap<Arc<str>, Arc<Applied>>,
    catalog: Arc<Catalog>,
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
        Self::build_assigned(
            policies,
            workloads.into_iter().map(|w| (w, &[] as &[String])),
            root_namespace,
        )
    }

    /// As [`build`](Self::build), for a control plane that resolves selectors itself (Istio's
    /// workload API): each workload comes with the `namespace/name` keys of the
    /// [`Scope::Assigned`] policies that apply to it; mesh and namespace scopes apply as usual.
    /// A listed policy that does not exist is skipped (the control plane may send the
    /// workload before the policy).
    pub fn build_assigned<'a>(
        policies: &[Policy],
        workloads: impl IntoIterator<Item = (WorkloadRef<'a>, &'a [String])>,
        root_namespace: &str,
    ) -> PolicyIndex {
        let catalog = Catalog::new(policies, root_namespace);
        let workloads = workloads.into_iter();
        let mut by_workload = HashMap::with_capacity(workloads.size_hint().0);
        // Workloads alike (a deployment's replicas) get the same policies: computed once.
        type Alike<'b> = (&'b str, &'b [String], &'b BTreeMap<String, String>);
        let mut alike: HashMap<Alike<'a>, Option<Arc<Applied>>, foldhash::fast::RandomState> =
            HashMap::default();
        for (w, listed) in workloads {
            let applied = match alike.get(&(w.namespace, listed, w.labels)) {
                Some(shared) => shared.clone(),
                None => {
                    let a = catalog.applied(&w, listed);
                    alike.insert((w.namespace, listed, w.labels), a.clone());
                    a
                }
            };
            if let Some(a) = applied {
                by_workload.insert(Arc::from(w.key), a);
            }
        }
        PolicyIndex {
            by_workload,
            catalog: Arc::new(catalog),
            policies: policies.len(),
        }
    }

    /// The same policies with some workloads changed: each of `upserts` (as in
    /// [`build_assigned`](Self::build_assigned)) recomputed, each of `removes` (keys) dropped,
    /// every other workload's entry shared with `self`. Costs a copy of the key table, not a
    /// rebuild.
    pub fn update_assigned<'a>(
        &self,
        upserts: impl IntoIterator<Item = (WorkloadRef<'a>, &'a [String])>,
        removes: impl IntoIterator<Item = &'a str>,
    ) -> PolicyIndex {
        let mut by_workload = self.by_workload.clone();
        for k in removes {
            by_workload.remove(k);
        }
        for (w, listed) in upserts {
            match self.catalog.applied(&w, listed) {
                Some(a) => {
                    by_workload.insert(Arc::from(w.key), a);
                }
                None => {
                    by_workload.remove(w.key);
                }
            }
        }
        PolicyIndex {
            by_workload,
            catalog: self.catalog.clone(),
            policies: self.policies,
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
                    .map(|c| &c.policy)
                    .chain(&a.allow)
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every policy applying to `workload` (AUDIT too), for per-request evaluation.
    pub fn policies_of(&self, workload: &str) -> &[Arc<Policy>] {
        self.by_workload
            .get(workload)
            .map_or(&[], |a| a.all.as_slice())
    }

    /// For a proxy that can see requests (a sidecar): every policy applying to `workload`
    /// (AUDIT too) when some policy uses HTTP fields, to evaluate per request with
    /// [`crate::http::evaluate_http`]; `None` when connection-level decisions are exact.
    pub fn http_policies(&self, workload: &str) -> Option<&[Arc<Policy>]> {
        self.by_workload
            .get(workload)
            .filter(|a| a.uses_http)
            .map(|a| a.all.as_slice())
    }

    /// Decides a connection to `workload`. Istio semantics: any matching DENY denies; then, if
    /// any ALLOW policy applies, one must match; with no ALLOW policy the connection is allowed.
    pub fn evaluate(&self, workload: &str, c: &Connection<'_>) -> Decision<'_> {
        let Some(applied) = self.by_workload.get(workload) else {
            return Decision::Allow;
        };
        // Istio authz: DENY before ALLOW.
        if let Some(p) = applied.deny.iter().find(|p| p.matches(c)) {
            return Decision::DeniedBy(&p.policy);
        }
        if applied.allow.is_empty() || applied.allow_compiled.iter().any(|p| p.matches(c)) {
            return Decision::Allow;
        }
        Decision::NotAllowed(&applied.allow)
    }
}
