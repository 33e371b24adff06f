//! The one assembler: resources → the indexes of a [`MeshState`]. Both sources go through it:
//! the file compiler ([`super::file`]) after it has built the workloads, services, nodes and
//! waypoints of the file, and the xDS store ([`super::xds`]) after it has built those of
//! Istio's workload API (with the L7 kinds of the local file beside it, if any).
//!
//! Steps, each a function: policies (validate, merge with the source's own, index per
//! workload), peer authentication, waypoint attachments (`targetRefs`), JWT rules, and the L7
//! indexes (destination rules, routes, endpoint sets, port protocols). Problems are reported to
//! the [`Validator`] at the resource's location; the caller decides whether they reject the
//! whole config (the file) or are logged (cross references into istiod's resources, which may
//! arrive in any order).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mesh_authz::Policy;

use super::errors::Validator;
use super::parse::{Named, Resources};
use super::state::{MeshState, Workload};
use super::{attach, routes, state};

/// What a source built itself, besides the workloads, services, nodes and waypoints already in
/// the state handed to [`assemble`].
pub(super) struct Sourced<'a> {
    /// Policies of the source's own API (xDS `Authorization`s), already validated.
    pub(super) policies: Vec<Policy>,
    /// Per workload of the state (same order), the `Scope::Assigned` policies listed for it by
    /// the control plane; empty for the file (selectors are resolved here).
    pub(super) assigned: Vec<&'a [String]>,
    /// Whether to build the L7 indexes (roles proxying HTTP; a ztunnel reads none of them).
    pub(super) l7: bool,
}

/// Fills the policy and L7 indexes of `state` from `res` and what the source built.
pub(super) fn assemble(
    v: &mut Validator,
    state: &mut MeshState,
    res: &Resources,
    src: Sourced<'_>,
) {
    let root = state.root_namespace.clone();
    let mut policies = src.policies;
    policies.extend(validate_policies(
        v,
        "AuthorizationPolicy",
        &res.policies,
        |p| p.spec.to_policy(&p.namespace, &p.name, &root),
    ));
    state.ext_authz = Arc::new(super::ext_authz::index_resources(v, res, &policies));
    index_policies(state, policies, &src.assigned);
    index_peer_authn(v, state, res);
    state.waypoints_of = state::waypoints_of(&state.workloads, &state.service_ports);
    index_waypoint_policies(state);
    index_request_authn(v, state, res);
    state.rate_limits = Arc::new(super::ratelimits::index(v, state, res));
    if src.l7 {
        index_l7(v, state, res);
    }
}

/// The authorization index: each workload's policies (mesh, namespace, selector, and those
/// the control plane assigned to it).
fn index_policies(state: &mut MeshState, policies: Vec<Policy>, assigned: &[&[String]]) {
    let keys: Vec<String> = state.workloads.iter().map(|w| w.key()).collect();
    state.authz = mesh_authz::PolicyIndex::build_assigned(
        &policies,
        workload_refs(&state.workloads, &keys)
            .enumerate()
            .map(|(i, w)| (w, assigned.get(i).copied().unwrap_or_default())),
        &state.root_namespace,
    );
    state.policies = Arc::new(policies);
}

/// `PeerAuthentication`s and the effective mTLS mode of each workload.
fn index_peer_authn(v: &mut Validator, state: &mut MeshState, res: &Resources) {
    let root = state.root_namespace.clone();
    state.peer_authn = validate_policies(v, "PeerAuthentication", &res.peer_authns, |p| {
        p.spec.to_policy(&p.namespace, &p.name, &root)
    });
    let keys: Vec<String> = state.workloads.iter().map(|w| w.key()).collect();
    let (mtls, conflicts) = mesh_authz::peer::PeerAuthnIndex::build(
        &state.peer_authn,
        workload_refs(&state.workloads, &keys),
        &root,
    );
    state.mtls = mtls;
    for c in conflicts {
        // Reported at the later policy of the conflict.
        let last = c.policies.last().cloned().unwrap_or_default();
        let location = res
            .peer_authns
            .iter()
            .find(|p| format!("{}/{}", p.namespace, p.name) == last)
            .map_or_else(|| "PeerAuthentication".to_owned(), |p| p.location.clone());
        v.err(
            &location,
            "spec",
            format!("{}: {}", c.reason, c.policies.join(", ")),
        );
    }
}

/// Policies with `targetRefs` by target (`Service/…`, `Gateway/…`), the waypoint class's
/// added to every waypoint.
fn index_waypoint_policies(state: &mut MeshState) {
    let mut out: HashMap<String, Vec<Arc<Policy>>> = HashMap::new();
    for p in state.policies.iter() {
        if let mesh_authz::Scope::TargetRefs(targets) = &p.scope {
            let p = Arc::new(p.clone());
            for t in targets {
                out.entry(format!("{}/{}/{}", t.kind, p.namespace, t.name))
                    .or_default()
                    .push(p.clone());
            }
        }
    }
    attach::class_to_every_waypoint(&mut out, &state.root_namespace, &state.waypoints);
    state.waypoint_policies = out;
}

/// `RequestAuthentication`s: JWT rules by waypoint target, and by sidecar workload.
fn index_request_authn(v: &mut Validator, state: &mut MeshState, res: &Resources) {
    let root = state.root_namespace.clone();
    let request_authns = validate_policies(v, "RequestAuthentication", &res.request_authns, |p| {
        p.spec.to_authentication(&p.namespace, &p.name, &root)
    });
    let mut rules: HashMap<String, Vec<Arc<mesh_authz::jwt::JwtRule>>> = HashMap::new();
    for ra in &request_authns {
        if let mesh_authz::Scope::TargetRefs(targets) = &ra.scope {
            for t in targets {
                rules
                    .entry(format!("{}/{}/{}", t.kind, ra.namespace, t.name))
                    .or_default()
                    .extend(ra.rules.iter().cloned());
            }
        }
    }
    attach::class_to_every_waypoint(&mut rules, &root, &state.waypoints);
    state.waypoint_authn = rules
        .into_iter()
        .map(|(k, rules)| (k, Arc::new(mesh_authz::jwt::Authenticator::new(rules))))
        .collect();
    // Per workload: the selector / namespace / mesh RequestAuthentications that apply to it,
    // enforced wherever the workload's inbound HTTP layer is on (its sidecar); workloads with
    // the same rules share one authenticator.
    let mut sidecar_authn = HashMap::new();
    let mut shared: HashMap<Vec<*const mesh_authz::jwt::JwtRule>, Arc<_>> = HashMap::new();
    for w in &state.workloads {
        let rules: Vec<Arc<mesh_authz::jwt::JwtRule>> = request_authns
            .iter()
            .filter(|ra| {
                ra.scope
                    .applies_to(&ra.namespace, &root, &w.namespace, &w.labels)
            })
            .flat_map(|ra| ra.rules.iter().cloned())
            .collect();
        if rules.is_empty() {
            continue;
        }
        let key = rules.iter().map(Arc::as_ptr).collect();
        let authn = shared
            .entry(key)
            .or_insert_with(|| Arc::new(mesh_authz::jwt::Authenticator::new(rules)));
        sidecar_authn.insert(w.key(), authn.clone());
    }
    state.sidecar_authn = sidecar_authn;
    state.request_authns = request_authns;
}

/// The L7 indexes: each endpoint port's declared protocol, destination rules, route tables
/// and the endpoint sets they balance over.
fn index_l7(v: &mut Validator, state: &mut MeshState, res: &Resources) {
    let mut port_protocols = HashMap::new();
    for sp in &state.service_ports {
        for ep in &sp.endpoints {
            port_protocols
                .entry((ep.workload.key(), ep.port))
                .or_insert(sp.protocol);
        }
    }
    state.port_protocols = port_protocols;
    let destination_policies =
        routes::compile_destination_rules(v, &res.destination_rules, &state.by_host);
    state.routes = routes::compile_routes(v, res, &state.by_host, &destination_policies);
    state.endpoint_sets = state::endpoint_sets(&state.service_ports, &destination_policies);
    state.retry_budgets = super::retry::budgets(&destination_policies);
    state.host_policies = destination_policies
        .iter()
        .filter(|(_, p)| p.health != mesh_l7::resilience::pool::HostPolicy::default())
        .map(|(h, p)| (h.clone(), Arc::new(p.health.clone())))
        .collect();
}

/// Validates each named security resource with `to_policy`; duplicates by namespace/name and
/// every field error are reported at the resource's location.
pub(super) fn validate_policies<S, P>(
    v: &mut Validator,
    kind: &str,
    raw: &[Named<S>],
    to_policy: impl Fn(&Named<S>) -> Result<P, Vec<mesh_authz::istio::FieldError>>,
) -> Vec<P> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for p in raw {
        if !seen.insert((p.namespace.as_str(), p.name.as_str())) {
            v.err(
                &p.location,
                "metadata.name",
                format!("duplicate {kind} {}/{}", p.namespace, p.name),
            );
        }
        match to_policy(p) {
            Ok(pol) => out.push(pol),
            Err(errs) => {
                for e in errs {
                    v.err(&p.location, e.field, e.reason);
                }
            }
        }
    }
    out
}

/// The workloads as the policy indexes see them.
fn workload_refs<'a>(
    workloads: &'a [Arc<Workload>],
    keys: &'a [String],
) -> impl Iterator<Item = mesh_authz::WorkloadRef<'a>> {
    workloads
        .iter()
        .zip(keys)
        .map(|(w, key)| mesh_authz::WorkloadRef {
            key,
            namespace: &w.namespace,
            labels: &w.labels,
        })
}
