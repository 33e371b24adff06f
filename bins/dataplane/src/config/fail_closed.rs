//! An xDS `Authorization` this proxy cannot convert fails closed: rejected (NACKed) by name,
//! and replaced, until a valid version arrives, by a DENY-everything policy of the same name
//! and scope, so the workloads it applies to (listed by the control plane, or in its
//! namespace or the mesh) are denied rather than left without the policy. `/config_dump`
//! lists such policies with the reason under `authorizationFailClosed`. A dry-run policy is
//! the exception: Istio never enforces one, so it is rejected and not enforced.

use mesh_authz::{Action, Policy, Rule, Scope};
use mesh_xds::pb::security as sec;

/// The stand-in for Authorization resource `name` that failed conversion: a DENY with one
/// empty rule (matches everything), of the resource's namespace, name and scope (a scope
/// that cannot be read either: the workloads that list it).
pub(super) fn deny_all(name: &str, a: &sec::Authorization) -> Policy {
    let (ns, n) = name.split_once('/').unwrap_or(("", name));
    let pick = |own: &str, fallback: &str| {
        if own.is_empty() {
            fallback.to_owned()
        } else {
            own.to_owned()
        }
    };
    Policy {
        namespace: pick(&a.namespace, ns),
        name: pick(&a.name, n),
        scope: match sec::Scope::try_from(a.scope) {
            Ok(sec::Scope::Global) => Scope::Mesh,
            Ok(sec::Scope::Namespace) => Scope::Namespace,
            _ => Scope::Assigned,
        },
        action: Action::Deny,
        rules: vec![Rule::default()],
        provider: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use mesh_xds::pb::security as sec;
    use mesh_xds::pb::workload as wl;

    use super::super::xds::test_support::{addr_w, pod, store};

    fn workload(name: &str, ip: [u8; 4], policies: &[&str]) -> (String, wl::Address) {
        addr_w(wl::Workload {
            authorization_policies: policies.iter().map(|p| (*p).to_owned()).collect(),
            ..pod(name, ip, "n1")
        })
    }

    /// A DENY from `ns/evil`, as a selector policy; `bad` makes it unconvertible.
    fn deny_evil(bad: bool) -> sec::Authorization {
        sec::Authorization {
            name: "deny-evil".into(),
            namespace: "ns".into(),
            scope: sec::Scope::WorkloadSelector as i32,
            action: sec::Action::Deny as i32,
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        namespaces: vec![sec::StringMatch {
                            match_type: Some(sec::string_match::MatchType::Exact("evil".into())),
                        }],
                        // An address of 3 bytes: not convertible.
                        source_ips: if bad {
                            vec![sec::Address {
                                address: vec![1, 2, 3],
                                length: 8,
                            }]
                        } else {
                            vec![]
                        },
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        }
    }

    fn allowed(state: &crate::config::MeshState, workload: &str, ns: &str) -> bool {
        let principal = format!("cluster.local/ns/{ns}/sa/x");
        state
            .authz
            .evaluate(
                workload,
                &mesh_authz::Connection {
                    source_ip: "10.9.0.1".parse().unwrap(),
                    remote_ip: None,
                    source_principal: Some(&principal),
                    source_namespace: Some(ns),
                    destination_ip: "10.1.0.1".parse().unwrap(),
                    destination_port: 80,
                },
            )
            .is_allowed()
    }

    #[test]
    fn unconvertible_authorization_denies_the_workloads_that_list_it() {
        let mut s = store();
        s.apply_addresses(
            vec![
                workload("db", [10, 1, 0, 1], &["ns/deny-evil"]),
                workload("web", [10, 1, 0, 2], &[]),
            ],
            vec![],
        );
        let rejected =
            s.apply_authorizations(vec![("ns/deny-evil".into(), deny_evil(true))], vec![]);
        assert_eq!(rejected.len(), 1, "still NACKed");
        let state = s.build();
        assert!(!allowed(&state, "ns/db", "shop"), "fails closed");
        assert!(allowed(&state, "ns/web", "shop"), "not listed: unaffected");
        let why = state.failed_policies.get("ns/deny-evil").expect("reported");
        assert!(why.contains("3 bytes"), "{why}");

        // A valid version replaces it.
        let rejected =
            s.apply_authorizations(vec![("ns/deny-evil".into(), deny_evil(false))], vec![]);
        assert!(rejected.is_empty());
        let state = s.build();
        assert!(allowed(&state, "ns/db", "shop"));
        assert!(!allowed(&state, "ns/db", "evil"));
        assert!(state.failed_policies.is_empty());

        // A bad update of a good policy fails closed too (the control plane wants it
        // changed), and removing it lifts that.
        s.apply_authorizations(vec![("ns/deny-evil".into(), deny_evil(true))], vec![]);
        assert!(!allowed(&s.build(), "ns/db", "shop"));
        s.apply_authorizations(vec![], vec!["ns/deny-evil".into()]);
        let state = s.build();
        assert!(allowed(&state, "ns/db", "shop"));
        assert!(state.failed_policies.is_empty());
    }

    /// Dry-run policies are never enforced (Istio): unsupported, so NACKed, but not failed
    /// closed; one that becomes dry-run stops being enforced.
    #[test]
    fn dry_run_authorization_is_rejected_but_never_enforced() {
        let mut s = store();
        s.apply_addresses(
            vec![workload("db", [10, 1, 0, 1], &["ns/deny-evil"])],
            vec![],
        );
        s.apply_authorizations(vec![("ns/deny-evil".into(), deny_evil(false))], vec![]);
        assert!(!allowed(&s.build(), "ns/db", "evil"));
        let mut dry = deny_evil(false);
        dry.dry_run = true;
        let rejected = s.apply_authorizations(vec![("ns/deny-evil".into(), dry)], vec![]);
        assert!(rejected[0].reason.contains("dry_run"), "{rejected:?}");
        let state = s.build();
        assert!(allowed(&state, "ns/db", "evil"));
        assert!(allowed(&state, "ns/db", "shop"));
        assert!(state.failed_policies.is_empty());
    }
}
