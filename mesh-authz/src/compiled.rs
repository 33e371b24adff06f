//! Policies compiled for evaluation: each rule keeps only the checks its fields actually
//! set, IP blocks become (network, mask) integer pairs, and a rule that can never match at L4
//! (an ALLOW rule with HTTP-only fields) is marked once. Remote-address checks pass when the
//! connection has no remote address, and an ALLOW rule needing one then never matches. Same semantics as [`Policy::matches`]
//! (the property test compares them), fewer branches and no `IpNet` arithmetic per decision.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::string::StringMatch;
use crate::model::{Action, Condition, Connection, Policy};

#[derive(Debug, Clone, Copy)]
enum Net {
    V4(u32, u32),
    V6(u128, u128),
}

impl Net {
    fn of(n: &IpNet) -> Net {
        match n {
            IpNet::V4(n) => Net::V4(u32::from(n.network()), u32::from(n.netmask())),
            IpNet::V6(n) => Net::V6(u128::from(n.network()), u128::from(n.netmask())),
        }
    }

    #[inline]
    fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Net::V4(net, mask), IpAddr::V4(a)) => u32::from(a) & mask == *net,
            (Net::V6(net, mask), IpAddr::V6(a)) => u128::from(a) & mask == *net,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Attr {
    Principal,
    Namespace,
    SourceIp,
    RemoteIp,
    DestinationIp,
}

#[derive(Debug, Clone)]
enum Values {
    Strings(Box<[StringMatch]>),
    Nets(Box<[Net]>),
    Ports(Box<[u16]>),
}

/// One set field: the attribute must match one of the values (or, negated, none of them).
#[derive(Debug, Clone)]
struct Check {
    attr: Attr,
    values: Values,
    negate: bool,
}

impl Check {
    #[inline]
    fn hit(&self, c: &Connection<'_>) -> bool {
        match &self.values {
            Values::Strings(m) => {
                let v = match self.attr {
                    Attr::Principal => c.source_principal,
                    _ => c.source_namespace,
                };
                m.iter().any(|m| m.matches(v))
            }
            Values::Nets(n) => {
                let ip = match self.attr {
                    Attr::SourceIp => c.source_ip,
                    Attr::RemoteIp => c.remote_ip.unwrap_or(c.source_ip), // known: see `passes`
                    _ => c.destination_ip,
                };
                n.iter().any(|n| n.contains(ip))
            }
            Values::Ports(p) => p.contains(&c.destination_port),
        }
    }

    #[inline]
    fn passes(&self, c: &Connection<'_>) -> bool {
        // No remote address (a ztunnel): the check is dropped, as Istio's ztunnel drops
        // `remoteIpBlocks` from a DENY rule (an ALLOW rule never gets here).
        if matches!(self.attr, Attr::RemoteIp) && c.remote_ip.is_none() {
            return true;
        }
        self.hit(c) != self.negate
    }
}

fn push_strings(out: &mut Vec<Check>, attr: Attr, v: &[StringMatch], negate: bool) {
    if !v.is_empty() {
        out.push(Check {
            attr,
            values: Values::Strings(v.into()),
            negate,
        });
    }
}

fn push_nets(out: &mut Vec<Check>, attr: Attr, v: &[IpNet], negate: bool) {
    if !v.is_empty() {
        out.push(Check {
            attr,
            values: Values::Nets(v.iter().map(Net::of).collect()),
            negate,
        });
    }
}

fn push_ports(out: &mut Vec<Check>, v: &[u16], negate: bool) {
    if !v.is_empty() {
        out.push(Check {
            attr: Attr::DestinationIp,
            values: Values::Ports(v.into()),
            negate,
        });
    }
}

/// The L4 checks of a source.
fn push_source(k: &mut Vec<Check>, s: &crate::model::Source) {
    push_strings(k, Attr::Principal, &s.principals, false);
    push_strings(k, Attr::Principal, &s.not_principals, true);
    push_strings(k, Attr::Namespace, &s.namespaces, false);
    push_strings(k, Attr::Namespace, &s.not_namespaces, true);
    push_nets(k, Attr::SourceIp, &s.ip_blocks, false);
    push_nets(k, Attr::SourceIp, &s.not_ip_blocks, true);
    push_nets(k, Attr::RemoteIp, &s.remote_ip_blocks, false);
    push_nets(k, Attr::RemoteIp, &s.not_remote_ip_blocks, true);
    push_strings(k, Attr::Principal, &s.service_accounts, false);
    push_strings(k, Attr::Principal, &s.not_service_accounts, true);
}

fn compile_match(m: &crate::model::Match) -> Conj {
    let mut k = Vec::new();
    push_source(&mut k, &m.source);
    push_strings(&mut k, Attr::Principal, &m.service_accounts, false);
    push_strings(&mut k, Attr::Principal, &m.not_service_accounts, true);
    push_nets(&mut k, Attr::DestinationIp, &m.destination_ips, false);
    push_nets(&mut k, Attr::DestinationIp, &m.not_destination_ips, true);
    push_ports(&mut k, &m.ports, false);
    push_ports(&mut k, &m.not_ports, true);
    k.into_boxed_slice()
}

/// All checks must pass.
type Conj = Box<[Check]>;

fn all(checks: &[Check], c: &Connection<'_>) -> bool {
    checks.iter().all(|k| k.passes(c))
}

#[derive(Debug, Clone)]
struct CompiledRule {
    /// Any must pass (empty: any source).
    from: Box<[Conj]>,
    /// Any must pass (empty: any operation).
    to: Box<[Conj]>,
    /// All must pass.
    when: Conj,
    /// Each clause: any of its alternatives must pass (none: the clause fails).
    any_of: Box<[Box<[Conj]>]>,
    /// An ALLOW rule using the remote address: never matches a connection without one.
    needs_remote: bool,
}

impl CompiledRule {
    #[inline]
    fn matches(&self, c: &Connection<'_>) -> bool {
        (!self.needs_remote || c.remote_ip.is_some())
            && (self.from.is_empty() || self.from.iter().any(|s| all(s, c)))
            && (self.to.is_empty() || self.to.iter().any(|o| all(o, c)))
            && all(&self.when, c)
            && self
                .any_of
                .iter()
                .all(|alts| alts.iter().any(|a| all(a, c)))
    }
}

/// A policy ready for evaluation.
#[derive(Debug, Clone)]
pub(crate) struct CompiledPolicy {
    pub(crate) policy: Arc<Policy>,
    rules: Box<[CompiledRule]>,
}

impl CompiledPolicy {
    pub(crate) fn new(policy: Arc<Policy>) -> CompiledPolicy {
        let rules = policy
            .rules
            .iter()
            // Istio's ztunnel translation: an ALLOW rule with HTTP-only fields never matches
            // at L4 (fails closed); a DENY rule drops those fields and keeps the rest.
            .filter(|r| policy.action != Action::Allow || r.http_only.is_empty())
            .map(|r| CompiledRule {
                from: r
                    .from
                    .iter()
                    .map(|s| {
                        let mut k = Vec::new();
                        push_source(&mut k, s);
                        k.into_boxed_slice()
                    })
                    .collect(),
                to: r
                    .to
                    .iter()
                    .map(|o| {
                        let mut k = Vec::new();
                        push_ports(&mut k, &o.ports, false);
                        push_ports(&mut k, &o.not_ports, true);
                        k.into_boxed_slice()
                    })
                    .collect(),
                when: {
                    let mut k = Vec::new();
                    for w in &r.when {
                        match w {
                            Condition::SourceIp(v, n) => {
                                push_nets(&mut k, Attr::SourceIp, v, false);
                                push_nets(&mut k, Attr::SourceIp, n, true);
                            }
                            Condition::DestinationIp(v, n) => {
                                push_nets(&mut k, Attr::DestinationIp, v, false);
                                push_nets(&mut k, Attr::DestinationIp, n, true);
                            }
                            Condition::DestinationPort(v, n) => {
                                push_ports(&mut k, v, false);
                                push_ports(&mut k, n, true);
                            }
                            Condition::SourcePrincipal(v, n) => {
                                push_strings(&mut k, Attr::Principal, v, false);
                                push_strings(&mut k, Attr::Principal, n, true);
                            }
                            Condition::SourceNamespace(v, n) => {
                                push_strings(&mut k, Attr::Namespace, v, false);
                                push_strings(&mut k, Attr::Namespace, n, true);
                            }
                            Condition::RemoteIp(v, n) => {
                                push_nets(&mut k, Attr::RemoteIp, v, false);
                                push_nets(&mut k, Attr::RemoteIp, n, true);
                            }
                            Condition::AnyOf(_) => {}
                        }
                    }
                    k.into_boxed_slice()
                },
                any_of: r
                    .when
                    .iter()
                    .filter_map(|w| match w {
                        Condition::AnyOf(alts) => Some(alts.iter().map(compile_match).collect()),
                        _ => None,
                    })
                    .collect(),
                needs_remote: policy.action == Action::Allow && r.uses_remote_ip(),
            })
            .collect();
        CompiledPolicy { policy, rules }
    }

    /// Whether any rule matches.
    #[inline]
    pub(crate) fn matches(&self, c: &Connection<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(c))
    }
}
