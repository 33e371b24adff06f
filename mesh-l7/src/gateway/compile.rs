//! `HTTPRoute` → [`RouteTable`]: each rule's filters and backends are compiled once, then
//! each of its matches becomes a route keyed by its precedence; the routes are sorted by it.

use http::{HeaderName, HeaderValue};
use mesh_authz::istio::FieldError;
use regex::Regex;

use super::{BackendRef, FilterSpec, HeaderModifier, HeaderPair, HttpRouteSpec, MatchSpec};
use super::{PathModifier, RuleSpec};
use crate::route::fields::{header_name, port};
use crate::route::{
    Action, Destination, HeaderOps, HeaderRules, HttpRoute, RequestMatch, Rewrite, RouteTable,
    StringMatch,
};

/// Gateway API match precedence, smallest first: path kind (exact, prefix, regex), longer
/// prefix, method present, more headers, more query parameters, then rule and match order.
type Precedence = (u8, usize, u8, usize, usize, usize, usize);

/// A `urlRewrite`: the new hostname and path modifier.
type UrlRewriteParts = (Option<String>, Option<PathModifier>);

/// What every match of one rule shares.
struct Rule<'a> {
    /// Index in `spec.rules`.
    i: usize,
    /// Field path of the rule (`spec.rules[i]`).
    f: String,
    spec: &'a RuleSpec,
    headers: HeaderRules,
    rewrite: Option<UrlRewriteParts>,
    destinations: Vec<Destination>,
    total: u32,
    mirrors: Vec<crate::resilience::mirror::MirrorPolicy>,
    /// `timeouts.request`, and the retry setting (`retry`, `timeouts.backendRequest`).
    resilience: crate::resilience::retry_gateway::Compiled,
}

/// A compiled `path` match: precedence rank, uri condition, the prefix it matched (for
/// rewrites) and the value it was given.
struct PathMatch {
    rank: u8,
    uri: Option<StringMatch>,
    prefix: Option<String>,
    value: String,
}

impl RouteTable {
    /// Compiles an `HTTPRoute` attached to the service whose host is `host`. `backend(name,
    /// port)` resolves a backend Service of the route's namespace to its host (`None`: no
    /// such service).
    pub fn from_http_route(
        spec: &HttpRouteSpec,
        host: &str,
        backend: impl Fn(&str) -> Option<String>,
    ) -> Result<RouteTable, Vec<FieldError>> {
        let mut errs = Vec::new();
        if !spec.hostnames.is_empty() {
            err(
                &mut errs,
                "spec.hostnames".into(),
                "not supported for routes attached to a Service",
            );
        }
        // (precedence key, route)
        let mut routes: Vec<(Precedence, HttpRoute)> = Vec::new();
        for (i, spec) in spec.rules.iter().enumerate() {
            let rule = rule(i, spec, &backend, &mut errs);
            let default_match = [MatchSpec::default()];
            let matches = if spec.matches.is_empty() {
                &default_match[..]
            } else {
                &spec.matches[..]
            };
            for (j, m) in matches.iter().enumerate() {
                routes.extend(match_route(&rule, j, m, &mut errs));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        routes.sort_by_key(|r| r.0);
        Ok(RouteTable {
            hosts: vec![host.to_ascii_lowercase()],
            routes: routes.into_iter().map(|(_, r)| r).collect(),
        })
    }
}

fn err(errs: &mut Vec<FieldError>, field: String, reason: impl Into<String>) {
    errs.push(FieldError {
        field,
        reason: reason.into(),
    });
}

/// `spec.rules[i]`: its timeouts, filters and backends.
fn rule<'a>(
    i: usize,
    spec: &'a RuleSpec,
    backend: &dyn Fn(&str) -> Option<String>,
    errs: &mut Vec<FieldError>,
) -> Rule<'a> {
    let f = format!("spec.rules[{i}]");
    let resilience = crate::resilience::retry_gateway::compile(
        spec.timeouts.as_ref(),
        spec.retry.as_ref(),
        &f,
        errs,
    );
    let (headers, rewrite) = filters(&spec.filters, &f, errs);
    let mirrors = mirrors(&spec.filters, &f, backend, errs);
    let (destinations, total) = backends(spec, &f, backend, errs);
    Rule {
        i,
        f,
        spec,
        headers,
        rewrite,
        destinations,
        total,
        mirrors,
        resilience,
    }
}

/// The rule's `RequestMirror` filters (at `f`), their backends resolved as its backendRefs.
fn mirrors(
    filters: &[FilterSpec],
    f: &str,
    backend: &dyn Fn(&str) -> Option<String>,
    errs: &mut Vec<FieldError>,
) -> Vec<crate::resilience::mirror::MirrorPolicy> {
    let mirror = |(j, fl): (usize, &FilterSpec), errs: &mut Vec<FieldError>| {
        let m = fl
            .request_mirror
            .as_ref()
            .filter(|_| fl.kind == "RequestMirror")?;
        let dest =
            |bf: &str, errs: &mut Vec<FieldError>| destination(&m.backend_ref, bf, backend, errs);
        crate::resilience::mirror::request_mirror(m, &format!("{f}.filters[{j}]"), dest, errs)
    };
    filters
        .iter()
        .enumerate()
        .filter_map(|x| mirror(x, errs))
        .collect()
}

/// The filters of the rule at `f`: header operations and the URL rewrite.
fn filters(
    filters: &[FilterSpec],
    f: &str,
    errs: &mut Vec<FieldError>,
) -> (HeaderRules, Option<UrlRewriteParts>) {
    let mut headers = HeaderRules::default();
    let mut rewrite = None;
    for (j, fl) in filters.iter().enumerate() {
        let ff = format!("{f}.filters[{j}]");
        match fl.kind.as_str() {
            "RequestHeaderModifier" => match &fl.request_header_modifier {
                Some(m) => {
                    headers.request = modifier(m, &format!("{ff}.requestHeaderModifier"), errs)
                }
                None => err(
                    errs,
                    ff.clone(),
                    "requestHeaderModifier is required for this type",
                ),
            },
            "ResponseHeaderModifier" => match &fl.response_header_modifier {
                Some(m) => {
                    headers.response = modifier(m, &format!("{ff}.responseHeaderModifier"), errs)
                }
                None => err(
                    errs,
                    ff.clone(),
                    "responseHeaderModifier is required for this type",
                ),
            },
            "RequestMirror" => {
                if fl.request_mirror.is_none() {
                    err(errs, ff.clone(), "requestMirror is required for this type");
                }
            }
            "URLRewrite" => match &fl.url_rewrite {
                Some(u) => rewrite = Some((u.hostname.clone(), u.path.clone())),
                None => err(errs, ff.clone(), "urlRewrite is required for this type"),
            },
            o => err(
                errs,
                format!("{ff}.type"),
                format!("{o:?} is not supported yet by this data plane"),
            ),
        }
    }
    (headers, rewrite)
}

/// The weighted destinations of the rule at `f` (weight 0 left out) and their total weight.
fn backends(
    rule: &RuleSpec,
    f: &str,
    backend: &dyn Fn(&str) -> Option<String>,
    errs: &mut Vec<FieldError>,
) -> (Vec<Destination>, u32) {
    let mut destinations: Vec<Destination> = rule
        .backend_refs
        .iter()
        .enumerate()
        .filter_map(|(k, b)| destination(b, &format!("{f}.backendRefs[{k}]"), backend, errs))
        .collect();
    let total: u32 = destinations.iter().map(|d| d.weight).sum();
    if rule.backend_refs.is_empty() {
        err(
            errs,
            format!("{f}.backendRefs"),
            "a rule needs backendRefs (redirects are not supported yet)",
        );
    } else if total == 0 && errs.is_empty() {
        err(errs, format!("{f}.backendRefs"), "weights add up to 0");
    }
    destinations.retain(|d| d.weight > 0);
    (destinations, total)
}

/// The backend at `bf` (`None`: not a Service of the route's namespace, which is reported).
fn destination(
    b: &BackendRef,
    bf: &str,
    backend: &dyn Fn(&str) -> Option<String>,
    errs: &mut Vec<FieldError>,
) -> Option<Destination> {
    if !is_service(&b.group, &b.kind) {
        err(
            errs,
            format!("{bf}.kind"),
            "only Service backends are supported",
        );
        return None;
    }
    if b.namespace.is_some() {
        err(
            errs,
            format!("{bf}.namespace"),
            "not supported: backends are in the route's namespace",
        );
    }
    if b.filters.is_some() {
        err(
            errs,
            format!("{bf}.filters"),
            "not supported yet by this data plane",
        );
    }
    let Some(h) = backend(&b.name) else {
        err(
            errs,
            format!("{bf}.name"),
            format!("no ServiceEntry {:?} in the route's namespace", b.name),
        );
        return None;
    };
    Some(Destination {
        host: h,
        subset: None,
        port: port(b.port, || format!("{bf}.port"), errs),
        weight: b.weight.unwrap_or(1),
        headers: HeaderRules::default(),
    })
}

/// The route of match `j` of `rule`, with its precedence (`None`: its path is invalid, which
/// is reported).
fn match_route(
    rule: &Rule<'_>,
    j: usize,
    m: &MatchSpec,
    errs: &mut Vec<FieldError>,
) -> Option<(Precedence, HttpRoute)> {
    let mf = format!("{}.matches[{j}]", rule.f);
    let path = path_match(m, &mf, errs)?;
    let hdrs: Vec<(HeaderName, StringMatch)> = m
        .headers
        .iter()
        .enumerate()
        .filter_map(|(k, h)| {
            let hf = format!("{mf}.headers[{k}]");
            Some((
                header_name(&h.name, &hf, errs)?,
                value_match(h.kind.as_deref(), &h.value, &hf, errs)?,
            ))
        })
        .collect();
    let query: Vec<(String, StringMatch)> = m
        .query_params
        .iter()
        .enumerate()
        .filter_map(|(k, q)| {
            Some((
                q.name.clone(),
                value_match(
                    q.kind.as_deref(),
                    &q.value,
                    &format!("{mf}.queryParams[{k}]"),
                    errs,
                )?,
            ))
        })
        .collect();
    let (uri_rewrite, uri_prefix) = uri_rewrite(rule, &path, errs);
    let key = (
        path.rank,
        usize::MAX - path.prefix.as_ref().map_or(path.value.len(), String::len),
        u8::from(m.method.is_none()),
        usize::MAX - hdrs.len(),
        usize::MAX - query.len(),
        rule.i,
        j,
    );
    let method = m.method.clone().map(StringMatch::Exact);
    let route = HttpRoute {
        name: rule
            .spec
            .name
            .clone()
            .unwrap_or_else(|| format!("rules[{}]", rule.i)),
        matches: vec![RequestMatch {
            uri: path.uri,
            method,
            headers: hdrs,
            query,
            ..RequestMatch::default()
        }],
        action: Action::Forward {
            destinations: rule.destinations.clone(),
            total: rule.total,
            rewrite: rewrite(rule, uri_rewrite),
        },
        headers: rule.headers.clone(),
        timeout: rule.resilience.0,
        retries: rule.resilience.1.clone(),
        uri_prefixes: vec![uri_prefix],
        fault: None,
        mirrors: rule.mirrors.clone(),
    };
    Some((key, route))
}

/// The route's `rewrite`: the new path (empty: `/`) and the rule's new hostname, if either.
fn rewrite(rule: &Rule<'_>, uri_rewrite: Option<String>) -> Option<Rewrite> {
    let hostname = rule.rewrite.as_ref().and_then(|(h, _)| h.clone());
    if uri_rewrite.is_none() && hostname.is_none() {
        return None;
    }
    Some(Rewrite {
        uri: uri_rewrite.map(|u| if u.is_empty() { "/".into() } else { u }),
        authority: hostname,
    })
}

/// The `path` of the match at `mf` (default: prefix `/`); `None` when invalid (reported).
fn path_match(m: &MatchSpec, mf: &str, errs: &mut Vec<FieldError>) -> Option<PathMatch> {
    let path = m.path.clone().unwrap_or_default();
    let value = path.value.clone().unwrap_or_else(|| "/".into());
    let (rank, uri, prefix) = match path.kind.as_deref().unwrap_or("PathPrefix") {
        "Exact" => (0u8, Some(StringMatch::Exact(value.clone())), None),
        "PathPrefix" => {
            let v = value.trim_end_matches('/');
            if v.is_empty() {
                (1, None, Some("/".to_owned()))
            } else {
                // Whole path elements only.
                match Regex::new(&format!("^{}(?:/.*)?$", regex::escape(v))) {
                    Ok(r) => (1, Some(StringMatch::Regex(r)), Some(v.to_owned())),
                    Err(e) => {
                        err(errs, format!("{mf}.path.value"), e.to_string());
                        return None;
                    }
                }
            }
        }
        "RegularExpression" => {
            let m = value_match(
                Some("RegularExpression"),
                &value,
                &format!("{mf}.path"),
                errs,
            )?;
            (2, Some(m), None)
        }
        o => {
            err(
                errs,
                format!("{mf}.path.type"),
                format!("{o:?}: expected Exact, PathPrefix or RegularExpression"),
            );
            return None;
        }
    };
    Some(PathMatch {
        rank,
        uri,
        prefix,
        value,
    })
}

/// The rule's path rewrite for one match: the new path (prefix) and the prefix it replaces.
/// `ReplacePrefixMatch` replaces the matched prefix; `ReplaceFullPath` the whole path.
fn uri_rewrite(
    rule: &Rule<'_>,
    path: &PathMatch,
    errs: &mut Vec<FieldError>,
) -> (Option<String>, Option<String>) {
    match rule.rewrite.as_ref().and_then(|(_, p)| p.as_ref()) {
        Some(p) if p.kind == "ReplacePrefixMatch" => {
            if path.rank != 1 {
                err(
                    errs,
                    format!("{}.filters", rule.f),
                    "ReplacePrefixMatch needs a PathPrefix match",
                );
            }
            let new = p.replace_prefix_match.clone().unwrap_or_else(|| "/".into());
            // `/` as the new prefix of `/foo/bar` gives `/bar`, not `//bar`.
            let new = if new == "/" {
                String::new()
            } else {
                new.trim_end_matches('/').to_owned()
            };
            (Some(new), path.prefix.clone())
        }
        Some(p) if p.kind == "ReplaceFullPath" => (p.replace_full_path.clone(), None),
        Some(p) => {
            err(
                errs,
                format!("{}.filters", rule.f),
                format!(
                    "{:?}: expected ReplaceFullPath or ReplacePrefixMatch",
                    p.kind
                ),
            );
            (None, None)
        }
        None => (None, path.prefix.clone()),
    }
}

fn is_service(group: &Option<String>, kind: &Option<String>) -> bool {
    matches!(group.as_deref(), None | Some("") | Some("core"))
        && matches!(kind.as_deref(), None | Some("Service"))
}
fn modifier(m: &HeaderModifier, field: &str, errs: &mut Vec<FieldError>) -> HeaderOps {
    let pairs = |v: &[HeaderPair], kind: &str, errs: &mut Vec<FieldError>| {
        v.iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let f = format!("{field}.{kind}[{i}]");
                let n = header_name(&p.name, &f, errs)?;
                match HeaderValue::from_str(&p.value) {
                    Ok(v) => Some((n, v)),
                    Err(_) => {
                        err(errs, f, "not a valid header value");
                        None
                    }
                }
            })
            .collect::<Vec<(HeaderName, HeaderValue)>>()
    };
    let set = pairs(&m.set, "set", errs);
    let add = pairs(&m.add, "add", errs);
    let remove = m
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, n)| header_name(n, &format!("{field}.remove[{i}]"), errs))
        .collect();
    HeaderOps::from_parts(set, add, remove)
}

fn value_match(
    kind: Option<&str>,
    value: &str,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Option<StringMatch> {
    match kind.unwrap_or("Exact") {
        "Exact" => Some(StringMatch::Exact(value.to_owned())),
        "RegularExpression" => match Regex::new(&format!("^(?:{value})$")) {
            Ok(r) => Some(StringMatch::Regex(r)),
            Err(e) => {
                err(
                    errs,
                    format!("{field}.value"),
                    format!("invalid regular expression: {e}"),
                );
                None
            }
        },
        o => {
            err(
                errs,
                format!("{field}.type"),
                format!("{o:?}: expected Exact or RegularExpression"),
            );
            None
        }
    }
}
