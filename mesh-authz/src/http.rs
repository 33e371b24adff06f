//! L7 authorization at a waypoint: Istio `AuthorizationPolicy` HTTP fields (`hosts`,
//! `methods`, `paths` and their `not*` forms, `request.headers[...]` conditions) evaluated per
//! request, with paths normalized first the way Istio's `pathNormalization` modes do, so
//! `//admin`, `/%2Fadmin` and `/x/../admin` are all `/admin` to a policy (and to the upstream:
//! the path forwarded is the one evaluated).
//!
//! Policies reach a waypoint through `targetRefs` (`kind: Service` or `kind: Gateway`), as
//! Istio's waypoint policies do; selector and namespace policies stay with the ztunnels.
//! Request-principal fields and `request.auth.*` conditions use the request's verified JWT
//! ([`crate::jwt::RequestAuth`]); without one they are absent: `requestPrincipals` and
//! `values` do not match, `notRequestPrincipals` and `notValues` do. `remote.ip` is the original
//! client (`conn.remote_ip`); `connection.sni` is not provided, so it fails closed: a DENY rule
//! is enforced without it, an ALLOW rule using it never matches. Headers: see [`crate::headers`].

use crate::model::{Action, Connection, Policy, Rule, StringMatch};

/// Istio's `meshConfig.pathNormalization.normalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// Only the fragment is dropped.
    None,
    /// RFC 3986 dot segments, percent-decoded unreserved characters, `\` to `/`.
    Base,
    /// `Base` plus merged slashes.
    MergeSlashes,
    /// `MergeSlashes` after decoding `%2F` and `%5C` (the default here: safer than Istio's
    /// `BASE` default).
    #[default]
    DecodeAndMergeSlashes,
}

impl std::str::FromStr for PathNormalization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "NONE" => PathNormalization::None,
            "BASE" | "DEFAULT" => PathNormalization::Base,
            "MERGE_SLASHES" => PathNormalization::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => PathNormalization::DecodeAndMergeSlashes,
            o => {
                return Err(format!(
                    "{o:?}: expected NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
                ));
            }
        })
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Normalizes a request path (without the query) by `mode`, in time linear in its length.
/// `None` for a path that cannot be a request path (not starting with `/`, a malformed percent
/// escape, or `%00`, refused in every mode as Istio documents): the request is refused rather
/// than guessed at.
///
/// The order is Istio's documented one (and Envoy's): percent-decode, then RFC 3986
/// dot-segment removal, then merge slashes, so `/public//../admin` is `/public/admin`.
pub fn normalize_path(path: &str, mode: PathNormalization) -> Option<String> {
    let path = path.split('#').next().unwrap_or_default();
    if !path.starts_with('/') && !path.starts_with('\\') {
        return None;
    }
    if path.as_bytes().windows(3).any(|w| w == b"%00") || path.contains('\0') {
        return None;
    }
    if mode == PathNormalization::None {
        return Some(path.to_owned());
    }
    let decoded = percent_decode(path, mode == PathNormalization::DecodeAndMergeSlashes)?;
    let merge = matches!(
        mode,
        PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
    );
    Some(remove_dot_segments(&decoded, merge))
}

/// Percent-decoding: unreserved characters always (RFC 3986 6.2.2.2); `/` and `\` only when
/// `slashes`. Anything else stays encoded (hex normalized to upper case). `\` becomes `/`.
fn percent_decode(path: &str, slashes: bool) -> Option<String> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(if b[i] == b'\\' { b'/' } else { b[i] });
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return None;
        };
        let c = h << 4 | l;
        let unreserved = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        if unreserved {
            out.push(c);
        } else if slashes && matches!(c, b'/' | b'\\') {
            out.push(b'/');
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(h)], HEX[usize::from(l)]]);
        }
        i += 3;
    }
    // Only ASCII bytes were decoded; the rest came from a `&str`.
    String::from_utf8(out).ok()
}

/// RFC 3986 5.2.4 over `/`-separated segments (one pass, a stack of segments), then, when
/// `merge`, empty segments dropped. A path ending in `/`, `/.` or `/..` keeps a trailing `/`.
fn remove_dot_segments(decoded: &str, merge: bool) -> String {
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segs: Vec<&str> = Vec::new();
    let mut rest = decoded.split('/').skip(1).peekable();
    while let Some(seg) = rest.next() {
        let last = rest.peek().is_none();
        match seg {
            "." => {}
            ".." => {
                segs.pop();
            }
            "" if last => {}
            s => segs.push(s),
        }
    }
    let mut p = String::with_capacity(decoded.len());
    for s in segs.iter().filter(|s| !(merge && s.is_empty())) {
        p.push('/');
        p.push_str(s);
    }
    // The final empty segment was skipped above, so a trailing `/` is added back even after
    // an empty segment: `/a//` stays `/a//` (unmerged), and normalizing twice changes nothing.
    if p.is_empty() || trailing {
        p.push('/');
    }
    p
}

/// A `paths` entry: Istio's exact, `prefix*`, `*suffix`, `*`, or a template with `{*}` (one
/// segment) and `{**}` (any number of segments, last).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// As a string match.
    Plain(StringMatch),
    /// Segments: `None` is `{*}`; a final `{**}` is `rest`.
    Template {
        /// Literal segments or `{*}`.
        segments: Vec<Option<String>>,
        /// Ends in `{**}`.
        rest: bool,
    },
}

impl PathMatch {
    /// Parses a `paths` value.
    pub fn parse(s: &str) -> Result<PathMatch, String> {
        if !s.contains('{') {
            return Ok(PathMatch::Plain(StringMatch::parse(s)));
        }
        let parts: Vec<&str> = s.trim_start_matches('/').split('/').collect();
        let mut segments = Vec::new();
        let mut rest = false;
        for (i, p) in parts.iter().enumerate() {
            match *p {
                "{*}" => segments.push(None),
                "{**}" if i + 1 == parts.len() => rest = true,
                "{**}" => return Err(format!("{s:?}: `{{**}}` must be the last segment")),
                p if p.contains('{') || p.contains('*') => {
                    return Err(format!(
                        "{s:?}: a template segment is `{{*}}`, `{{**}}` or literal"
                    ));
                }
                p => segments.push(Some(p.to_owned())),
            }
        }
        Ok(PathMatch::Template { segments, rest })
    }

    /// Whether a normalized path matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Plain(m) => m.matches(Some(path)),
            PathMatch::Template { segments, rest } => {
                let got: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                if got.len() < segments.len() || (!rest && got.len() != segments.len()) {
                    return false;
                }
                segments.iter().zip(&got).all(|(want, g)| match want {
                    None => !g.is_empty(),
                    Some(w) => w == g,
                })
            }
        }
    }
}

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
    pub auth: Option<&'a crate::jwt::RequestAuth>,
}

/// HTTP fields of one `to[].operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct HttpOperation {
    pub hosts: Vec<StringMatch>,
    pub not_hosts: Vec<StringMatch>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<PathMatch>,
    pub not_paths: Vec<PathMatch>,
}

/// An HTTP `when` condition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HttpCondition {
    /// `request.headers[name]` (lower-case name): values, notValues.
    Header(String, Vec<StringMatch>, Vec<StringMatch>),
    /// `request.auth.principal`: values, notValues.
    RequestPrincipal(Vec<StringMatch>, Vec<StringMatch>),
    /// `request.auth.audiences`: any of the token's audiences.
    Audiences(Vec<StringMatch>, Vec<StringMatch>),
    /// `request.auth.presenter` (`azp`).
    Presenter(Vec<StringMatch>, Vec<StringMatch>),
    /// `request.auth.claims[a][b]`: a string claim, or any element of a string list claim.
    Claim(Vec<String>, Vec<StringMatch>, Vec<StringMatch>),
    /// An attribute this data plane does not provide (`connection.sni`): a DENY rule is
    /// enforced without it, an ALLOW rule using it never matches; the flag says whether
    /// `values` were given.
    Absent(String, bool),
}

fn host_match(m: &StringMatch, host: &str) -> bool {
    let h = host.to_ascii_lowercase();
    match m {
        StringMatch::Exact(e) => e.eq_ignore_ascii_case(&h),
        StringMatch::Prefix(p) => h.starts_with(&p.to_ascii_lowercase()),
        StringMatch::Suffix(s) => h.ends_with(&s.to_ascii_lowercase()),
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
                let claim = r.auth.and_then(|a| a.claim(path));
                let strs: Vec<&str> = match claim {
                    Some(Value::String(s)) => vec![s.as_str()],
                    Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                any_of(v, n, strs.into_iter())
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
        let request_principal = |s: &crate::model::Source| {
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
/// using them never matches, a DENY rule is enforced without them (both fail closed).
pub fn evaluate_conn<'a>(policies: &[&'a Policy], c: &Connection<'_>) -> HttpDecision<'a> {
    decide(policies, |p| p.matches(c))
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
    fn normalization_modes() {
        let d = PathNormalization::DecodeAndMergeSlashes;
        for p in [
            "/admin",
            "//admin",
            "/%2Fadmin",
            "/x/../admin",
            "/./admin",
            "/%61dmin",
            "\\admin",
            "/%5Cadmin",
            "/admin#frag",
        ] {
            assert_eq!(normalize_path(p, d).as_deref(), Some("/admin"), "{p}");
        }
        assert_eq!(
            normalize_path("/ADMIN", d).as_deref(),
            Some("/ADMIN"),
            "case kept"
        );
        assert_eq!(normalize_path("/a/b/", d).as_deref(), Some("/a/b/"));
        assert_eq!(normalize_path("/a/%2e%2e/b", d).as_deref(), Some("/b"));
        assert_eq!(
            normalize_path("/a%20b", d).as_deref(),
            Some("/a%20b"),
            "reserved stays encoded"
        );
        assert_eq!(normalize_path("/../../etc", d).as_deref(), Some("/etc"));
        assert_eq!(normalize_path("/%zz", d), None, "bad escape refused");
        assert_eq!(normalize_path("admin", d), None);
        let base = PathNormalization::Base;
        assert_eq!(normalize_path("//admin", base).as_deref(), Some("//admin"));
        assert_eq!(
            normalize_path("/%2Fadmin", base).as_deref(),
            Some("/%2Fadmin")
        );
        assert_eq!(
            normalize_path("//admin", PathNormalization::MergeSlashes).as_deref(),
            Some("/admin")
        );
        assert_eq!(
            normalize_path("/x/../a", PathNormalization::None).as_deref(),
            Some("/x/../a")
        );
    }

    #[test]
    fn path_matches_and_templates() {
        let m = |s: &str, p: &str| PathMatch::parse(s).unwrap().matches(p);
        assert!(m("/admin*", "/admin"));
        assert!(m("/admin*", "/admin/x"));
        assert!(!m("/admin*", "/ADMIN"));
        assert!(m("*.html", "/a/b.html"));
        assert!(m("/api/{*}/info", "/api/v1/info"));
        assert!(!m("/api/{*}/info", "/api/v1/x/info"));
        assert!(m("/api/{**}", "/api/a/b/c"));
        assert!(m("/api/{**}", "/api"), "{{**}} matches zero segments");
        assert!(PathMatch::parse("/api/{**}/x").is_err());
        assert!(PathMatch::parse("/api/v{*}").is_err());
    }

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
}
