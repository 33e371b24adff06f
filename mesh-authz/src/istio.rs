//! Istio's `AuthorizationPolicy` spec (security.istio.io/v1) as users write it, and its
//! validation into the crate's own [`Policy`] model.
//!
//! Unknown fields are errors; fields this data plane does not implement (`action: CUSTOM`,
//! `provider`) are rejected by name; `AUDIT` marks requests at waypoints; `targetRefs` make a
//! waypoint policy. HTTP-only fields are accepted and recorded: at L4 they follow Istio's
//! ztunnel translation (an ALLOW rule using them never matches; a DENY rule is enforced
//! without them, i.e. more broadly).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::{Action, Condition, Operation, Policy, Rule, Scope, Source, StringMatch};

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workload selector; absent means namespace (or mesh, in the root namespace) scope.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (default) or `DENY`.
    #[serde(default)]
    pub action: Option<String>,
    /// Rules; absent or empty matches nothing.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Waypoint attachment: the Services or Gateways (waypoints) whose waypoint enforces it.
    #[serde(default)]
    pub target_refs: Vec<TargetRefSpec>,
    /// The single-target form of `targetRefs`.
    #[serde(default)]
    pub target_ref: Option<TargetRefSpec>,
}

/// `targetRefs[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRefSpec {
    /// API group (`""` or `core` for Service, `gateway.networking.k8s.io` for Gateway,
    /// `networking.istio.io` for ServiceEntry).
    #[serde(default)]
    pub group: Option<String>,
    /// `Service`, `ServiceEntry` or `Gateway`.
    pub kind: String,
    /// Name, in the policy's namespace.
    pub name: String,
    /// Not supported: a policy targets resources of its own namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `selector`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `rules[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `from[]`.
    #[serde(default)]
    pub from: Vec<FromSpec>,
    /// `to[]`.
    #[serde(default)]
    pub to: Vec<ToSpec>,
    /// `when[]`.
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

/// `from[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromSpec {
    /// `source`.
    pub source: SourceSpec,
}

/// `to[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToSpec {
    /// `operation`.
    pub operation: OperationSpec,
}

/// `source`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
}

/// `operation`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OperationSpec {
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `when[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionSpec {
    /// Attribute name, e.g. `source.ip`.
    pub key: String,
    /// Values, any of which matches.
    #[serde(default)]
    pub values: Vec<String>,
    /// Values, none of which may match.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// A problem in a policy spec: the field path (from `spec`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path such as `spec.rules[0].from[1].source.ipBlocks[2]`.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

/// L4 keys of `when` conditions (Istio's ztunnel set).
pub const L4_WHEN_KEYS: &[&str] = &[
    "source.ip",
    "source.principal",
    "source.namespace",
    "destination.ip",
    "destination.port",
];

/// `request.auth.claims[a][b]` → `["a", "b"]`.
fn claim_path(k: &str) -> Option<Vec<String>> {
    let mut rest = k.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        if end == 0 {
            return None;
        }
        path.push(inner[..end].to_owned());
        rest = &inner[end + 1..];
    }
    (!path.is_empty()).then_some(path)
}

/// Condition keys Istio defines that only HTTP can evaluate.
fn is_http_when_key(k: &str) -> bool {
    matches!(
        k,
        "request.auth.principal"
            | "request.auth.audiences"
            | "request.auth.presenter"
            | "connection.sni"
    ) || (k.starts_with("request.headers[") && k.ends_with(']'))
        || (k.starts_with("request.auth.claims[") && k.ends_with(']'))
        || k.starts_with("experimental.envoy.filters.")
}

impl AuthorizationPolicySpec {
    /// Validates into a [`Policy`]. `root_namespace` (Istio's `istio-system` by default) makes a
    /// selector-less policy mesh-wide. Every problem is returned.
    pub fn to_policy(
        &self,
        namespace: &str,
        name: &str,
        root_namespace: &str,
    ) -> Result<Policy, Vec<FieldError>> {
        let mut errs = Vec::new();
        let action = match self.action.as_deref() {
            None | Some("ALLOW") => Action::Allow,
            Some("DENY") => Action::Deny,
            Some("AUDIT") => Action::Audit,
            Some(other @ "CUSTOM") => {
                errs.push(FieldError {
                    field: "spec.action".into(),
                    reason: format!("{other} is not supported by this data plane"),
                });
                Action::Deny
            }
            Some(other) => {
                errs.push(FieldError {
                    field: "spec.action".into(),
                    reason: format!("{other:?} is not ALLOW or DENY"),
                });
                Action::Deny
            }
        };
        let scope = scope(
            self.selector.as_ref(),
            self.target_refs.iter().chain(self.target_ref.as_ref()),
            namespace,
            root_namespace,
            &mut errs,
        );
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            rules.push(r.to_rule(&format!("spec.rules[{i}]"), namespace, &mut errs));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Policy {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            scope,
            action,
            rules,
        })
    }
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
            "GatewayClass" => targets.extend(crate::refs::gateway_class(
                t,
                namespace,
                root_namespace,
                &f,
                errs,
            )),
            "Service" | "ServiceEntry" | "Gateway" => targets.push(crate::model::TargetRef {
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

fn strings(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|s| StringMatch::parse(s)).collect()
}

fn cidrs(v: &[String], field: &str, errs: &mut Vec<FieldError>) -> Vec<ipnet::IpNet> {
    let mut out = Vec::with_capacity(v.len());
    for (i, s) in v.iter().enumerate() {
        match parse_cidr(s) {
            Some(n) => out.push(n),
            None => errs.push(FieldError {
                field: format!("{field}[{i}]"),
                reason: format!("{s:?} is not an IP address or CIDR"),
            }),
        }
    }
    out
}

/// Parses `10.0.0.1` (a /32 or /128) or `10.0.0.0/8`.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    if s.contains('/') {
        s.parse::<ipnet::IpNet>().ok().map(|n| n.trunc())
    } else {
        s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
    }
}

fn ports(v: &[String], field: &str, errs: &mut Vec<FieldError>) -> Vec<u16> {
    let mut out = Vec::with_capacity(v.len());
    for (i, s) in v.iter().enumerate() {
        match s.parse::<u16>() {
            Ok(p) if p != 0 => out.push(p),
            _ => errs.push(FieldError {
                field: format!("{field}[{i}]"),
                reason: format!("{s:?} is not a port (1-65535)"),
            }),
        }
    }
    out
}

impl RuleSpec {
    fn to_rule(&self, path: &str, namespace: &str, errs: &mut Vec<FieldError>) -> Rule {
        let mut http_only = Vec::new();
        let from = self
            .from
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let s = &f.source;
                let p = format!("{path}.from[{i}].source");
                crate::refs::check_service_accounts_alone(s, &p, errs);
                for (name, v) in [
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                ] {
                    if !v.is_empty() {
                        http_only.push(name.to_owned());
                    }
                }
                Source {
                    request_principals: strings(&s.request_principals),
                    not_request_principals: strings(&s.not_request_principals),
                    principals: strings(&s.principals),
                    not_principals: strings(&s.not_principals),
                    namespaces: strings(&s.namespaces),
                    not_namespaces: strings(&s.not_namespaces),
                    ip_blocks: cidrs(&s.ip_blocks, &format!("{p}.ipBlocks"), errs),
                    not_ip_blocks: cidrs(&s.not_ip_blocks, &format!("{p}.notIpBlocks"), errs),
                    remote_ip_blocks: cidrs(
                        &s.remote_ip_blocks,
                        &format!("{p}.remoteIpBlocks"),
                        errs,
                    ),
                    not_remote_ip_blocks: cidrs(
                        &s.not_remote_ip_blocks,
                        &format!("{p}.notRemoteIpBlocks"),
                        errs,
                    ),
                    service_accounts: crate::refs::service_accounts(
                        &s.service_accounts,
                        namespace,
                        &format!("{p}.serviceAccounts"),
                        errs,
                    ),
                    not_service_accounts: crate::refs::service_accounts(
                        &s.not_service_accounts,
                        namespace,
                        &format!("{p}.notServiceAccounts"),
                        errs,
                    ),
                }
            })
            .collect();
        let to = self
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let o = &t.operation;
                let p = format!("{path}.to[{i}].operation");
                for (name, v) in [
                    ("hosts", &o.hosts),
                    ("notHosts", &o.not_hosts),
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                ] {
                    if !v.is_empty() {
                        http_only.push(name.to_owned());
                    }
                }
                let paths = |v: &[String], f: &str, errs: &mut Vec<FieldError>| {
                    v.iter()
                        .enumerate()
                        .filter_map(|(j, x)| match crate::http::PathMatch::parse(x) {
                            Ok(m) => Some(m),
                            Err(reason) => {
                                errs.push(FieldError {
                                    field: format!("{p}.{f}[{j}]"),
                                    reason,
                                });
                                None
                            }
                        })
                        .collect()
                };
                Operation {
                    ports: ports(&o.ports, &format!("{p}.ports"), errs),
                    not_ports: ports(&o.not_ports, &format!("{p}.notPorts"), errs),
                    http: crate::http::HttpOperation {
                        hosts: strings(&o.hosts),
                        not_hosts: strings(&o.not_hosts),
                        methods: o.methods.clone(),
                        not_methods: o.not_methods.clone(),
                        paths: paths(&o.paths, "paths", errs),
                        not_paths: paths(&o.not_paths, "notPaths", errs),
                    },
                }
            })
            .collect();
        let mut when = Vec::new();
        let mut http_when = Vec::new();
        for (i, c) in self.when.iter().enumerate() {
            let p = format!("{path}.when[{i}]");
            if c.values.is_empty() && c.not_values.is_empty() {
                errs.push(FieldError {
                    field: p.clone(),
                    reason: "a condition needs values or notValues".into(),
                });
            }
            let cond = match c.key.as_str() {
                // Istio's `remote.ip`; where the remote address is unknown (ztunnels) it follows
                // the HTTP-only rule (see `Connection::remote_ip`).
                "remote.ip" => Condition::RemoteIp(
                    cidrs(&c.values, &format!("{p}.values"), errs),
                    cidrs(&c.not_values, &format!("{p}.notValues"), errs),
                ),
                "source.ip" => Condition::SourceIp(
                    cidrs(&c.values, &format!("{p}.values"), errs),
                    cidrs(&c.not_values, &format!("{p}.notValues"), errs),
                ),
                "destination.ip" => Condition::DestinationIp(
                    cidrs(&c.values, &format!("{p}.values"), errs),
                    cidrs(&c.not_values, &format!("{p}.notValues"), errs),
                ),
                "destination.port" => Condition::DestinationPort(
                    ports(&c.values, &format!("{p}.values"), errs),
                    ports(&c.not_values, &format!("{p}.notValues"), errs),
                ),
                "source.principal" => {
                    Condition::SourcePrincipal(strings(&c.values), strings(&c.not_values))
                }
                "source.namespace" => {
                    Condition::SourceNamespace(strings(&c.values), strings(&c.not_values))
                }
                other if is_http_when_key(other) => {
                    http_only.push(format!("when {other}"));
                    let header = other
                        .strip_prefix("request.headers[")
                        .and_then(|h| h.strip_suffix(']'));
                    let (values, not_values) = (strings(&c.values), strings(&c.not_values));
                    use crate::http::HttpCondition as H;
                    http_when.push(match (header, other) {
                        (Some(h), _) => H::Header(h.to_ascii_lowercase(), values, not_values),
                        (None, "request.auth.principal") => H::RequestPrincipal(values, not_values),
                        (None, "request.auth.audiences") => H::Audiences(values, not_values),
                        (None, "request.auth.presenter") => H::Presenter(values, not_values),
                        (None, k) if k.starts_with("request.auth.claims[") => {
                            match claim_path(k) {
                                Some(path) => H::Claim(path, values, not_values),
                                None => {
                                    errs.push(FieldError {
                                        field: format!("{p}.key"),
                                        reason: format!(
                                            "{k:?}: expected request.auth.claims[name] or request.auth.claims[a][b]"
                                        ),
                                    });
                                    continue;
                                }
                            }
                        }
                        (None, k) => H::Absent(k.to_owned(), !c.values.is_empty()),
                    });
                    continue;
                }
                other => {
                    errs.push(FieldError {
                        field: format!("{p}.key"),
                        reason: format!("{other:?} is not a supported condition key"),
                    });
                    continue;
                }
            };
            when.push(cond);
        }
        Rule {
            from,
            to,
            when,
            http_when,
            http_only,
        }
    }
}
