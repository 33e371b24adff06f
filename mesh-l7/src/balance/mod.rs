//! `DestinationRule` compiled: subsets (endpoint label sets) and load balancing, with the
//! balancing choice itself (sans-IO: the caller keeps the per-endpoint request counts).

use std::collections::BTreeMap;

use crate::istio::{DestinationRuleSpec, TrafficPolicySpec};
use mesh_authz::istio::FieldError;

#[cfg(test)]
mod choice_tests;
mod choose;
#[cfg(test)]
mod compile_tests;
pub mod ewma;
#[cfg(test)]
mod ewma_sim;
pub mod hash;
mod health;
mod kind;
pub mod locality;
pub mod pick;
mod policy;
pub mod spec;
pub mod warmup;

pub use self::choose::choose;
pub use self::kind::LoadBalancer;
pub use self::policy::Balancing;

/// A named subset.
#[derive(Debug, Clone)]
pub struct Subset {
    /// Name.
    pub name: String,
    /// Labels an endpoint's workload must carry.
    pub labels: BTreeMap<String, String>,
    /// Its balancing.
    pub lb: LoadBalancer,
    /// Its hashing, locality and warmup.
    pub balancing: Balancing,
    /// Its retry budget (its own, else the host's).
    pub retry_budget: Option<crate::resilience::budget::RetryBudgetPolicy>,
}

/// A compiled `DestinationRule`.
#[derive(Debug, Clone)]
pub struct DestinationPolicy {
    /// Service host (lower case).
    pub host: String,
    /// Balancing for the host.
    pub lb: LoadBalancer,
    /// Subsets.
    pub subsets: Vec<Subset>,
    /// Hashing, locality and warmup for the host.
    pub balancing: Balancing,
    /// Outlier detection and connection pool of the host.
    pub health: crate::resilience::pool::HostPolicy,
    /// The host's retry budget.
    pub retry_budget: Option<crate::resilience::budget::RetryBudgetPolicy>,
}

fn lb(
    tp: Option<&TrafficPolicySpec>,
    field: &str,
    default: LoadBalancer,
    errs: &mut Vec<FieldError>,
) -> LoadBalancer {
    let Some(tp) = tp else { return default };
    let mut unsupported = |present: bool, name: &str| {
        if present {
            errs.push(FieldError {
                field: format!("{field}.{name}"),
                reason: "not supported yet by this data plane".into(),
            });
        }
    };
    unsupported(tp.tls.is_some(), "tls");
    unsupported(tp.port_level_settings.is_some(), "portLevelSettings");
    unsupported(tp.tunnel.is_some(), "tunnel");
    unsupported(tp.proxy_protocol.is_some(), "proxyProtocol");
    let Some(l) = &tp.load_balancer else {
        return default;
    };
    match l.simple.as_deref() {
        None | Some("UNSPECIFIED") => default,
        Some("LEAST_REQUEST") | Some("LEAST_CONN") => LoadBalancer::LeastRequest,
        Some("ROUND_ROBIN") => LoadBalancer::RoundRobin,
        Some("RANDOM") => LoadBalancer::Random,
        Some(o) => {
            errs.push(FieldError {
                field: format!("{field}.loadBalancer.simple"),
                reason: format!("{o:?}: expected ROUND_ROBIN, LEAST_REQUEST or RANDOM"),
            });
            default
        }
    }
}

impl DestinationPolicy {
    /// Compiles a `DestinationRule` spec.
    pub fn compile(spec: &DestinationRuleSpec) -> Result<DestinationPolicy, Vec<FieldError>> {
        let mut errs = Vec::new();
        if spec.export_to.is_some() {
            errs.push(FieldError {
                field: "spec.exportTo".into(),
                reason: "not supported: every rule is visible mesh-wide".into(),
            });
        }
        if spec.workload_selector.is_some() {
            errs.push(FieldError {
                field: "spec.workloadSelector".into(),
                reason: "not supported yet by this data plane".into(),
            });
        }
        let host_lb = lb(
            spec.traffic_policy.as_ref(),
            "spec.trafficPolicy",
            LoadBalancer::default(),
            &mut errs,
        );
        let health = crate::resilience::pool::HostPolicy::compile(spec, &mut errs);
        let balancing =
            |tp: Option<&TrafficPolicySpec>, f: &str, lb, errs: &mut Vec<FieldError>| {
                let explicit = tp
                    .and_then(|t| t.load_balancer.as_ref())
                    .is_some_and(|l| l.simple.is_some());
                tp.and_then(|tp| policy::balancing(tp, f, lb, explicit, errs))
            };
        let host_balancing = balancing(
            spec.traffic_policy.as_ref(),
            "spec.trafficPolicy",
            host_lb,
            &mut errs,
        )
        .unwrap_or_default();
        let host_budget = retry_budget(spec.traffic_policy.as_ref(), "spec", None, &mut errs);
        let mut subsets: Vec<Subset> = Vec::new();
        for (i, s) in spec.subsets.iter().enumerate() {
            if subsets.iter().any(|x| x.name == s.name) {
                errs.push(FieldError {
                    field: format!("spec.subsets[{i}].name"),
                    reason: format!("duplicate subset {:?}", s.name),
                });
            }
            let field = format!("spec.subsets[{i}].trafficPolicy");
            let sub_lb = lb(s.traffic_policy.as_ref(), &field, host_lb, &mut errs);
            // Istio: a subset's `loadBalancer` replaces the host's whole.
            let sub_tp = s
                .traffic_policy
                .as_ref()
                .filter(|t| t.load_balancer.is_some());
            subsets.push(Subset {
                name: s.name.clone(),
                labels: s.labels.clone(),
                lb: sub_lb,
                balancing: balancing(sub_tp, &field, sub_lb, &mut errs)
                    .unwrap_or_else(|| host_balancing.clone()),
                retry_budget: retry_budget(
                    s.traffic_policy.as_ref(),
                    &format!("spec.subsets[{i}]"),
                    host_budget,
                    &mut errs,
                ),
            });
        }
        if errs.is_empty() {
            Ok(DestinationPolicy {
                host: spec.host.to_ascii_lowercase(),
                lb: host_lb,
                subsets,
                balancing: host_balancing,
                health,
                retry_budget: host_budget,
            })
        } else {
            Err(errs)
        }
    }
}

/// `trafficPolicy.retryBudget` under `f`, else `inherited` (Istio 1.30: a subset without
/// one keeps the host's).
fn retry_budget(
    tp: Option<&TrafficPolicySpec>,
    f: &str,
    inherited: Option<crate::resilience::budget::RetryBudgetPolicy>,
    errs: &mut Vec<FieldError>,
) -> Option<crate::resilience::budget::RetryBudgetPolicy> {
    match tp.and_then(|t| t.retry_budget.as_ref()) {
        Some(b) => {
            crate::resilience::budget::compile(b, &format!("{f}.trafficPolicy.retryBudget"), errs)
        }
        None => inherited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_subsets_and_policies() {
        let spec: DestinationRuleSpec = serde_json::from_str(
            r#"{"host": "Web.ns.svc", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
                "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                            {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}]}"#,
        )
        .unwrap();
        let p = DestinationPolicy::compile(&spec).unwrap();
        assert_eq!(p.host, "web.ns.svc");
        assert_eq!(p.lb, LoadBalancer::RoundRobin);
        assert_eq!(
            p.subsets[0].lb,
            LoadBalancer::RoundRobin,
            "inherits the host's"
        );
        assert_eq!(p.subsets[1].lb, LoadBalancer::Random);
        let bad: DestinationRuleSpec = serde_json::from_str(
            r#"{"host": "h", "trafficPolicy": {"loadBalancer": {"simple": "MAGLEV"}, "tls": {}}}"#,
        )
        .unwrap();
        let e = DestinationPolicy::compile(&bad).unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.trafficPolicy.tls",
                "spec.trafficPolicy.loadBalancer.simple"
            ]
        );
    }
}
