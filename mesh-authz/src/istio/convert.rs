//! Validation of an [`AuthorizationPolicySpec`] into the crate's own [`Policy`] model.
//! Every problem is collected as a [`FieldError`] naming its field. Depends on the spec types,
//! [`super::refs`], the model and [`crate::error`].

use super::refs::{check_service_accounts_alone, scope, service_accounts};
use super::spec::{AuthorizationPolicySpec, ConditionSpec, OperationSpec, RuleSpec, SourceSpec};
use crate::error::FieldError;
use crate::model::l7::{HttpCondition, HttpOperation, PathMatch};
use crate::model::string::StringMatch;
use crate::model::{Action, Condition, Operation, Policy, Rule, Source};

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
            Some("CUSTOM") => Action::Custom,
            Some(other) => {
                errs.push(FieldError {
                    field: "spec.action".into(),
                    reason: format!("{other:?} is not ALLOW, DENY, AUDIT or CUSTOM"),
                });
                Action::Deny
            }
        };
        let provider = self.provider(action, &mut errs);
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
            provider,
        })
    }

    /// `provider.name`: required with `CUSTOM` (Istio: "provider must be set for CUSTOM
    /// action"), refused with any other action.
    fn provider(&self, action: Action, errs: &mut Vec<FieldError>) -> Option<String> {
        match (action, &self.provider) {
            (Action::Custom, Some(p)) if !p.name.is_empty() => Some(p.name.clone()),
            (Action::Custom, _) => {
                errs.push(FieldError {
                    field: "spec.provider.name".into(),
                    reason: "a CUSTOM policy needs the name of an extension provider".into(),
                });
                None
            }
            (_, Some(_)) => {
                errs.push(FieldError {
                    field: "spec.provider".into(),
                    reason: "only a CUSTOM policy has a provider".into(),
                });
                None
            }
            (_, None) => None,
        }
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

/// `paths` / `notPaths` of an operation at `p`; a bad template is a [`FieldError`].
fn paths(v: &[String], p: &str, f: &str, errs: &mut Vec<FieldError>) -> Vec<PathMatch> {
    v.iter()
        .enumerate()
        .filter_map(|(j, x)| match PathMatch::parse(x) {
            Ok(m) => Some(m),
            Err(e) => {
                errs.push(FieldError {
                    field: format!("{p}.{f}[{j}]"),
                    reason: e.to_string(),
                });
                None
            }
        })
        .collect()
}

/// Records the names of the non-empty HTTP-only fields in `http_only`.
fn note_http_only(fields: &[(&str, &Vec<String>)], http_only: &mut Vec<String>) {
    for (name, v) in fields {
        if !v.is_empty() {
            http_only.push((*name).to_owned());
        }
    }
}

/// `from[i].source` at `p`.
fn source(
    s: &SourceSpec,
    p: &str,
    namespace: &str,
    http_only: &mut Vec<String>,
    errs: &mut Vec<FieldError>,
) -> Source {
    check_service_accounts_alone(s, p, errs);
    note_http_only(
        &[
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
        ],
        http_only,
    );
    Source {
        request_principals: strings(&s.request_principals),
        not_request_principals: strings(&s.not_request_principals),
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        ip_blocks: cidrs(&s.ip_blocks, &format!("{p}.ipBlocks"), errs),
        not_ip_blocks: cidrs(&s.not_ip_blocks, &format!("{p}.notIpBlocks"), errs),
        remote_ip_blocks: cidrs(&s.remote_ip_blocks, &format!("{p}.remoteIpBlocks"), errs),
        not_remote_ip_blocks: cidrs(
            &s.not_remote_ip_blocks,
            &format!("{p}.notRemoteIpBlocks"),
            errs,
        ),
        service_accounts: service_accounts(
            &s.service_accounts,
            namespace,
            &format!("{p}.serviceAccounts"),
            errs,
        ),
        not_service_accounts: service_accounts(
            &s.not_service_accounts,
            namespace,
            &format!("{p}.notServiceAccounts"),
            errs,
        ),
    }
}

/// `to[i].operation` at `p`.
fn operation(
    o: &OperationSpec,
    p: &str,
    http_only: &mut Vec<String>,
    errs: &mut Vec<FieldError>,
) -> Operation {
    note_http_only(
        &[
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ],
        http_only,
    );
    Operation {
        ports: ports(&o.ports, &format!("{p}.ports"), errs),
        not_ports: ports(&o.not_ports, &format!("{p}.notPorts"), errs),
        http: HttpOperation {
            hosts: strings(&o.hosts),
            not_hosts: strings(&o.not_hosts),
            methods: o.methods.clone(),
            not_methods: o.not_methods.clone(),
            paths: paths(&o.paths, p, "paths", errs),
            not_paths: paths(&o.not_paths, p, "notPaths", errs),
        },
    }
}

/// A validated `when` condition.
enum When {
    /// Evaluated at L4 too.
    L4(Condition),
    /// Evaluated at a waypoint only.
    Http(HttpCondition),
}

/// `when[i]` at `p`; `None` (with an error recorded) for an unsupported key.
fn condition(c: &ConditionSpec, p: &str, errs: &mut Vec<FieldError>) -> Option<When> {
    if c.values.is_empty() && c.not_values.is_empty() {
        errs.push(FieldError {
            field: p.to_owned(),
            reason: "a condition needs values or notValues".into(),
        });
    }
    let (v, n) = (&c.values, &c.not_values);
    let (vf, nf) = (format!("{p}.values"), format!("{p}.notValues"));
    Some(When::L4(match c.key.as_str() {
        // Istio's `remote.ip`; where the remote address is unknown (ztunnels) it follows
        // the HTTP-only rule (see `Connection::remote_ip`).
        "remote.ip" => Condition::RemoteIp(cidrs(v, &vf, errs), cidrs(n, &nf, errs)),
        "source.ip" => Condition::SourceIp(cidrs(v, &vf, errs), cidrs(n, &nf, errs)),
        "destination.ip" => Condition::DestinationIp(cidrs(v, &vf, errs), cidrs(n, &nf, errs)),
        "destination.port" => Condition::DestinationPort(ports(v, &vf, errs), ports(n, &nf, errs)),
        "source.principal" => Condition::SourcePrincipal(strings(v), strings(n)),
        "source.namespace" => Condition::SourceNamespace(strings(v), strings(n)),
        other if is_http_when_key(other) => {
            return http_condition(c, other, p, errs).map(When::Http);
        }
        other => {
            errs.push(FieldError {
                field: format!("{p}.key"),
                reason: format!("{other:?} is not a supported condition key"),
            });
            return None;
        }
    }))
}

/// An HTTP-only `when` condition with key `key` (one [`is_http_when_key`] accepts).
fn http_condition(
    c: &ConditionSpec,
    key: &str,
    p: &str,
    errs: &mut Vec<FieldError>,
) -> Option<HttpCondition> {
    use HttpCondition as H;
    let header = key
        .strip_prefix("request.headers[")
        .and_then(|h| h.strip_suffix(']'));
    let (values, not_values) = (strings(&c.values), strings(&c.not_values));
    Some(match (header, key) {
        (Some(h), _) => H::Header(h.to_ascii_lowercase(), values, not_values),
        (None, "request.auth.principal") => H::RequestPrincipal(values, not_values),
        (None, "request.auth.audiences") => H::Audiences(values, not_values),
        (None, "request.auth.presenter") => H::Presenter(values, not_values),
        (None, k) if k.starts_with("request.auth.claims[") => match claim_path(k) {
            Some(path) => H::Claim(path, values, not_values),
            None => {
                errs.push(FieldError {
                    field: format!("{p}.key"),
                    reason: format!(
                        "{k:?}: expected request.auth.claims[name] or request.auth.claims[a][b]"
                    ),
                });
                return None;
            }
        },
        (None, k) => H::Absent(k.to_owned(), !c.values.is_empty()),
    })
}

impl RuleSpec {
    fn to_rule(&self, path: &str, namespace: &str, errs: &mut Vec<FieldError>) -> Rule {
        let mut http_only = Vec::new();
        let from = (self.from.iter().enumerate())
            .map(|(i, f)| {
                let p = format!("{path}.from[{i}].source");
                source(&f.source, &p, namespace, &mut http_only, errs)
            })
            .collect();
        let to = (self.to.iter().enumerate())
            .map(|(i, t)| {
                let p = format!("{path}.to[{i}].operation");
                operation(&t.operation, &p, &mut http_only, errs)
            })
            .collect();
        let mut when = Vec::new();
        let mut http_when = Vec::new();
        for (i, c) in self.when.iter().enumerate() {
            match condition(c, &format!("{path}.when[{i}]"), errs) {
                Some(When::L4(c)) => when.push(c),
                Some(When::Http(h)) => {
                    http_only.push(format!("when {}", c.key));
                    http_when.push(h);
                }
                None => {}
            }
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
