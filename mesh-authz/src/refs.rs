//! References in a policy spec to identities that newer Istio releases added:
//! `source.serviceAccounts` / `notServiceAccounts` (Istio 1.22).

use crate::istio::{FieldError, SourceSpec};
use crate::model::StringMatch;

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
