//! The policy model and its L4 matching semantics (Istio's).
//!
//! - Values within a field are ORed, the fields of a source/operation are ANDed, the entries of
//!   `from` (and of `to`) are ORed, and `from`, `to` and every `when` condition are ANDed.
//! - A policy matches when any of its rules matches; no rules match nothing.
//! - `not*` fields match when none of their values match. A connection without a principal
//!   (plaintext) matches no `principals`/`namespaces` value and every `not*` of them.
//! - HTTP-only fields at L4 (Istio's ztunnel translation): an ALLOW rule using them never
//!   matches; a DENY rule is enforced without them (more restrictive). `remoteIpBlocks` and
//!   `remote.ip` follow the same rule wherever the original client is not known
//!   ([`Connection::remote_ip`] is `None`: at a ztunnel, as in Istio).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

pub(crate) mod l7;
pub(crate) mod string;

use l7::{HttpCondition, HttpOperation};
pub use string::StringMatch;

/// ALLOW or DENY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow matching connections; once any ALLOW policy applies, others are denied.
    Allow,
    /// Deny matching connections; evaluated before ALLOW.
    Deny,
    /// Mark matching requests as audited in the access log; never changes a decision
    /// (enforced at waypoints; ztunnels skip it, as L4 has no audit logging in Istio).
    Audit,
    /// Ask the external authorizer named by [`Policy::provider`] about matching requests;
    /// evaluated before DENY and ALLOW. Never counts as an ALLOW policy. Where no request can
    /// be sent to the authorizer (a ztunnel, a TCP stream) it is enforced as a DENY without
    /// its HTTP fields (fail closed, as Istio's ztunnel treats L7 policies).
    Custom,
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// Root namespace, no selector: every workload of the mesh.
    Mesh,
    /// No selector: every workload of the policy's namespace.
    Namespace,
    /// Workloads carrying all these labels: in the policy's namespace, or in every namespace
    /// when the policy is in the root namespace.
    Selector(BTreeMap<String, String>),
    /// `targetRefs`: enforced by the waypoint of these Services or Gateways, not by ztunnels.
    TargetRefs(Vec<TargetRef>),
    /// Attached by the control plane: applies to the workloads that name it (Istio's
    /// workload API `WORKLOAD_SELECTOR` scope, where istiod resolves the selector and lists
    /// the policy in each selected `Workload.authorization_policies`). See
    /// [`PolicyIndex::build_assigned`](crate::PolicyIndex::build_assigned).
    Assigned,
}

/// A `targetRefs[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `Service` (also `ServiceEntry`) or `Gateway`.
    pub kind: String,
    /// Name, in the policy's namespace.
    pub name: String,
}

/// A `from[].source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    pub remote_ip_blocks: Vec<IpNet>,
    pub not_remote_ip_blocks: Vec<IpNet>,
    /// `serviceAccounts` (Istio 1.22), as principal matches `*/ns/<ns>/sa/<sa>` (any trust
    /// domain).
    pub service_accounts: Vec<StringMatch>,
    /// `notServiceAccounts`.
    pub not_service_accounts: Vec<StringMatch>,
    /// `requestPrincipals` (JWT `iss/sub`; evaluated at L7).
    pub request_principals: Vec<StringMatch>,
    /// `notRequestPrincipals`.
    pub not_request_principals: Vec<StringMatch>,
}

/// A `to[].operation` (its L4 part).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    /// Its HTTP fields (evaluated at a waypoint).
    pub http: HttpOperation,
}

/// A `when` condition on an L4 attribute: (values, notValues).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)]
#[serde(rename_all = "camelCase")]
pub enum Condition {
    SourceIp(Vec<IpNet>, Vec<IpNet>),
    SourcePrincipal(Vec<StringMatch>, Vec<StringMatch>),
    SourceNamespace(Vec<StringMatch>, Vec<StringMatch>),
    DestinationIp(Vec<IpNet>, Vec<IpNet>),
    DestinationPort(Vec<u16>, Vec<u16>),
    /// `remote.ip`: the original client, where known (see [`Connection::remote_ip`]).
    RemoteIp(Vec<IpNet>, Vec<IpNet>),
    /// Any of these matches (Istio's workload-API clause); none: the condition fails.
    AnyOf(Vec<Match>),
}

/// One alternative of [`Condition::AnyOf`] (Istio's workload-API `Match`): every field that is
/// set must match — one of its values, and none of its `not_` values.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    /// Principals, namespaces and source IPs (`remote_ip_blocks` and request principals
    /// are not part of the workload API and stay empty).
    pub source: Source,
    /// Service accounts as principal matches (`*/ns/<ns>/sa/<sa>`: any trust domain).
    pub service_accounts: Vec<StringMatch>,
    pub not_service_accounts: Vec<StringMatch>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

impl Match {
    fn matches_conn(&self, c: &Connection<'_>) -> bool {
        self.source.matches_conn(c)
            && pos_neg(
                opt(self.service_accounts.is_empty(), || {
                    any_str(&self.service_accounts, c.source_principal)
                }),
                any_str(&self.not_service_accounts, c.source_principal),
            )
            && pos_neg(
                opt(self.destination_ips.is_empty(), || {
                    any_ip(&self.destination_ips, c.destination_ip)
                }),
                any_ip(&self.not_destination_ips, c.destination_ip),
            )
            && pos_neg(
                opt(self.ports.is_empty(), || {
                    self.ports.contains(&c.destination_port)
                }),
                self.not_ports.contains(&c.destination_port),
            )
    }
}

/// A rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Sources, any of which matches (empty: any source).
    pub from: Vec<Source>,
    /// Operations, any of which matches (empty: any operation).
    pub to: Vec<Operation>,
    /// Conditions, all of which must match.
    pub when: Vec<Condition>,
    /// HTTP `when` conditions (evaluated at a waypoint).
    pub http_when: Vec<HttpCondition>,
    /// HTTP-only fields the rule uses (names, for logs); see the module docs.
    pub http_only: Vec<String>,
}

/// An authorization policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Which workloads it applies to.
    pub scope: Scope,
    /// ALLOW or DENY.
    pub action: Action,
    /// Rules; empty matches nothing.
    pub rules: Vec<Rule>,
    /// `provider.name` of a [`Action::Custom`] policy; `None` for the other actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// The L4 facts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The peer address of the connection.
    pub source_ip: IpAddr,
    /// `remote.ip`, the original client address, where this proxy evaluates it (sidecars and
    /// waypoints: the client the peer proxy asserts in `Forwarded`, else the peer). `None`
    /// where it is not evaluated (a ztunnel, as Istio's): an ALLOW rule using
    /// `remoteIpBlocks` or `remote.ip` then never matches, and a DENY rule is enforced
    /// without them.
    pub remote_ip: Option<IpAddr>,
    /// The authenticated principal, `<trust-domain>/ns/<ns>/sa/<sa>`; `None` for plaintext.
    pub source_principal: Option<&'a str>,
    /// The authenticated namespace; `None` for plaintext.
    pub source_namespace: Option<&'a str>,
    /// Destination address.
    pub destination_ip: IpAddr,
    /// Destination port.
    pub destination_port: u16,
}

fn any_str(m: &[StringMatch], v: Option<&str>) -> bool {
    m.iter().any(|m| m.matches(v))
}

fn any_ip(n: &[IpNet], ip: IpAddr) -> bool {
    n.iter().any(|n| n.contains(&ip))
}

/// `values` must match (when there are any) and `not_values` must not.
fn pos_neg(values_hit: Option<bool>, not_hit: bool) -> bool {
    values_hit.unwrap_or(true) && !not_hit
}

fn opt(empty: bool, hit: impl FnOnce() -> bool) -> Option<bool> {
    if empty { None } else { Some(hit()) }
}

impl Source {
    /// Whether it sets `remoteIpBlocks` or `notRemoteIpBlocks`.
    pub(crate) fn uses_remote_ip(&self) -> bool {
        !self.remote_ip_blocks.is_empty() || !self.not_remote_ip_blocks.is_empty()
    }

    /// Whether `c` matches. Remote IP blocks hold when the remote address is unknown (a DENY
    /// is enforced without them; [`Rule::matches`] keeps an ALLOW rule from matching).
    pub(crate) fn matches_conn(&self, c: &Connection<'_>) -> bool {
        pos_neg(
            opt(self.principals.is_empty(), || {
                any_str(&self.principals, c.source_principal)
            }),
            any_str(&self.not_principals, c.source_principal),
        ) && pos_neg(
            opt(self.namespaces.is_empty(), || {
                any_str(&self.namespaces, c.source_namespace)
            }),
            any_str(&self.not_namespaces, c.source_namespace),
        ) && pos_neg(
            opt(self.ip_blocks.is_empty(), || {
                any_ip(&self.ip_blocks, c.source_ip)
            }),
            any_ip(&self.not_ip_blocks, c.source_ip),
        ) && pos_neg(
            opt(self.service_accounts.is_empty(), || {
                any_str(&self.service_accounts, c.source_principal)
            }),
            any_str(&self.not_service_accounts, c.source_principal),
        ) && c.remote_ip.is_none_or(|remote| {
            pos_neg(
                opt(self.remote_ip_blocks.is_empty(), || {
                    any_ip(&self.remote_ip_blocks, remote)
                }),
                any_ip(&self.not_remote_ip_blocks, remote),
            )
        })
    }
}

impl Operation {
    pub(crate) fn matches_conn(&self, c: &Connection<'_>) -> bool {
        (self.ports.is_empty() || self.ports.contains(&c.destination_port))
            && !self.not_ports.contains(&c.destination_port)
    }
}

impl Condition {
    pub(crate) fn matches_conn(&self, c: &Connection<'_>) -> bool {
        fn both<T>(v: &[T], n: &[T], hit: impl Fn(&[T]) -> bool) -> bool {
            pos_neg(opt(v.is_empty(), || hit(v)), hit(n))
        }
        match self {
            Condition::SourceIp(v, n) => both(v, n, |x| any_ip(x, c.source_ip)),
            Condition::DestinationIp(v, n) => both(v, n, |x| any_ip(x, c.destination_ip)),
            Condition::DestinationPort(v, n) => both(v, n, |x| x.contains(&c.destination_port)),
            Condition::SourcePrincipal(v, n) => both(v, n, |x| any_str(x, c.source_principal)),
            Condition::SourceNamespace(v, n) => both(v, n, |x| any_str(x, c.source_namespace)),
            // Unknown remote address: the condition is dropped (see `Rule::matches`).
            Condition::RemoteIp(v, n) => c
                .remote_ip
                .is_none_or(|remote| both(v, n, |x| any_ip(x, remote))),
            Condition::AnyOf(m) => m.iter().any(|m| m.matches_conn(c)),
        }
    }
}

impl Rule {
    /// Whether it uses `remoteIpBlocks`, `notRemoteIpBlocks` or `remote.ip`.
    pub(crate) fn uses_remote_ip(&self) -> bool {
        self.from.iter().any(Source::uses_remote_ip)
            || self
                .when
                .iter()
                .any(|w| matches!(w, Condition::RemoteIp(..)))
    }

    /// Whether an ALLOW rule can never match `c` because it needs the remote address and
    /// `c` has none.
    pub(crate) fn lacks_remote_ip(&self, action: Action, c: &Connection<'_>) -> bool {
        action == Action::Allow && c.remote_ip.is_none() && self.uses_remote_ip()
    }

    /// Whether the rule matches `c` for a policy with `action` (see the module docs for
    /// HTTP-only fields).
    pub fn matches(&self, action: Action, c: &Connection<'_>) -> bool {
        if (action == Action::Allow && !self.http_only.is_empty())
            || self.lacks_remote_ip(action, c)
        {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches_conn(c)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches_conn(c)))
            && self.when.iter().all(|w| w.matches_conn(c))
    }
}

impl Policy {
    /// Whether any rule matches.
    pub fn matches(&self, c: &Connection<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(self.action, c))
    }

    /// Whether the policy applies to a workload in `namespace` with `labels`.
    pub fn applies_to(
        &self,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        self.scope
            .applies_to(&self.namespace, root_namespace, namespace, labels)
    }

    /// Whether any rule uses HTTP-only fields (paths, methods, request principals, …), or the
    /// policy is `CUSTOM` (only a proxy that sees requests can ask the authorizer).
    pub fn uses_http(&self) -> bool {
        self.action == Action::Custom || self.rules.iter().any(|r| !r.http_only.is_empty())
    }
}

impl Scope {
    /// Whether a resource of `own_namespace` with this scope applies to a workload in
    /// `namespace` with `labels` (a workload's proxy: ztunnel or sidecar).
    pub fn applies_to(
        &self,
        own_namespace: &str,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        match self {
            Scope::Mesh => true,
            Scope::Namespace => own_namespace == namespace,
            Scope::Selector(sel) => {
                (own_namespace == namespace || own_namespace == root_namespace)
                    && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            }
            // Waypoint resources never apply at a workload's proxy; assigned ones only
            // where the control plane listed them.
            Scope::TargetRefs(_) | Scope::Assigned => false,
        }
    }
}
