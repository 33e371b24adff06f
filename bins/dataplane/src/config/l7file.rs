//! The local file beside istiod (`--config FILE` with `--xds-address`): only the L7 kinds
//! ([`super::L7_FILE_KINDS`]); every other kind is rejected by name, so a local file can never
//! declare workloads, services, nodes or waypoints over istiod's.
//!
//! Loading checks each resource on its own (fields, matches, rules), so a bad file is rejected
//! whole and the last good one keeps serving. What a resource names in istiod's resources (a
//! route's destination host, a `DestinationRule`'s host) is checked when the state is
//! assembled, since istiod may send those later.

use std::path::Path;
use std::sync::Arc;

use super::DEFAULT_ROOT_NAMESPACE;
use super::assemble::validate_policies;
use super::errors::{ConfigError, ConfigIssue, Validator};
use super::load::parse_raw;
use super::parse::{Mode, Named, Resources};

/// Reads and validates an L7 file (the kinds of [`super::L7_FILE_KINDS`]).
pub fn load_l7_file(path: &Path) -> Result<Arc<Resources>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        issues: vec![ConfigIssue {
            location: "file".into(),
            field: String::new(),
            reason: format!("cannot read: {e}"),
        }],
    })?;
    parse_l7(path, &text)
}

/// Validates the text of an L7 file; `file` is used in error messages.
pub fn parse_l7(file: &Path, text: &str) -> Result<Arc<Resources>, ConfigError> {
    let mut v = Validator::default();
    let raw = parse_raw(&mut v, file, text, Mode::L7Only)?;
    check_alone(&mut v, &raw.res);
    v.into_result(file, Arc::new(raw.res))
}

/// The workload labels istiod's workload API carries (a `Workload`'s canonical name and
/// revision): the only ones a selector in the L7 file can match.
const XDS_LABELS: &[&str] = &[
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
];

/// Checks each resource on its own (what does not depend on istiod's resources).
pub(super) fn check_alone(v: &mut Validator, res: &Resources) {
    // A selector on labels istiod does not send would match nothing: a DENY silently dropped.
    let selectors = res
        .policies
        .iter()
        .map(|p| (&p.location, p.spec.selector.as_ref()))
        .chain(
            res.request_authns
                .iter()
                .map(|p| (&p.location, p.spec.selector.as_ref())),
        );
    for (location, selector) in selectors {
        for key in selector.iter().flat_map(|s| s.match_labels.keys()) {
            if !XDS_LABELS.contains(&key.as_str()) {
                v.err(
                    location,
                    format!("spec.selector.matchLabels.{key}"),
                    "istiod's workload API carries no workload labels but service.istio.io/canonical-name and service.istio.io/canonical-revision: select by those, scope by namespace, or attach with targetRefs",
                );
            }
        }
    }
    // The root namespace only decides a policy's scope, not whether it is valid.
    let root = DEFAULT_ROOT_NAMESPACE;
    let policies = validate_policies(v, "AuthorizationPolicy", &res.policies, |p| {
        p.spec.to_policy(&p.namespace, &p.name, root)
    });
    // The providers, and every CUSTOM policy naming one of them.
    super::ext_authz::index_resources(v, res, &policies);
    validate_policies(v, "RequestAuthentication", &res.request_authns, |p| {
        p.spec.to_authentication(&p.namespace, &p.name, root)
    });
    super::ratelimits::check_alone(v, res, XDS_LABELS);
    for vs in &res.virtual_services {
        report(v, vs, mesh_l7::RouteTable::compile(&vs.spec).err());
    }
    for dr in &res.destination_rules {
        report(v, dr, mesh_l7::DestinationPolicy::compile(&dr.spec).err());
    }
    for r in &res.http_routes {
        // Any backend name resolves here; the services are looked up at assembly.
        let errs = mesh_l7::RouteTable::from_http_route(&r.spec, "check.invalid", |n| {
            Some(format!("{n}.{}.svc", r.namespace))
        })
        .err();
        report(v, r, errs);
    }
}

fn report<S>(v: &mut Validator, at: &Named<S>, errs: Option<Vec<mesh_l7::FieldError>>) {
    for e in errs.into_iter().flatten() {
        v.err(&at.location, e.field, e.reason);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn err(text: &str) -> String {
        parse_l7(Path::new("l7.yaml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn other_kinds_are_rejected_by_name() {
        for (kind, api) in [
            ("WorkloadEntry", "networking.istio.io/v1"),
            ("ServiceEntry", "networking.istio.io/v1"),
            ("Node", "dataplane.mesh.dev/v1alpha1"),
            ("Gateway", "gateway.networking.k8s.io/v1"),
            ("PeerAuthentication", "security.istio.io/v1"),
            ("Workload", "v1"),
        ] {
            let e = err(&format!(
                "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: x, namespace: ns}}\nspec: {{}}\n"
            ));
            assert!(
                e.starts_with(&format!(
                    "l7.yaml: document 1 ({kind} ns/x): kind: {kind} is not allowed in a file given with --xds-address"
                )),
                "{e}"
            );
            assert!(e.contains("VirtualService, DestinationRule, HTTPRoute, AuthorizationPolicy, RequestAuthentication"), "{e}");
        }
    }

    #[test]
    fn selectors_only_on_labels_istiod_sends() {
        let policy = |labels: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n  selector: {{matchLabels: {labels}}}\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]\n"
            )
        };
        let ok = policy("{service.istio.io/canonical-name: web}");
        parse_l7(Path::new("l7.yaml"), &ok).unwrap();
        let e = err(&policy("{app: web}"));
        assert!(
            e.contains("document 1 (AuthorizationPolicy ns/p): spec.selector.matchLabels.app: istiod's workload API carries no workload labels"),
            "{e}"
        );
    }

    #[test]
    fn l7_kinds_are_checked_alone() {
        let ok = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: ns}\nspec:\n  hosts: [web.ns.svc.cluster.local]\n  http:\n  - route:\n    - destination: {host: web.ns.svc.cluster.local}\n";
        let res = parse_l7(Path::new("l7.yaml"), ok).unwrap();
        assert_eq!(res.virtual_services.len(), 1);
        let e = err(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  action: MAYBE\n",
        );
        assert!(e.contains("document 1 (AuthorizationPolicy ns/p)"), "{e}");
    }
}
