//! The per-request L7 decision: a request's [`HttpFacts`] against the policies attached to
//! what it targets. Depends on the model ([`crate::model`], [`crate::model::l7`]), on
//! [`crate::headers`] for header conditions and on [`crate::jwt::RequestAuth`] for request
//! principals and `request.auth.*`.

use crate::jwt::RequestAuth;
use crate::model::l7::{HttpCondition, HttpOperation};
use crate::model::string::StringMatch;
use crate::model::{Action, Connection, Policy, Rule, Source};

/// The HTTP facts of a request, for L7 rules.
pub struct HttpFacts<'a> {
    /// The connection facts (source identity and addresses, destination port).
    pub conn: Connection<'a>,
    /// `Host` / authority (port stripped by the caller if wanted; matched case-insensitively).
    pub host: &'a str,
    /// Method.
    pub method: &'a str,
    /// Normalized path, without the query.
    pub path: &'a str,
    /// Header lookup by lower-case name: a repeated header's values joined with `,`
    /// ([`crate::headers::header_value`]).
    pub header: &'a dyn Fn(&str) -> Option<std::borrow::Cow<'a, str>>,
    /// The verified JWT, if the request carried one.
    pub auth: Option<&'a RequestAuth>,
}

/// A `hosts` match, ASCII case-insensitive, without allocating (per request).
fn host_match(m: &StringMatch, host: &str) -> bool {
    let h = host.as_bytes();
    match m {
        StringMatch::Exact(e) => e.eq_ignore_ascii_case(host),
        StringMatch::Prefix(p) => h
            .get(..p.len())
            .is_some_and(|x| x.eq_ignore_ascii_case(p.as_bytes())),
        StringMatch::Suffix(s) => h
            .len()
            .checked_sub(s.len())
            .is_some_and(|start| h[start..].eq_ignore_ascii_case(s.as_bytes())),
        StringMatch::Presence => !h.is_empty(),
    }
}

impl HttpOperation {
    fn matches(&self, r: &HttpFacts<'_>) -> bool {
        let pos_neg = |pos: bool, neg: bool| pos && !neg;
        pos_neg(
            self.hosts.is_empty() || self.hosts.iter().any(|m| host_match(m, r.host)),
            self.not_hosts.iter().any(|m| host_match(m, r.host)),
        ) && pos_neg(
            self.methods.is_empty() || self.methods.iter().any(|m| m == r.method),
            self.not_methods.iter().any(|m| m == r.method),
        ) && pos_neg(
            self.paths.is_empty() || self.paths.iter().any(|m| m.matches(r.path)),
            self.not_paths.iter().any(|m| m.matches(r.path)),
        )
    }
}

/// `values` / `notValues` over an attribute with any number of values (none when absent).
fn any_of<'v>(
    values: &[StringMatch],
    not_values: &[StringMatch],
    got: impl Iterator<Item = &'v str> + Clone,
) -> bool {
    let hit = |ms: &[StringMatch]| got.clone().any(|g| ms.iter().any(|m| m.matches(Some(g))));
    (values.is_empty() || hit(values)) && !hit(not_values)
}

impl HttpCondition {
    fn matches(&self, r: &HttpFacts<'_>, action: Action) -> bool {
        use serde_json::Value;
        match self {
            HttpCondition::Header(name, v, n) => {
                crate::headers::condition_matches(action, v, n, (r.header)(name).as_deref())
            }
            HttpCondition::RequestPrincipal(v, n) => {
                any_of(v, n, r.auth.map(|a| a.principal.as_str()).into_iter())
            }
            HttpCondition::Audiences(v, n) => any_of(
                v,
                n,
                r.auth
                    .into_iter()
                    .flat_map(|a| a.audiences.iter().map(String::as_str)),
            ),
            HttpCondition::Presenter(v, n) => any_of(
                v,
                n,
                r.auth.and_then(|a| a.presenter.as_deref()).into_iter(),
            ),
            HttpCondition::Claim(path, v, n) => {
                // A string claim, or the strings of a list claim (no allocation).
                let (one, list): (Option<&str>, &[Value]) = match r.auth.and_then(|a| a.claim(path))
                {
                    Some(Value::String(s)) => (Some(s.as_str()), &[]),
                    Some(Value::Array(a)) => (None, a.as_slice()),
                    _ => (None, &[]),
                };
                any_of(
                    v,
                    n,
                    one.into_iter().chain(list.iter().filter_map(Value::as_str)),
                )
            }
            // Not evaluated here: fails closed (Istio's rule for what a proxy cannot see).
            HttpCondition::Absent(..) => action != Action::Allow,
        }
    }
}

impl Rule {
    /// Whether the rule of a policy with `action` matches an HTTP request (L4 and L7 fields
    /// together; what cannot be evaluated fails closed for that action).
    pub fn matches_http(&self, action: Action, r: &HttpFacts<'_>) -> bool {
        let conn = &r.conn;
        if self.lacks_remote_ip(action, conn) {
            return false;
        }
        let principal = r.auth.map(|a| a.principal.as_str());
        let request_principal = |s: &Source| {
            let hit =
                |ms: &[StringMatch]| principal.is_some() && ms.iter().any(|m| m.matches(principal));
            (s.request_principals.is_empty() || hit(&s.request_principals))
                && !hit(&s.not_request_principals)
        };
        (self.from.is_empty()
            || self
                .from
                .iter()
                .any(|s| request_principal(s) && s.matches_conn(conn)))
            && (self.to.is_empty()
                || self
                    .to
                    .iter()
                    .any(|o| o.matches_conn(conn) && o.http.matches(r)))
            && self.when.iter().all(|w| w.matches_conn(conn))
            && self.http_when.iter().all(|w| w.matches(r, action))
    }
}

/// The outcome of an L7 decision, borrowing the deciding policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpDecision<'a> {
    /// Allowed.
    Allow,
    /// A DENY matched.
    DeniedBy(&'a Policy),
    /// ALLOW policies apply and none matched.
    NotAllowed,
}

impl HttpDecision<'_> {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, HttpDecision::Allow)
    }
}

/// The first AUDIT policy matching the request, if any (Istio: the request is marked for
/// audit logging; the decision is not affected).
pub fn audited<'a>(policies: &[&'a Policy], r: &HttpFacts<'_>) -> Option<&'a Policy> {
    policies
        .iter()
        .find(|p| p.action == Action::Audit && p.rules.iter().any(|x| x.matches_http(p.action, r)))
        .copied()
}

/// Decides a request against `policies` (those attached to what it targets): DENY first,
/// then, if any ALLOW applies, one must match.
pub fn evaluate_http<'a>(policies: &[&'a Policy], r: &HttpFacts<'_>) -> HttpDecision<'a> {
    decide(policies, |p| {
        p.rules.iter().any(|x| x.matches_http(p.action, r))
    })
}

/// Decides a stream that is not parsed as HTTP (a waypoint's or sidecar's TCP path) against
/// `policies`, with the L4 reading of HTTP-only fields Istio's ztunnel uses: an ALLOW rule
/// using them never matches, a DENY rule is enforced without them (both fail closed). A
/// matching `CUSTOM` policy denies: this data plane asks external authorizers about HTTP
/// requests only, so a stream it cannot have checked is refused (fail closed).
pub fn evaluate_conn<'a>(policies: &[&'a Policy], c: &Connection<'_>) -> HttpDecision<'a> {
    if let Some(p) = policies
        .iter()
        .find(|p| p.action == Action::Custom && p.rules.iter().any(|r| r.matches(Action::Deny, c)))
    {
        return HttpDecision::DeniedBy(p);
    }
    decide(policies, |p| p.matches(c))
}

/// The `CUSTOM` policies among `policies` whose rules match the request, in order: Istio asks
/// a policy's provider only about the requests its rules match (what a rule cannot evaluate
/// counts as matching, so the authorizer is asked rather than skipped). Calls `each` with
/// every matching policy; stops early when it returns `false`. Evaluated before DENY and
/// ALLOW ([`evaluate_http`] ignores CUSTOM policies).
pub fn custom_matches<'a>(
    policies: &[&'a Policy],
    r: &HttpFacts<'_>,
    mut each: impl FnMut(&'a Policy) -> bool,
) {
    for p in policies.iter().filter(|p| p.action == Action::Custom) {
        // Read as a DENY: a field that cannot be evaluated keeps the rule matching (the
        // authorizer is asked), it never skips the check.
        if p.rules.iter().any(|x| x.matches_http(Action::Deny, r)) && !each(p) {
            return;
        }
    }
}

/// Istio authz: any matching DENY denies; then, if an ALLOW applies, one must match. AUDIT
/// policies never decide.
fn decide<'a>(policies: &[&'a Policy], matches: impl Fn(&Policy) -> bool) -> HttpDecision<'a> {
    if let Some(p) = policies
        .iter()
        .find(|p| p.action == Action::Deny && matches(p))
    {
        return HttpDecision::DeniedBy(p);
    }
    let mut allows = policies
        .iter()
        .filter(|p| p.action == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return HttpDecision::Allow;
    }
    if allows.any(|p| matches(p)) {
        HttpDecision::Allow
    } else {
        HttpDecision::NotAllowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_principals_and_claims() {
        #![allow(clippy::unwrap_used)]
        use crate::istio::AuthorizationPolicySpec;
        let spec: AuthorizationPolicySpec = serde_json::from_value(serde_json::json!({
            "targetRefs": [{"kind": "Service", "name": "api"}],
            "rules": [{
                "from": [{"source": {"requestPrincipals": ["iss/*"]}}],
                "when": [
                    {"key": "request.auth.claims[groups]", "values": ["admin"]},
                    {"key": "request.auth.claims[org][team]", "notValues": ["blocked"]},
                    {"key": "request.auth.audiences", "values": ["api"]}
                ]
            }]
        }))
        .unwrap();
        let policy = spec.to_policy("ns", "p", "istio-system").unwrap();
        let auth = |claims: serde_json::Value| crate::jwt::RequestAuth {
            principal: "iss/alice".into(),
            audiences: vec!["api".into()],
            presenter: None,
            claims: claims.as_object().unwrap().clone(),
            payload: String::new(),
            rule: std::sync::Arc::new(crate::jwt::JwtRule {
                issuer: "iss".into(),
                audiences: vec![],
                keys: crate::jwt::KeySource::Uri("http://x".into()),
                inline: None,
                locations: vec![],
                forward_original_token: false,
                claim_to_headers: vec![],
                payload_to_header: None,
                timeout: std::time::Duration::from_secs(1),
            }),
        };
        fn decide_with(policy: &Policy, a: Option<&crate::jwt::RequestAuth>) -> bool {
            let header = |_: &str| None::<std::borrow::Cow<str>>;
            let facts = HttpFacts {
                conn: Connection {
                    source_ip: "10.0.0.1".parse().unwrap(),
                    remote_ip: None,
                    source_principal: None,
                    source_namespace: None,
                    destination_ip: "10.0.0.2".parse().unwrap(),
                    destination_port: 80,
                },
                host: "api",
                method: "GET",
                path: "/",
                header: &header,
                auth: a,
            };
            evaluate_http(&[policy], &facts).is_allowed()
        }
        let decide = |a| decide_with(&policy, a);
        assert!(!decide(None), "no token: no principal");
        let ok = auth(serde_json::json!({"groups": ["dev", "admin"], "org": {"team": "core"}}));
        assert!(decide(Some(&ok)));
        let not_admin = auth(serde_json::json!({"groups": "dev"}));
        assert!(!decide(Some(&not_admin)));
        let blocked = auth(serde_json::json!({"groups": "admin", "org": {"team": "blocked"}}));
        assert!(!decide(Some(&blocked)));
    }

    /// The former matcher (lower-casing both sides), as the reference.
    fn host_reference(m: &StringMatch, host: &str) -> bool {
        let h = host.to_ascii_lowercase();
        match m {
            StringMatch::Exact(e) => e.eq_ignore_ascii_case(&h),
            StringMatch::Prefix(p) => h.starts_with(&p.to_ascii_lowercase()),
            StringMatch::Suffix(s) => h.ends_with(&s.to_ascii_lowercase()),
            StringMatch::Presence => !h.is_empty(),
        }
    }

    proptest::proptest! {
        #[test]
        fn host_matching_is_the_former_one(pattern in "[*]?[aAbB.é]{0,4}[*]?", host in "[aAbB.é]{0,6}") {
            let m = StringMatch::parse(&pattern);
            proptest::prop_assert_eq!(host_match(&m, &host), host_reference(&m, &host));
        }
    }
}
