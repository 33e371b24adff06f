//! `EnvoyFilter` rate limits (`networking.istio.io/v1alpha3`, the shapes of Istio's rate limit
//! task; see `mesh_l7::ratelimit`) resolved per proxy: each workload's sidecar inbound and
//! outbound policy (by `workloadSelector`, or the whole namespace / mesh without one) and each
//! waypoint's (by `targetRefs` naming its `Gateway`, or the namespace / mesh without a
//! selector). Each proxy gets its own buckets, made when the state is built (a new config
//! starts them full again).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use mesh_l7::ratelimit::{Context, EnvoyFilterSpec, RateLimitPolicy, RateLimitRules};

use super::errors::Validator;
use super::parse::{Named, Resources};
use super::state::{MeshState, Waypoint, Workload};

/// The apiVersion of the `EnvoyFilter`s this data plane reads.
pub(super) const ENVOY_FILTER_API: &str = "networking.istio.io/v1alpha3";

/// Rate limit policies by proxy.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// A workload's server side (`SIDECAR_INBOUND`), by its address.
    pub inbound: HashMap<IpAddr, Arc<RateLimitPolicy>>,
    /// A workload's client side (`SIDECAR_OUTBOUND`), by its address.
    pub outbound: HashMap<IpAddr, Arc<RateLimitPolicy>>,
    /// A waypoint (`GATEWAY`), by its `Gateway/<ns>/<name>` key.
    pub waypoints: HashMap<String, Arc<RateLimitPolicy>>,
}

impl RateLimits {
    /// Whether no proxy has any.
    pub fn is_empty(&self) -> bool {
        self.inbound.is_empty() && self.outbound.is_empty() && self.waypoints.is_empty()
    }

    /// Whether a new inbound connection to `workload` at `now` passes its connection rate
    /// limit (`envoy.filters.network.local_ratelimit`, `SIDECAR_INBOUND`); takes a token.
    pub fn admit_connection(&self, workload: IpAddr, now: tokio::time::Instant) -> bool {
        let limit = self.inbound.get(&workload).and_then(|p| p.connections());
        limit.is_none_or(|l| l.admit(now))
    }
}

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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use super::*;

    const WE: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web, namespace: ns}\nspec: {address: 10.0.0.1, labels: {app: web}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db, namespace: ns}\nspec: {address: 10.0.0.2, labels: {app: db}}\n---\n";

    fn filter(api: &str, spec: &str) -> String {
        format!(
            "apiVersion: {api}\nkind: EnvoyFilter\nmetadata: {{name: f, namespace: ns}}\nspec:\n{spec}"
        )
    }

    /// Istio's network local rate limit shape, selecting `app: web`.
    const CONN: &str = "  workloadSelector: {labels: {app: web}}\n  configPatches:\n  - applyTo: NETWORK_FILTER\n    match: {context: SIDECAR_INBOUND}\n    patch:\n      operation: INSERT_BEFORE\n      value:\n        name: envoy.filters.network.local_ratelimit\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit\n          stat_prefix: tcp\n          token_bucket: {max_tokens: 1, fill_interval: 60s}\n";

    // Istio EnvoyFilter docs: workloadSelector selects the workloads of the filter's
    // namespace; the connection limit applies at the selected workload's inbound only.
    #[test]
    fn selected_workloads_get_their_policy() {
        let s = crate::config::parse(
            Path::new("m.yaml"),
            &format!("{WE}{}", filter(ENVOY_FILTER_API, CONN)),
        )
        .unwrap();
        let web: IpAddr = "10.0.0.1".parse().unwrap();
        let t = tokio::time::Instant::now();
        assert!(s.rate_limits.admit_connection(web, t));
        assert!(!s.rate_limits.admit_connection(web, t), "one token");
        assert!(
            s.rate_limits
                .admit_connection("10.0.0.2".parse().unwrap(), t),
            "db is not selected"
        );
        assert!(s.rate_limits.outbound.is_empty(), "SIDECAR_INBOUND only");
    }

    #[test]
    fn other_versions_selections_and_fields_are_rejected_by_name() {
        let e = crate::config::parse(Path::new("m.yaml"), &filter("networking.istio.io/v1", CONN))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "kind: EnvoyFilter is not supported yet with apiVersion \"networking.istio.io/v1\""
            ),
            "{e}"
        );
        let both = CONN.replace(
            "  configPatches:",
            "  targetRefs: [{kind: Service, name: web}]\n  configPatches:",
        );
        let e = crate::config::parse(Path::new("m.yaml"), &filter(ENVOY_FILTER_API, &both))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.targetRefs: workloadSelector and targetRefs are mutually exclusive"),
            "{e}"
        );
        assert!(
            e.contains("spec.targetRefs[0]: gateway.networking.k8s.io/Service: only a Gateway"),
            "{e}"
        );
        let bad = CONN.replace(
            "stat_prefix: tcp",
            "stat_prefix: tcp\n          share_key: x",
        );
        let e = crate::config::parse(Path::new("m.yaml"), &filter(ENVOY_FILTER_API, &bad))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.configPatches[0].patch.value.typed_config.share_key: not supported"),
            "{e}"
        );
    }

    // Attacker: a config push (any change, e.g. a pod scaled elsewhere) must not refill the
    // buckets of unchanged rules; changed rules start afresh.
    #[test]
    fn unchanged_rules_keep_their_buckets_across_configs() {
        let text = format!("{WE}{}", filter(ENVOY_FILTER_API, CONN));
        let parse = |t: &str| crate::config::parse(Path::new("m.yaml"), t).unwrap();
        let (web, t) = ("10.0.0.1".parse().unwrap(), tokio::time::Instant::now());
        let old = parse(&text);
        assert!(old.rate_limits.admit_connection(web, t));
        let mut new = parse(&text.replace("10.0.0.2", "10.0.0.3"));
        inherit(&mut new, &old);
        assert!(!new.rate_limits.admit_connection(web, t), "still drained");
        let mut changed = parse(&text.replace("max_tokens: 1", "max_tokens: 2"));
        inherit(&mut changed, &new);
        assert!(
            changed.rate_limits.admit_connection(web, t),
            "new rules, new bucket"
        );
    }

    // Beside istiod: EnvoyFilter is an L7-file kind, checked alone; a selector on labels
    // istiod does not send is refused (it would select nothing).
    #[test]
    fn beside_istiod() {
        let ok = CONN.replace("{app: web}", "{service.istio.io/canonical-name: web}");
        let res =
            crate::config::parse_l7(Path::new("l7.yaml"), &filter(ENVOY_FILTER_API, &ok)).unwrap();
        assert_eq!(res.envoy_filters.len(), 1);
        let e = crate::config::parse_l7(Path::new("l7.yaml"), &filter(ENVOY_FILTER_API, CONN))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "spec.workloadSelector.labels.app: istiod's workload API carries no workload labels"
            ),
            "{e}"
        );
        let bad = ok.replace("NETWORK_FILTER", "CLUSTER");
        let e = crate::config::parse_l7(Path::new("l7.yaml"), &filter(ENVOY_FILTER_API, &bad))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.configPatches[0].applyTo: \"CLUSTER\" is not supported"),
            "{e}"
        );
    }
}
