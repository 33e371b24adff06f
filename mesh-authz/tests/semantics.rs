//! Istio AuthorizationPolicy corner cases, one test each, and a property test of the compiled
//! index against an independent reference evaluator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_authz::istio::AuthorizationPolicySpec;
use mesh_authz::*;

const ROOT: &str = "istio-system";

fn policy(ns: &str, name: &str, json: &str) -> Policy {
    let spec: AuthorizationPolicySpec = serde_json::from_str(json).unwrap();
    spec.to_policy(ns, name, ROOT).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct World {
    index: PolicyIndex,
}

impl World {
    fn new(policies: Vec<Policy>) -> World {
        let db = labels(&[("app", "db")]);
        let web = labels(&[("app", "web")]);
        let other = labels(&[("app", "db")]);
        let ws = [
            WorkloadRef {
                key: "shop/db",
                namespace: "shop",
                labels: &db,
            },
            WorkloadRef {
                key: "shop/web",
                namespace: "shop",
                labels: &web,
            },
            WorkloadRef {
                key: "blog/db",
                namespace: "blog",
                labels: &other,
            },
        ];
        World {
            index: PolicyIndex::build(&policies, ws, ROOT),
        }
    }

    fn allowed(&self, wl: &str, c: Conn) -> bool {
        self.index.evaluate(wl, &c.as_connection()).is_allowed()
    }
}

#[derive(Clone, Copy)]
struct Conn {
    ip: &'static str,
    remote: Option<&'static str>,
    principal: Option<&'static str>,
    port: u16,
}

impl Conn {
    fn from(principal: &'static str) -> Conn {
        Conn {
            ip: "10.1.0.5",
            remote: None,
            principal: Some(principal),
            port: 5432,
        }
    }
    fn plaintext() -> Conn {
        Conn {
            ip: "10.1.0.5",
            remote: None,
            principal: None,
            port: 5432,
        }
    }
    fn ip(mut self, ip: &'static str) -> Conn {
        self.ip = ip;
        self
    }
    fn port(mut self, p: u16) -> Conn {
        self.port = p;
        self
    }
    fn as_connection(&self) -> Connection<'static> {
        let ns = self.principal.and_then(|p| p.split('/').nth(2));
        Connection {
            source_ip: self.ip.parse().unwrap(),
            remote_ip: self.remote.map(|r| r.parse().unwrap()),
            source_principal: self.principal,
            source_namespace: ns,
            destination_ip: "10.2.0.9".parse().unwrap(),
            destination_port: self.port,
        }
    }
}

const WEB: &str = "cluster.local/ns/shop/sa/web";
const EVIL: &str = "cluster.local/ns/evil/sa/x";

#[test]
fn no_policy_allows_everything() {
    let w = World::new(vec![]);
    assert!(w.allowed("shop/db", Conn::from(EVIL)));
    assert!(w.allowed("shop/db", Conn::plaintext()));
}

#[test]
fn allow_by_principal_denies_the_rest_of_the_selected_workloads_only() {
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"selector":{"matchLabels":{"app":"db"}},
        "rules":[{"from":[{"source":{"principals":["cluster.local/ns/shop/sa/web"]}}]}]}"#,
    )]);
    assert!(w.allowed("shop/db", Conn::from(WEB)));
    assert!(!w.allowed("shop/db", Conn::from(EVIL)));
    assert!(!w.allowed("shop/db", Conn::plaintext()));
    assert!(
        w.allowed("shop/web", Conn::from(EVIL)),
        "selector does not select web"
    );
    assert!(
        w.allowed("blog/db", Conn::from(EVIL)),
        "selector is namespaced"
    );
    let d = w
        .index
        .evaluate("shop/db", &Conn::from(EVIL).as_connection());
    assert!(matches!(d, Decision::NotAllowed(_)));
    assert_eq!(d.policies(), ["shop/p"]);
    assert_eq!(d.to_string(), "not allowed by shop/p");
}

#[test]
fn principal_wildcards() {
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"rules":[{"from":[{"source":{"principals":["*"]}}]}]}"#,
    )]);
    assert!(
        w.allowed("shop/db", Conn::from(EVIL)),
        "* matches any authenticated principal"
    );
    assert!(
        !w.allowed("shop/db", Conn::plaintext()),
        "* requires a principal"
    );
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"rules":[{"from":[{"source":{"principals":["cluster.local/ns/shop/*"]}}]}]}"#,
    )]);
    assert!(w.allowed("shop/db", Conn::from(WEB)));
    assert!(!w.allowed("shop/db", Conn::from(EVIL)));
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"rules":[{"from":[{"source":{"principals":["*/sa/web"]}}]}]}"#,
    )]);
    assert!(w.allowed("shop/db", Conn::from(WEB)));
    assert!(!w.allowed("shop/db", Conn::from(EVIL)));
}

#[test]
fn deny_is_evaluated_before_allow() {
    let w = World::new(vec![
        policy("shop", "allow-all", r#"{"rules":[{}]}"#),
        policy(
            "shop",
            "deny-evil",
            r#"{"action":"DENY","rules":[{"from":[{"source":{"namespaces":["evil"]}}]}]}"#,
        ),
    ]);
    assert!(w.allowed("shop/db", Conn::from(WEB)));
    let d = w
        .index
        .evaluate("shop/db", &Conn::from(EVIL).as_connection());
    assert!(matches!(d, Decision::DeniedBy(_)));
    assert_eq!(d.to_string(), "denied by shop/deny-evil");
}

#[test]
fn not_namespaces_match_plaintext_and_other_namespaces() {
    let w = World::new(vec![policy(
        "shop",
        "d",
        r#"{"action":"DENY","rules":[{"from":[{"source":{"notNamespaces":["shop"]}}]}]}"#,
    )]);
    assert!(w.allowed("shop/db", Conn::from(WEB)));
    assert!(!w.allowed("shop/db", Conn::from(EVIL)));
    assert!(
        !w.allowed("shop/db", Conn::plaintext()),
        "no namespace is not 'shop'"
    );
}

#[test]
fn ip_blocks_and_not_ip_blocks() {
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"rules":[{"from":[{"source":{"ipBlocks":["10.1.0.0/16"],"notIpBlocks":["10.1.9.9"]}}]}]}"#,
    )]);
    assert!(w.allowed("shop/db", Conn::plaintext().ip("10.1.2.3")));
    assert!(
        !w.allowed("shop/db", Conn::plaintext().ip("10.1.9.9")),
        "notIpBlocks ANDed"
    );
    assert!(!w.allowed("shop/db", Conn::plaintext().ip("10.9.0.1")));
}

#[test]
fn remote_ip_blocks_use_the_original_client() {
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"rules":[{"from":[{"source":{"remoteIpBlocks":["192.0.2.0/24"]}}]}]}"#,
    )]);
    let mut c = Conn::plaintext().ip("192.0.2.7");
    assert!(
        !w.allowed("shop/db", c),
        "without a remote address (a ztunnel) the ALLOW rule never matches"
    );
    c.remote = Some("192.0.2.7");
    assert!(w.allowed("shop/db", c));
    c.remote = Some("10.1.0.5");
    assert!(!w.allowed("shop/db", c));
}

#[test]
fn ports_and_not_ports() {
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"rules":[{"to":[{"operation":{"ports":["5432","8080"]}}]}]}"#,
    )]);
    assert!(w.allowed("shop/db", Conn::from(EVIL).port(8080)));
    assert!(!w.allowed("shop/db", Conn::from(EVIL).port(22)));
    let w = World::new(vec![policy(
        "shop",
        "d",
        r#"{"action":"DENY","rules":[{"to":[{"operation":{"notPorts":["5432"]}}]}]}"#,
    )]);
    assert!(w.allowed("shop/db", Conn::from(EVIL).port(5432)));
    assert!(!w.allowed("shop/db", Conn::from(EVIL).port(22)));
}

#[test]
fn fields_anded_values_ored_rules_ored() {
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"rules":[
        {"from":[{"source":{"namespaces":["shop"],"ipBlocks":["10.1.0.0/16"]}}],"to":[{"operation":{"ports":["5432"]}}]},
        {"from":[{"source":{"principals":["cluster.local/ns/evil/sa/x","cluster.local/ns/ops/sa/admin"]}}]}
    ]}"#,
    )]);
    assert!(w.allowed("shop/db", Conn::from(WEB)));
    assert!(
        !w.allowed("shop/db", Conn::from(WEB).ip("10.9.0.1")),
        "ipBlocks ANDed with namespaces"
    );
    assert!(
        !w.allowed("shop/db", Conn::from(WEB).port(22)),
        "to ANDed with from"
    );
    assert!(
        w.allowed("shop/db", Conn::from(EVIL).port(22)),
        "second rule ORed; its values ORed"
    );
}

#[test]
fn when_conditions() {
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"rules":[{"when":[
        {"key":"destination.port","values":["5432"]},
        {"key":"source.ip","notValues":["10.1.0.0/24"]},
        {"key":"source.principal","values":["cluster.local/ns/shop/*"]}
    ]}]}"#,
    )]);
    assert!(w.allowed("shop/db", Conn::from(WEB).ip("10.1.5.1")));
    assert!(
        !w.allowed("shop/db", Conn::from(WEB).ip("10.1.0.1")),
        "notValues"
    );
    assert!(
        !w.allowed("shop/db", Conn::from(WEB).ip("10.1.5.1").port(80)),
        "conditions ANDed"
    );
    assert!(!w.allowed("shop/db", Conn::from(EVIL).ip("10.1.5.1")));
}

#[test]
fn empty_rules_match_nothing_and_empty_rule_matches_everything() {
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"selector":{"matchLabels":{"app":"db"}}}"#,
    )]);
    assert!(
        !w.allowed("shop/db", Conn::from(WEB)),
        "ALLOW without rules: deny all"
    );
    let w = World::new(vec![policy("shop", "d", r#"{"action":"DENY"}"#)]);
    assert!(
        w.allowed("shop/db", Conn::from(EVIL)),
        "DENY without rules matches nothing"
    );
    let w = World::new(vec![policy(
        "shop",
        "d",
        r#"{"action":"DENY","rules":[{}]}"#,
    )]);
    assert!(
        !w.allowed("shop/db", Conn::from(WEB)),
        "an empty rule matches everything"
    );
}

#[test]
fn http_only_fields_fail_closed_at_l4() {
    // ALLOW: the rule with paths never matches; the policy still applies, so all is denied.
    let w = World::new(vec![policy(
        "shop",
        "p",
        r#"{"rules":[{"from":[{"source":{"principals":["*"]}}],"to":[{"operation":{"paths":["/api"]}}]}]}"#,
    )]);
    assert!(!w.allowed("shop/db", Conn::from(WEB)));
    // DENY: enforced without the HTTP part, i.e. more broadly.
    let w = World::new(vec![policy(
        "shop",
        "d",
        r#"{"action":"DENY","rules":[{"from":[{"source":{"namespaces":["evil"]}}],"to":[{"operation":{"methods":["DELETE"]}}]}]}"#,
    )]);
    assert!(!w.allowed("shop/db", Conn::from(EVIL)));
    assert!(w.allowed("shop/db", Conn::from(WEB)));
    let w = World::new(vec![policy(
        "shop",
        "d",
        r#"{"action":"DENY","rules":[{"when":[{"key":"request.headers[x-evil]","values":["1"]}]}]}"#,
    )]);
    assert!(
        !w.allowed("shop/db", Conn::from(WEB)),
        "DENY on a header condition denies at L4"
    );
}

#[test]
fn scopes_mesh_namespace_selector() {
    let w = World::new(vec![policy(
        ROOT,
        "mesh-deny-evil",
        r#"{"action":"DENY","rules":[{"from":[{"source":{"namespaces":["evil"]}}]}]}"#,
    )]);
    assert!(!w.allowed("shop/db", Conn::from(EVIL)));
    assert!(
        !w.allowed("blog/db", Conn::from(EVIL)),
        "root namespace without selector: mesh-wide"
    );
    let w = World::new(vec![policy(
        "shop",
        "ns-deny",
        r#"{"action":"DENY","rules":[{}]}"#,
    )]);
    assert!(!w.allowed("shop/web", Conn::from(WEB)));
    assert!(
        w.allowed("blog/db", Conn::from(WEB)),
        "namespace scope stays in its namespace"
    );
    let w = World::new(vec![policy(
        ROOT,
        "root-sel",
        r#"{"selector":{"matchLabels":{"app":"db"}},"action":"DENY","rules":[{}]}"#,
    )]);
    assert!(!w.allowed("shop/db", Conn::from(WEB)));
    assert!(
        !w.allowed("blog/db", Conn::from(WEB)),
        "root namespace selector: all namespaces"
    );
    assert!(w.allowed("shop/web", Conn::from(WEB)));
    assert_eq!(w.index.applied("blog/db"), vec![format!("{ROOT}/root-sel")]);
}

#[test]
fn invalid_specs_name_the_field() {
    let bad = |json: &str| {
        let spec: AuthorizationPolicySpec = serde_json::from_str(json).unwrap();
        spec.to_policy("shop", "p", ROOT).unwrap_err()
    };
    let e = bad(r#"{"rules":[{"from":[{"source":{"ipBlocks":["10.0.0.0/33"]}}]}]}"#);
    assert_eq!(e[0].field, "spec.rules[0].from[0].source.ipBlocks[0]");
    let e = bad(r#"{"rules":[{"to":[{"operation":{"ports":["http"]}}]}]}"#);
    assert_eq!(e[0].field, "spec.rules[0].to[0].operation.ports[0]");
    // CUSTOM is supported now; without a provider it names the missing field.
    let e = bad(r#"{"action":"CUSTOM"}"#);
    assert_eq!(e[0].field, "spec.provider.name", "{e:?}");
    let e = bad(r#"{"action":"DENY","provider":{"name":"opa"}}"#);
    assert_eq!(e[0].field, "spec.provider", "{e:?}");
    let e = bad(r#"{"rules":[{"when":[{"key":"source.pricipal","values":["x"]}]}]}"#);
    assert_eq!(e[0].field, "spec.rules[0].when[0].key");
    let unknown = serde_json::from_str::<AuthorizationPolicySpec>(
        r#"{"rules":[{"from":[{"source":{"principal":["x"]}}]}]}"#,
    );
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `principal`")
    );
}

mod reference {
    //! An obviously-correct evaluator written from Istio's documentation, sharing no code with
    //! the crate's matching, and a property test comparing the two.

    use super::*;
    use proptest::prelude::*;

    fn str_hit(pat: &StringMatch, v: Option<&str>) -> bool {
        match (pat, v) {
            (_, None) => false,
            (StringMatch::Presence, Some(v)) => !v.is_empty(),
            (StringMatch::Prefix(p), Some(v)) => v.len() >= p.len() && &v[..p.len()] == p,
            (StringMatch::Suffix(s), Some(v)) => v.len() >= s.len() && &v[v.len() - s.len()..] == s,
            (StringMatch::Exact(e), Some(v)) => v == e,
        }
    }

    fn in_net(n: &ipnet::IpNet, ip: IpAddr) -> bool {
        match (n, ip) {
            (ipnet::IpNet::V4(n), IpAddr::V4(a)) => {
                let mask = if n.prefix_len() == 0 {
                    0
                } else {
                    u32::MAX << (32 - n.prefix_len())
                };
                (u32::from(a) & mask) == (u32::from(n.network()) & mask)
            }
            (ipnet::IpNet::V6(n), IpAddr::V6(a)) => {
                let mask = if n.prefix_len() == 0 {
                    0
                } else {
                    u128::MAX << (128 - n.prefix_len())
                };
                (u128::from(a) & mask) == (u128::from(n.network()) & mask)
            }
            _ => false,
        }
    }

    fn field<T>(pos: &[T], neg: &[T], hit: impl Fn(&T) -> bool) -> bool {
        let mut ok = true;
        if !pos.is_empty() {
            ok = false;
            for p in pos {
                if hit(p) {
                    ok = true;
                }
            }
        }
        for n in neg {
            if hit(n) {
                ok = false;
            }
        }
        ok
    }

    fn rule_matches(r: &Rule, allow: bool, c: &Connection<'_>) -> bool {
        if allow && !r.http_only.is_empty() {
            return false;
        }
        // Istio's ztunnel: without the remote address, `remoteIpBlocks` / `remote.ip` are
        // HTTP-level (ALLOW never matches, DENY is enforced without them).
        let uses_remote = r
            .from
            .iter()
            .any(|s| !s.remote_ip_blocks.is_empty() || !s.not_remote_ip_blocks.is_empty())
            || r.when.iter().any(|w| matches!(w, Condition::RemoteIp(..)));
        if allow && uses_remote && c.remote_ip.is_none() {
            return false;
        }
        let remote_field = |v: &[ipnet::IpNet], n: &[ipnet::IpNet]| match c.remote_ip {
            None => true,
            Some(remote) => field(v, n, |x| in_net(x, remote)),
        };
        let mut from_ok = r.from.is_empty();
        for s in &r.from {
            if field(&s.principals, &s.not_principals, |m| {
                str_hit(m, c.source_principal)
            }) && field(&s.namespaces, &s.not_namespaces, |m| {
                str_hit(m, c.source_namespace)
            }) && field(&s.ip_blocks, &s.not_ip_blocks, |n| in_net(n, c.source_ip))
                && remote_field(&s.remote_ip_blocks, &s.not_remote_ip_blocks)
                && field(&s.service_accounts, &s.not_service_accounts, |m| {
                    str_hit(m, c.source_principal)
                })
            {
                from_ok = true;
            }
        }
        let mut to_ok = r.to.is_empty();
        for o in &r.to {
            if field(&o.ports, &o.not_ports, |p| *p == c.destination_port) {
                to_ok = true;
            }
        }
        let mut when_ok = true;
        for w in &r.when {
            let ok = match w {
                Condition::SourceIp(v, n) => field(v, n, |x| in_net(x, c.source_ip)),
                Condition::DestinationIp(v, n) => field(v, n, |x| in_net(x, c.destination_ip)),
                Condition::DestinationPort(v, n) => field(v, n, |p| *p == c.destination_port),
                Condition::SourcePrincipal(v, n) => field(v, n, |m| str_hit(m, c.source_principal)),
                Condition::SourceNamespace(v, n) => field(v, n, |m| str_hit(m, c.source_namespace)),
                Condition::RemoteIp(v, n) => remote_field(v, n),
                Condition::AnyOf(ms) => ms.iter().any(|m| {
                    let s = &m.source;
                    field(&s.principals, &s.not_principals, |x| {
                        str_hit(x, c.source_principal)
                    }) && field(&s.namespaces, &s.not_namespaces, |x| {
                        str_hit(x, c.source_namespace)
                    }) && field(&s.ip_blocks, &s.not_ip_blocks, |n| in_net(n, c.source_ip))
                        && field(&m.service_accounts, &m.not_service_accounts, |x| {
                            str_hit(x, c.source_principal)
                        })
                        && field(&m.destination_ips, &m.not_destination_ips, |n| {
                            in_net(n, c.destination_ip)
                        })
                        && field(&m.ports, &m.not_ports, |p| *p == c.destination_port)
                }),
            };
            when_ok = when_ok && ok;
        }
        from_ok && to_ok && when_ok
    }

    fn applies(p: &Policy, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        match &p.scope {
            Scope::Mesh => true,
            Scope::Namespace => p.namespace == ns,
            Scope::Selector(sel) => {
                (p.namespace == ns || p.namespace == ROOT)
                    && sel
                        .iter()
                        .all(|(k, v)| labels.get(k).map(|x| x == v).unwrap_or(false))
            }
            // Waypoint policies are not enforced at L4 by ztunnels.
            Scope::TargetRefs(_) | Scope::Assigned => false,
        }
    }

    /// Allowed per Istio: no matching DENY, and (no ALLOW applies, or one matches).
    fn reference(
        policies: &[Policy],
        ns: &str,
        labels: &BTreeMap<String, String>,
        c: &Connection<'_>,
    ) -> bool {
        let applying: Vec<&Policy> = policies.iter().filter(|p| applies(p, ns, labels)).collect();
        for p in &applying {
            if p.action == Action::Deny && p.rules.iter().any(|r| rule_matches(r, false, c)) {
                return false;
            }
        }
        let allows: Vec<&&Policy> = applying
            .iter()
            .filter(|p| p.action == Action::Allow)
            .collect();
        allows.is_empty()
            || allows
                .iter()
                .any(|p| p.rules.iter().any(|r| rule_matches(r, true, c)))
    }

    fn smatch() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            Just("cluster.local/ns/a/sa/x".to_string()),
            Just("cluster.local/ns/b/*".to_string()),
            Just("*/sa/x".to_string()),
            Just("a".to_string()),
            Just("b*".to_string()),
        ]
    }
    fn net() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("10.0.0.0/8"),
            Just("10.0.0.1"),
            Just("10.1.0.0/16"),
            Just("0.0.0.0/0"),
            Just("192.0.2.0/24")
        ]
        .prop_map(str::to_owned)
    }
    fn port() -> impl Strategy<Value = String> {
        prop_oneof![Just("80"), Just("443"), Just("5432")].prop_map(str::to_owned)
    }
    fn list<S: Strategy<Value = String>>(s: S) -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(s, 0..3)
    }

    prop_compose! {
        fn source()(principals in list(smatch()), not_principals in list(smatch()),
                    namespaces in list(smatch()), not_namespaces in list(smatch()),
                    ip_blocks in list(net()), not_ip_blocks in list(net()),
                    remote in list(net()), not_remote in list(net()))
            -> serde_json::Value {
            serde_json::json!({"source": {"principals": principals, "notPrincipals": not_principals,
                "namespaces": namespaces, "notNamespaces": not_namespaces, "ipBlocks": ip_blocks,
                "notIpBlocks": not_ip_blocks, "remoteIpBlocks": remote, "notRemoteIpBlocks": not_remote}})
        }
    }
    fn service_account() -> impl Strategy<Value = String> {
        prop_oneof![Just("a/x"), Just("x"), Just("b/y")].prop_map(str::to_owned)
    }
    prop_compose! {
        /// Service accounts go without principals and namespaces (Istio's rule).
        fn sa_source()(sas in list(service_account()), not_sas in list(service_account()),
                       remote in list(net()))
            -> serde_json::Value {
            serde_json::json!({"source": {"serviceAccounts": sas, "notServiceAccounts": not_sas,
                "remoteIpBlocks": remote}})
        }
    }
    prop_compose! {
        fn operation()(ports in list(port()), not_ports in list(port()), http in any::<bool>()) -> serde_json::Value {
            let paths: Vec<&str> = if http { vec!["/x"] } else { vec![] };
            serde_json::json!({"operation": {"ports": ports, "notPorts": not_ports, "paths": paths}})
        }
    }
    fn condition() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            (list(port()), list(port())).prop_map(
                |(v, n)| serde_json::json!({"key": "destination.port", "values": v, "notValues": n})
            ),
            (list(net()), list(net())).prop_map(
                |(v, n)| serde_json::json!({"key": "source.ip", "values": v, "notValues": n})
            ),
            (list(smatch()), list(smatch())).prop_map(
                |(v, n)| serde_json::json!({"key": "source.namespace", "values": v, "notValues": n})
            ),
            (list(net()), list(net())).prop_map(
                |(v, n)| serde_json::json!({"key": "remote.ip", "values": v, "notValues": n})
            ),
        ]
        .prop_filter("a condition needs values", |c| {
            !c["values"].as_array().unwrap().is_empty()
                || !c["notValues"].as_array().unwrap().is_empty()
        })
    }
    prop_compose! {
        fn rule()(from in proptest::collection::vec(prop_oneof![source(), sa_source()], 0..2),
                  to in proptest::collection::vec(operation(), 0..2),
                  when in proptest::collection::vec(condition(), 0..2)) -> serde_json::Value {
            serde_json::json!({"from": from, "to": to, "when": when})
        }
    }
    prop_compose! {
        fn policy_strategy()(ns in prop_oneof![Just("a"), Just("b"), Just(ROOT)],
                             deny in any::<bool>(),
                             selector in proptest::option::of(prop_oneof![Just("x"), Just("y")]),
                             rules in proptest::collection::vec(rule(), 0..3),
                             n in 0..1000u32) -> Policy {
            let mut spec = serde_json::json!({"action": if deny { "DENY" } else { "ALLOW" }, "rules": rules});
            if let Some(app) = selector {
                spec["selector"] = serde_json::json!({"matchLabels": {"app": app}});
            }
            let spec: AuthorizationPolicySpec = serde_json::from_value(spec).unwrap();
            spec.to_policy(ns, &format!("p{n}"), ROOT).unwrap()
        }
    }
    prop_compose! {
        fn conn()(ip in prop_oneof![Just("10.0.0.1"), Just("10.1.2.3"), Just("192.0.2.9"), Just("172.16.0.1")],
                  remote in proptest::option::of(prop_oneof![Just("192.0.2.1"), Just("10.0.0.1")]),
                  principal in proptest::option::of(prop_oneof![Just("cluster.local/ns/a/sa/x"), Just("cluster.local/ns/b/sa/y"), Just("other/ns/a/sa/x")]),
                  port in prop_oneof![Just(80u16), Just(443), Just(5432)])
            -> (String, Option<String>, Option<String>, u16) {
            (ip.to_owned(), remote.map(str::to_owned), principal.map(str::to_owned), port)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn compiled_index_agrees_with_reference(
            policies in proptest::collection::vec(policy_strategy(), 0..6),
            wl_ns in prop_oneof![Just("a"), Just("b")],
            wl_app in prop_oneof![Just("x"), Just("y")],
            (ip, remote, principal, port) in conn(),
        ) {
            let labels: BTreeMap<String, String> = [("app".to_string(), wl_app.to_string())].into();
            let key = format!("{wl_ns}/w");
            let index = PolicyIndex::build(&policies, [WorkloadRef { key: &key, namespace: wl_ns, labels: &labels }], ROOT);
            let ns = principal.as_deref().and_then(|p| p.split('/').nth(2));
            let c = Connection {
                source_ip: ip.parse().unwrap(),
                remote_ip: remote.map(|r| r.parse().unwrap()),
                source_principal: principal.as_deref(),
                source_namespace: ns,
                destination_ip: "10.9.9.9".parse().unwrap(),
                destination_port: port,
            };
            prop_assert_eq!(index.evaluate(&key, &c).is_allowed(), reference(&policies, wl_ns, &labels, &c));
        }
    }
}

/// Istio's workload-API shape: rules ORed, clauses ANDed, a clause's matches ORed, a clause
/// with no usable match failing; `Assigned` policies apply only where listed.
#[test]
fn workload_api_clauses_and_assigned_scope() {
    let web = Match {
        source: Source {
            principals: vec![StringMatch::Exact("cluster.local/ns/shop/sa/web".into())],
            ..Source::default()
        },
        ..Match::default()
    };
    let any_sa_ops = Match {
        service_accounts: vec![StringMatch::Suffix("/ns/ops/sa/admin".into())],
        ..Match::default()
    };
    let port_5432 = Match {
        ports: vec![5432],
        ..Match::default()
    };
    let p = Policy {
        namespace: "shop".into(),
        name: "db".into(),
        scope: Scope::Assigned,
        action: Action::Allow,
        provider: None,
        rules: vec![Rule {
            when: vec![
                Condition::AnyOf(vec![web, any_sa_ops]),
                Condition::AnyOf(vec![port_5432]),
            ],
            ..Rule::default()
        }],
    };
    let none = BTreeMap::new();
    let listed = vec!["shop/db".to_string()];
    let index = PolicyIndex::build_assigned(
        std::slice::from_ref(&p),
        [
            (
                WorkloadRef {
                    key: "shop/db",
                    namespace: "shop",
                    labels: &none,
                },
                listed.as_slice(),
            ),
            (
                WorkloadRef {
                    key: "shop/cache",
                    namespace: "shop",
                    labels: &none,
                },
                &[] as &[String],
            ),
        ],
        ROOT,
    );
    let conn = |principal: &'static str, port| Connection {
        source_ip: "10.0.0.1".parse().unwrap(),
        remote_ip: None,
        source_principal: Some(principal),
        source_namespace: principal.split('/').nth(2),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: port,
    };
    let ok = |w: &str, pr, port| index.evaluate(w, &conn(pr, port)).is_allowed();
    assert!(ok("shop/db", "cluster.local/ns/shop/sa/web", 5432));
    assert!(ok("shop/db", "other.domain/ns/ops/sa/admin", 5432));
    assert!(!ok("shop/db", "cluster.local/ns/shop/sa/web", 80));
    assert!(!ok("shop/db", "cluster.local/ns/shop/sa/other", 5432));
    // Not listed: the policy does not apply there.
    assert!(ok("shop/cache", "cluster.local/ns/shop/sa/other", 80));
    // A clause whose alternatives are all gone fails (Istio skips empty matches).
    let mut empty = p.clone();
    empty.rules[0].when = vec![Condition::AnyOf(Vec::new())];
    let index = PolicyIndex::build_assigned(
        std::slice::from_ref(&empty),
        [(
            WorkloadRef {
                key: "shop/db",
                namespace: "shop",
                labels: &none,
            },
            listed.as_slice(),
        )],
        ROOT,
    );
    assert!(
        !index
            .evaluate("shop/db", &conn("cluster.local/ns/shop/sa/web", 5432))
            .is_allowed()
    );
}
