//! References in a policy spec to identities and resources that newer Istio releases added:
//! `source.serviceAccounts` / `notServiceAccounts` (Istio 1.22) and `targetRefs` to the
//! `istio-waypoint` GatewayClass (Istio 1.25, the mesh-wide waypoint default), and the
//! [`scope`] of a policy-like resource from its `selector` and `targetRefs`.

use super::spec::{SourceSpec, TargetRefSpec, WorkloadSelector};
use crate::error::FieldError;
use crate::model::string::StringMatch;
use crate::model::{Scope, TargetRef};

/// The GatewayClass of waypoints: a policy targeting it applies at every waypoint.
pub(crate) const WAYPOINT_CLASS: &str = "istio-waypoint";

/// `serviceAccounts` entries (`<namespace>/<serviceaccount>`, or `<serviceaccount>` of the
/// policy's `namespace`) as principal matches for any trust domain, `*/ns/<ns>/sa/<sa>`.
/// Istio's rules: no wildcards, not with `principals` or `namespaces` in the same source.
pub(crate) fn service_accounts(
    v: &[String],
    namespace: &str,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Vec<StringMatch> {
    let mut out = Vec::with_capacity(v.len());
    for (i, s) in v.iter().enumerate() {
        let (ns, sa) = s.split_once('/').unwrap_or((namespace, s));
        let ok = !ns.is_empty()
            && !sa.is_empty()
            && !sa.contains('/')
            && !s.contains('*')
            && is_name(ns)
            && is_name(sa);
        if ok {
            out.push(StringMatch::Suffix(format!("/ns/{ns}/sa/{sa}")));
        } else {
            errs.push(FieldError {
                field: format!("{field}[{i}]"),
                reason: format!(
                    "{s:?} is not <namespace>/<serviceaccount> or <serviceaccount> (no wildcards)"
                ),
            });
        }
    }
    out
}

/// A Kubernetes name (DNS subdomain characters); anything else is no service account.
fn is_name(s: &str) -> bool {
    s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Istio: `serviceAccounts` and `notServiceAccounts` cannot be set with `principals` or
/// `namespaces`.
pub(crate) fn check_service_accounts_alone(s: &SourceSpec, p: &str, errs: &mut Vec<FieldError>) {
    for (name, v) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if !v.is_empty()
            && (!s.principals.is_empty()
                || !s.not_principals.is_empty()
                || !s.namespaces.is_empty()
                || !s.not_namespaces.is_empty())
        {
            errs.push(FieldError {
                field: format!("{p}.{name}"),
                reason: "cannot be set with principals or namespaces (or their not* forms)".into(),
            });
        }
    }
}

/// A `kind: GatewayClass` target: only `istio-waypoint`, from a policy in the root namespace
/// (Istio's rule), in group `gateway.networking.k8s.io`.
pub(crate) fn gateway_class(
    t: &TargetRefSpec,
    namespace: &str,
    root_namespace: &str,
    f: &str,
    errs: &mut Vec<FieldError>,
) -> Option<TargetRef> {
    let before = errs.len();
    if namespace != root_namespace {
        errs.push(FieldError {
            field: format!("{f}.kind"),
            reason: format!(
                "GatewayClass targets are allowed only in the root namespace ({root_namespace:?})"
            ),
        });
    }
    if t.name != WAYPOINT_CLASS {
        errs.push(FieldError {
            field: format!("{f}.name"),
            reason: format!(
                "{:?}: only the {WAYPOINT_CLASS:?} GatewayClass is supported",
                t.name
            ),
        });
    }
    if let Some(g) = t
        .group
        .as_deref()
        .filter(|g| *g != "gateway.networking.k8s.io")
    {
        errs.push(FieldError {
            field: format!("{f}.group"),
            reason: format!("{g:?}: a GatewayClass is in gateway.networking.k8s.io"),
        });
    }
    (errs.len() == before).then(|| TargetRef {
        kind: "GatewayClass".to_owned(),
        name: WAYPOINT_CLASS.to_owned(),
    })
}

/// The scope of a policy-like resource from its `selector` and `targetRefs`/`targetRef`.
pub(crate) fn scope<'a>(
    selector: Option<&WorkloadSelector>,
    refs: impl Iterator<Item = &'a TargetRefSpec>,
    namespace: &str,
    root_namespace: &str,
    errs: &mut Vec<FieldError>,
) -> Scope {
    let mut targets = Vec::new();
    for (i, t) in refs.enumerate() {
        let f = format!("spec.targetRefs[{i}]");
        if t.namespace.is_some() {
            errs.push(FieldError {
                field: format!("{f}.namespace"),
                reason: "not supported: a policy targets resources of its own namespace".into(),
            });
        }
        match t.kind.as_str() {
            "GatewayClass" => targets.extend(gateway_class(t, namespace, root_namespace, &f, errs)),
            "Service" | "ServiceEntry" | "Gateway" => targets.push(TargetRef {
                kind: if t.kind == "Gateway" {
                    "Gateway"
                } else {
                    "Service"
                }
                .to_owned(),
                name: t.name.clone(),
            }),
            k => errs.push(FieldError {
                field: format!("{f}.kind"),
                reason: format!("{k:?}: expected Service, ServiceEntry, Gateway or GatewayClass"),
            }),
        }
    }
    if !targets.is_empty() && selector.is_some() {
        errs.push(FieldError {
            field: "spec.selector".into(),
            reason: "selector and targetRefs are mutually exclusive".into(),
        });
    }
    match selector {
        _ if !targets.is_empty() => Scope::TargetRefs(targets),
        Some(sel) => Scope::Selector(sel.match_labels.clone()),
        None if namespace == root_namespace => Scope::Mesh,
        None => Scope::Namespace,
    }
}
