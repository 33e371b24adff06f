//! `EnvoyFilter` rate limits (`networking.istio.io/v1alpha3`, the shapes of Istio's rate limit
//! task; see `mesh_l7::ratelimit`) resolved per proxy: each workload's sidecar inbound and
//! outbound policy (by `workloadSelector`, or the whole namespace / mesh without one) and each
//! waypoint's (by `targetRefs` naming its `Gateway`, or the namespace / mesh without a
//! selector). Each proxy gets its own buckets, made when the state is built (a new config
//! starts them full again).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mesh_l7::ratelimit::{Context, EnvoyFilterSpec, RateLimitPolicy, RateLimitRules};

use super::errors::Validator;
use super::parse::{Named, Resources};
use super::state::{MeshState, Waypoint, Workload};

mod policies;

pub use self::policies::RateLimits;

/// Keeps the buckets of `old`'s policies built from the same rules for the same proxy, so a
/// new config (an xDS push, an unrelated change of the file) does not refill them.
pub fn inherit(state: &mut MeshState, old: &MeshState) {
    let Some(new) = Arc::get_mut(&mut state.rate_limits) else {
        return;
    };
    let old = &old.rate_limits;
    fn keep<K: std::hash::Hash + Eq>(
        new: &mut HashMap<K, Arc<RateLimitPolicy>>,
        old: &HashMap<K, Arc<RateLimitPolicy>>,
    ) {
        for (k, p) in new.iter_mut() {
            if let Some(o) = old.get(k).filter(|o| o.same_rules(p)) {
                *p = o.clone();
            }
        }
    }
    keep(&mut new.inbound, &old.inbound);
    keep(&mut new.outbound, &old.outbound);
    keep(&mut new.waypoints, &old.waypoints);
}

/// Whom a checked `EnvoyFilter` selects.
struct Checked<'a> {
    f: &'a Named<EnvoyFilterSpec>,
    rules: RateLimitRules,
    gateways: Vec<String>,
}

/// Checks every `EnvoyFilter` (problems reported at its location) and builds each proxy's
/// policy.
pub(super) fn index(v: &mut Validator, state: &MeshState, res: &Resources) -> RateLimits {
    let root = state.root_namespace.as_str();
    let mut seen = HashSet::new();
    let mut checked = Vec::new();
    for f in &res.envoy_filters {
        if !seen.insert((f.namespace.as_str(), f.name.as_str())) {
            let why = format!("duplicate EnvoyFilter {}/{}", f.namespace, f.name);
            v.err(&f.location, "metadata.name", why);
        }
        if let Some(c) = check(v, f) {
            checked.push(c);
        }
    }
    // Istio applies a proxy's EnvoyFilters root namespace first, then by creation time; the
    // file has no creation time: by namespace (root first), then name.
    checked.sort_by_key(|c| {
        (
            c.f.namespace != root,
            c.f.namespace.clone(),
            c.f.name.clone(),
        )
    });
    let now = tokio::time::Instant::now();
    let mut out = RateLimits::default();
    for w in &state.workloads {
        let mine: Vec<&RateLimitRules> = checked
            .iter()
            .filter(|c| selects_workload(c, root, w))
            .map(|c| &c.rules)
            .collect();
        if mine.is_empty() {
            continue;
        }
        for (ctx, map) in [
            (Context::SidecarInbound, &mut out.inbound),
            (Context::SidecarOutbound, &mut out.outbound),
        ] {
            if let Some(p) = RateLimitPolicy::build(mine.iter().copied(), ctx, now) {
                map.insert(w.address, Arc::new(p));
            }
        }
    }
    for wp in state.waypoints.values() {
        let mine = checked.iter().filter(|c| selects_waypoint(c, root, wp));
        let mine: Vec<&RateLimitRules> = mine.map(|c| &c.rules).collect();
        if let Some(p) = RateLimitPolicy::build(mine, Context::Gateway, now) {
            out.waypoints.insert(wp.target_key.clone(), Arc::new(p));
        }
    }
    out
}

/// Checks each `EnvoyFilter` of a file beside istiod on its own: its patches, its
/// `targetRefs`, and a `workloadSelector` only on the labels istiod's workload API carries
/// (`labels`), or it would silently select nothing.
pub(super) fn check_alone(v: &mut Validator, res: &Resources, labels: &[&str]) {
    for f in &res.envoy_filters {
        let sel = f
            .spec
            .workload_selector
            .iter()
            .flat_map(|s| s.labels.keys());
        for key in sel.filter(|k| !labels.contains(&k.as_str())) {
            let why = format!(
                "istiod's workload API carries no workload labels but {}: select by those, scope by namespace, or attach with targetRefs",
                labels.join(" and ")
            );
            v.err(
                &f.location,
                format!("spec.workloadSelector.labels.{key}"),
                why,
            );
        }
        check(v, f);
    }
}

fn check<'a>(v: &mut Validator, f: &'a Named<EnvoyFilterSpec>) -> Option<Checked<'a>> {
    let spec = &f.spec;
    let mut ok = true;
    if spec.workload_selector.is_some() && !spec.target_refs.is_empty() {
        let why = "workloadSelector and targetRefs are mutually exclusive";
        v.err(&f.location, "spec.targetRefs", why);
        ok = false;
    }
    let mut gateways = Vec::new();
    for (i, t) in spec.target_refs.iter().enumerate() {
        let group = t.group.as_deref().unwrap_or("gateway.networking.k8s.io");
        if t.kind != "Gateway" || group != "gateway.networking.k8s.io" {
            let why = format!(
                "{}/{}: only a Gateway (gateway.networking.k8s.io, a waypoint) is supported",
                group, t.kind
            );
            v.err(&f.location, format!("spec.targetRefs[{i}]"), why);
            ok = false;
        }
        gateways.push(format!("Gateway/{}/{}", f.namespace, t.name));
    }
    match RateLimitRules::compile(spec) {
        Ok(rules) if ok => Some(Checked { f, rules, gateways }),
        Ok(_) => None,
        Err(errs) => {
            for e in errs {
                v.err(&f.location, e.field, e.reason);
            }
            None
        }
    }
}

fn in_scope(c: &Checked<'_>, root: &str, namespace: &str) -> bool {
    c.f.namespace == namespace || c.f.namespace == root
}

fn selects_workload(c: &Checked<'_>, root: &str, w: &Workload) -> bool {
    if !c.gateways.is_empty() || !in_scope(c, root, &w.namespace) {
        return false;
    }
    let sel = c.f.spec.workload_selector.as_ref();
    sel.is_none_or(|s| s.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
}

fn selects_waypoint(c: &Checked<'_>, root: &str, wp: &Waypoint) -> bool {
    if !c.gateways.is_empty() {
        return c.gateways.contains(&wp.target_key);
    }
    // A waypoint has no pod labels here: only selector-less filters reach it by namespace.
    c.f.spec.workload_selector.is_none() && in_scope(c, root, &wp.namespace)
}

#[cfg(test)]
#[path = "ratelimits_tests.rs"]
mod tests;
