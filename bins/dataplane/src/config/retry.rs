//! Retries in the mesh state: the mesh's default policy (MeshConfig
//! `defaultHttpRetryPolicy`, else Istio's) and the `DestinationRule` retry budgets by host and
//! subset, compiled once per config.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_l7::resilience::budget::RetryBudgetPolicy;
use mesh_l7::resilience::retry::{RetryPolicy, RetrySpec, compile_policy};

use super::errors::Validator;

/// Retry budgets by host (lower case), then by subset (`None`: the host's own).
pub type RetryBudgets = HashMap<String, Vec<(Option<String>, RetryBudgetPolicy)>>;

/// Istio's default retry policy, shared.
pub fn istio_default() -> Option<Arc<RetryPolicy>> {
    Some(Arc::new(RetryPolicy::istio_default()))
}

/// The mesh's default policy: MeshConfig `defaultHttpRetryPolicy` when set (`attempts: 0`
/// turns default retries off, as in Istio), else Istio's.
pub(super) fn default_policy(
    v: &mut Validator,
    loc: &str,
    spec: Option<&RetrySpec>,
) -> Option<Arc<RetryPolicy>> {
    let Some(spec) = spec else {
        return istio_default();
    };
    let mut errs = Vec::new();
    let p = compile_policy(spec, "spec.defaultHttpRetryPolicy", &mut errs);
    for e in errs {
        v.err(loc, e.field, e.reason);
    }
    p.map(Arc::new)
}

/// The retry budgets the destination policies set.
pub(super) fn budgets(policies: &HashMap<String, mesh_l7::DestinationPolicy>) -> RetryBudgets {
    let mut out = RetryBudgets::new();
    for (host, p) in policies {
        let mut list: Vec<_> = p
            .subsets
            .iter()
            .filter_map(|s| Some((Some(s.name.clone()), s.retry_budget?)))
            .collect();
        if let Some(b) = p.retry_budget {
            list.push((None, b));
        }
        if !list.is_empty() {
            out.insert(host.clone(), list);
        }
    }
    out
}

/// The budget of `host`'s `subset` (host names are case-insensitive).
pub fn budget_of(
    budgets: &RetryBudgets,
    host: &str,
    subset: Option<&str>,
) -> Option<RetryBudgetPolicy> {
    if budgets.is_empty() {
        return None;
    }
    let list = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        budgets.get(&host.to_ascii_lowercase())
    } else {
        budgets.get(host)
    }?;
    list.iter()
        .find(|(s, _)| s.as_deref() == subset)
        .or_else(|| list.iter().find(|(s, _)| s.is_none()))
        .map(|(_, b)| *b)
}
