//! Compiled routes and the routing decision (Istio semantics: routes in order, the first whose
//! any `match` holds wins; within a match every given condition must hold; weights split
//! requests among destinations).

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;

use crate::FieldError;
use crate::istio::{HeaderOpsSpec, HeadersSpec, StringMatchSpec, VirtualServiceSpec};

/// A compiled string match.
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole-value regular expression (anchored at compile time).
    Regex(Regex),
}

impl StringMatch {
    /// Whether `v` matches.
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(e) => v == e,
            StringMatch::Prefix(p) => v.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(v),
        }
    }

    fn lower(self) -> StringMatch {
        match self {
            StringMatch::Exact(e) => StringMatch::Exact(e.to_ascii_lowercase()),
            StringMatch::Prefix(p) => StringMatch::Prefix(p.to_ascii_lowercase()),
            r => r,
        }
    }
}

/// Header operations: `set` replaces, `add` appends, `remove` deletes.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Operations from their parts.
    pub(crate) fn from_parts(
        set: Vec<(HeaderName, HeaderValue)>,
        add: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    ) -> HeaderOps {
        HeaderOps { set, add, remove }
    }

    /// Applies the operations to `h`.
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Request and response header operations.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// On the request, before forwarding.
    pub request: HeaderOps,
    /// On the response, before returning it.
    pub response: HeaderOps,
}

/// A weighted destination.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Service host.
    pub host: String,
    /// Subset (DestinationRule).
    pub subset: Option<String>,
    /// Service port.
    pub port: Option<u16>,
    /// Relative weight.
    pub weight: u32,
    /// Its header operations.
    pub headers: HeaderRules,
}

/// A `rewrite`.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Replacement for the matched prefix (or the whole path).
    pub uri: Option<String>,
    /// New authority.
    pub authority: Option<String>,
}

/// A `redirect`.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// New path.
    pub uri: Option<String>,
    /// New authority.
    pub authority: Option<String>,
    /// Status code.
    pub status: u16,
}

/// What a route does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward to one of the weighted destinations, after the rewrite.
    Forward {
        /// Destinations (weights > 0).
        destinations: Vec<Destination>,
        /// Total weight.
        total: u32,
        /// Rewrite.
        rewrite: Option<Rewrite>,
    },
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    DirectResponse {
        /// Status.
        status: u16,
        /// Body.
        body: String,
    },
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RequestMatch {
    pub(crate) uri: Option<StringMatch>,
    pub(crate) ignore_uri_case: bool,
    pub(crate) method: Option<StringMatch>,
    pub(crate) authority: Option<StringMatch>,
    pub(crate) headers: Vec<(HeaderName, StringMatch)>,
    pub(crate) without_headers: Vec<(HeaderName, StringMatch)>,
    pub(crate) query: Vec<(String, StringMatch)>,
    pub(crate) port: Option<u16>,
}

/// One compiled `http[]` route.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// Name, or `http[i]`.
    pub name: String,
    pub(crate) matches: Vec<RequestMatch>,
    /// What it does.
    pub action: Action,
    /// Route-level header operations.
    pub headers: HeaderRules,
    /// Request timeout, if set.
    pub timeout: Option<Duration>,
    /// The uri match that selected it, for prefix rewrites (first match's, by index).
    pub(crate) uri_prefixes: Vec<Option<String>>,
}

/// The facts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Method.
    pub method: &'a str,
    /// Path with the query (`/a/b?x=1`).
    pub path: &'a str,
    /// Authority (Host).
    pub authority: &'a str,
    /// The service port it arrived for.
    pub port: u16,
    /// Headers.
    pub headers: &'a HeaderMap,
}

impl RequestMatch {
    fn matches(&self, r: &RequestFacts<'_>) -> bool {
        let (path, query) = r.path.split_once('?').unwrap_or((r.path, ""));
        if let Some(m) = &self.uri {
            let ok = if self.ignore_uri_case {
                m.matches(&path.to_ascii_lowercase())
            } else {
                m.matches(path)
            };
            if !ok {
                return false;
            }
        }
        if self.method.as_ref().is_some_and(|m| !m.matches(r.method)) {
            return false;
        }
        if self
            .authority
            .as_ref()
            .is_some_and(|m| !m.matches(r.authority))
        {
            return false;
        }
        if self.port.is_some_and(|p| p != r.port) {
            return false;
        }
        let header = |n: &HeaderName| r.headers.get(n).and_then(|v| v.to_str().ok());
        if !self
            .headers
            .iter()
            .all(|(n, m)| header(n).is_some_and(|v| m.matches(v)))
        {
            return false;
        }
        if self
            .without_headers
            .iter()
            .any(|(n, m)| header(n).is_some_and(|v| m.matches(v)))
        {
            return false;
        }
        self.query.iter().all(|(k, m)| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .any(|(qk, qv)| qk == k && m.matches(qv))
        })
    }
}

impl HttpRoute {
    /// Picks a destination with `r` (any random number): weights split requests.
    pub fn pick(&self, r: u32) -> Option<&Destination> {
        let Action::Forward { destinations, .. } = &self.action else {
            return None;
        };
        destinations.get(self.pick_index(r)?)
    }

    /// The index (in the `Forward` destinations) of the destination [`HttpRoute::pick`]
    /// picks with `r`.
    pub fn pick_index(&self, r: u32) -> Option<usize> {
        let Action::Forward {
            destinations,
            total,
            ..
        } = &self.action
        else {
            return None;
        };
        if *total == 0 || destinations.is_empty() {
            return None;
        }
        let mut x = r % total;
        for (i, d) in destinations.iter().enumerate() {
            if x < d.weight {
                return Some(i);
            }
            x -= d.weight;
        }
        Some(destinations.len() - 1)
    }

    /// The path after this route's `rewrite.uri` (Istio: replaces the matched prefix, or the
    /// whole path when the match was not a prefix); the query is kept.
    pub fn rewrite_path(&self, path: &str) -> Option<String> {
        let Action::Forward {
            rewrite: Some(Rewrite { uri: Some(new), .. }),
            ..
        } = &self.action
        else {
            return None;
        };
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let prefix = self
            .uri_prefixes
            .iter()
            .flatten()
            .find(|pre| p.starts_with(pre.as_str()));
        let mut out = match prefix {
            // `/` replacing `/v2` in `/v2/page` gives `/page`, not `//page`.
            Some(pre) => {
                let rest = &p[pre.len()..];
                if new.ends_with('/') && rest.starts_with('/') {
                    format!("{new}{}", &rest[1..])
                } else {
                    format!("{new}{rest}")
                }
            }
            None => new.clone(),
        };
        if let Some(q) = q {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

/// The routes of one `VirtualService`, for its hosts.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Hosts (lower case).
    pub hosts: Vec<String>,
    /// Routes in order.
    pub routes: Vec<HttpRoute>,
}

fn string_match(
    s: &StringMatchSpec,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Option<StringMatch> {
    let n = usize::from(s.exact.is_some())
        + usize::from(s.prefix.is_some())
        + usize::from(s.regex.is_some());
    if n != 1 {
        errs.push(FieldError {
            field: field.to_owned(),
            reason: "set exactly one of exact, prefix, regex".into(),
        });
        return None;
    }
    if let Some(e) = &s.exact {
        return Some(StringMatch::Exact(e.clone()));
    }
    if let Some(p) = &s.prefix {
        return Some(StringMatch::Prefix(p.clone()));
    }
    let re = s.regex.as_deref().unwrap_or_default();
    match Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => Some(StringMatch::Regex(r)),
        Err(e) => {
            errs.push(FieldError {
                field: format!("{field}.regex"),
                reason: format!("invalid regular expression: {e}"),
            });
            None
        }
    }
}

pub(crate) fn header_name(n: &str, field: &str, errs: &mut Vec<FieldError>) -> Option<HeaderName> {
    match HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errs.push(FieldError {
                field: field.to_owned(),
                reason: format!("{n:?} is not a header name"),
            });
            None
        }
    }
}

fn ops(spec: Option<&HeaderOpsSpec>, field: &str, errs: &mut Vec<FieldError>) -> HeaderOps {
    let mut out = HeaderOps::default();
    let Some(spec) = spec else { return out };
    let pairs = |m: &BTreeMap<String, String>, kind: &str, errs: &mut Vec<FieldError>| {
        let mut v = Vec::new();
        for (k, val) in m {
            let f = format!("{field}.{kind}.{k}");
            let (Some(n), Ok(hv)) = (header_name(k, &f, errs), HeaderValue::from_str(val)) else {
                errs.push(FieldError {
                    field: f,
                    reason: "not a valid header".into(),
                });
                continue;
            };
            v.push((n, hv));
        }
        v
    };
    out.set = pairs(&spec.set, "set", errs);
    out.add = pairs(&spec.add, "add", errs);
    out.remove = spec
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, n)| header_name(n, &format!("{field}.remove[{i}]"), errs))
        .collect();
    out
}

fn rules(spec: Option<&HeadersSpec>, field: &str, errs: &mut Vec<FieldError>) -> HeaderRules {
    HeaderRules {
        request: ops(
            spec.and_then(|h| h.request.as_ref()),
            &format!("{field}.request"),
            errs,
        ),
        response: ops(
            spec.and_then(|h| h.response.as_ref()),
            &format!("{field}.response"),
            errs,
        ),
    }
}

fn unsupported(present: bool, field: &str, errs: &mut Vec<FieldError>) {
    if present {
        errs.push(FieldError {
            field: field.to_owned(),
            reason: "not supported yet by this data plane".into(),
        });
    }
}

fn parse_timeout(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(secs) = s.strip_suffix('s') {
        return secs
            .parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
            .map(Duration::from_secs_f64);
    }
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60));
    }
    if let Some(h) = s.strip_suffix('h') {
        return h.parse::<u64>().ok().map(|h| Duration::from_secs(h * 3600));
    }
    None
}

impl RouteTable {
    /// Compiles a `VirtualService` spec; every problem is returned with its field path.
    pub fn compile(vs: &VirtualServiceSpec) -> Result<RouteTable, Vec<FieldError>> {
        let mut errs = Vec::new();
        unsupported(vs.tcp.is_some(), "spec.tcp", &mut errs);
        unsupported(vs.tls.is_some(), "spec.tls", &mut errs);
        unsupported(vs.export_to.is_some(), "spec.exportTo", &mut errs);
        if vs.hosts.is_empty() {
            errs.push(FieldError {
                field: "spec.hosts".into(),
                reason: "at least one host is required".into(),
            });
        }
        for (i, g) in vs.gateways.iter().enumerate() {
            if g != "mesh" {
                errs.push(FieldError {
                    field: format!("spec.gateways[{i}]"),
                    reason: format!("{g:?}: only mesh traffic (`mesh`) is supported"),
                });
            }
        }
        let mut routes = Vec::new();
        for (i, h) in vs.http.iter().enumerate() {
            let f = format!("spec.http[{i}]");
            unsupported(h.retries.is_some(), &format!("{f}.retries"), &mut errs);
            unsupported(h.fault.is_some(), &format!("{f}.fault"), &mut errs);
            unsupported(h.mirror.is_some(), &format!("{f}.mirror"), &mut errs);
            unsupported(
                h.mirror_percentage.is_some(),
                &format!("{f}.mirrorPercentage"),
                &mut errs,
            );
            unsupported(
                h.cors_policy.is_some(),
                &format!("{f}.corsPolicy"),
                &mut errs,
            );
            let mut matches = Vec::new();
            let mut uri_prefixes = Vec::new();
            for (j, m) in h.matches.iter().enumerate() {
                let mf = format!("{f}.match[{j}]");
                unsupported(m.scheme.is_some(), &format!("{mf}.scheme"), &mut errs);
                unsupported(m.gateways.is_some(), &format!("{mf}.gateways"), &mut errs);
                unsupported(
                    m.source_namespace.is_some(),
                    &format!("{mf}.sourceNamespace"),
                    &mut errs,
                );
                unsupported(
                    m.stat_prefix.is_some(),
                    &format!("{mf}.statPrefix"),
                    &mut errs,
                );
                unsupported(
                    !m.source_labels.is_empty(),
                    &format!("{mf}.sourceLabels"),
                    &mut errs,
                );
                let mut uri = m
                    .uri
                    .as_ref()
                    .and_then(|u| string_match(u, &format!("{mf}.uri"), &mut errs));
                if m.ignore_uri_case {
                    uri = uri.map(StringMatch::lower);
                }
                uri_prefixes.push(m.uri.as_ref().and_then(|u| u.prefix.clone()));
                let hdrs = |map: &BTreeMap<String, StringMatchSpec>,
                            kind: &str,
                            errs: &mut Vec<FieldError>| {
                    map.iter()
                        .filter_map(|(k, v)| {
                            let hf = format!("{mf}.{kind}.{k}");
                            Some((header_name(k, &hf, errs)?, string_match(v, &hf, errs)?))
                        })
                        .collect::<Vec<_>>()
                };
                let port = match m.port {
                    Some(p) if (1..=65535).contains(&p) => Some(p as u16),
                    Some(p) => {
                        errs.push(FieldError {
                            field: format!("{mf}.port"),
                            reason: format!("{p} is not a port"),
                        });
                        None
                    }
                    None => None,
                };
                matches.push(RequestMatch {
                    uri,
                    ignore_uri_case: m.ignore_uri_case,
                    method: m
                        .method
                        .as_ref()
                        .and_then(|x| string_match(x, &format!("{mf}.method"), &mut errs)),
                    authority: m
                        .authority
                        .as_ref()
                        .and_then(|x| string_match(x, &format!("{mf}.authority"), &mut errs)),
                    headers: hdrs(&m.headers, "headers", &mut errs),
                    without_headers: hdrs(&m.without_headers, "withoutHeaders", &mut errs),
                    query: m
                        .query_params
                        .iter()
                        .filter_map(|(k, v)| {
                            Some((
                                k.clone(),
                                string_match(v, &format!("{mf}.queryParams.{k}"), &mut errs)?,
                            ))
                        })
                        .collect(),
                    port,
                });
            }
            let kinds = usize::from(!h.route.is_empty())
                + usize::from(h.redirect.is_some())
                + usize::from(h.direct_response.is_some());
            if kinds != 1 {
                errs.push(FieldError {
                    field: f.clone(),
                    reason: "set exactly one of route, redirect, directResponse".into(),
                });
                continue;
            }
            let action = if let Some(r) = &h.redirect {
                let status = r.redirect_code.unwrap_or(301);
                if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                    errs.push(FieldError {
                        field: format!("{f}.redirect.redirectCode"),
                        reason: format!("{status} is not a redirect status"),
                    });
                }
                unsupported(
                    r.scheme.is_some(),
                    &format!("{f}.redirect.scheme"),
                    &mut errs,
                );
                unsupported(r.port.is_some(), &format!("{f}.redirect.port"), &mut errs);
                Action::Redirect(Redirect {
                    uri: r.uri.clone(),
                    authority: r.authority.clone(),
                    status: status as u16,
                })
            } else if let Some(d) = &h.direct_response {
                if !(200..=599).contains(&d.status) {
                    errs.push(FieldError {
                        field: format!("{f}.directResponse.status"),
                        reason: format!("{} is not an HTTP status", d.status),
                    });
                }
                unsupported(
                    d.body.as_ref().is_some_and(|b| b.bytes.is_some()),
                    &format!("{f}.directResponse.body.bytes"),
                    &mut errs,
                );
                Action::DirectResponse {
                    status: d.status as u16,
                    body: d
                        .body
                        .as_ref()
                        .and_then(|b| b.string.clone())
                        .unwrap_or_default(),
                }
            } else {
                let single = h.route.len() == 1;
                let mut destinations = Vec::new();
                for (k, r) in h.route.iter().enumerate() {
                    let rf = format!("{f}.route[{k}]");
                    let weight = r.weight.unwrap_or(if single { 100 } else { 0 });
                    let port = match r.destination.port.as_ref().map(|p| p.number) {
                        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
                        Some(p) => {
                            errs.push(FieldError {
                                field: format!("{rf}.destination.port.number"),
                                reason: format!("{p} is not a port"),
                            });
                            None
                        }
                        None => None,
                    };
                    destinations.push(Destination {
                        host: r.destination.host.to_ascii_lowercase(),
                        subset: r.destination.subset.clone(),
                        port,
                        weight,
                        headers: rules(r.headers.as_ref(), &format!("{rf}.headers"), &mut errs),
                    });
                }
                let total: u32 = destinations.iter().map(|d| d.weight).sum();
                if total == 0 {
                    errs.push(FieldError {
                        field: format!("{f}.route"),
                        reason: "weights add up to 0".into(),
                    });
                }
                destinations.retain(|d| d.weight > 0);
                Action::Forward {
                    destinations,
                    total,
                    rewrite: h.rewrite.as_ref().map(|r| {
                        unsupported(
                            r.uri_regex_rewrite.is_some(),
                            &format!("{f}.rewrite.uriRegexRewrite"),
                            &mut errs,
                        );
                        Rewrite {
                            uri: r.uri.clone(),
                            authority: r.authority.clone(),
                        }
                    }),
                }
            };
            let timeout = match &h.timeout {
                Some(t) => match parse_timeout(t) {
                    Some(d) => Some(d),
                    None => {
                        errs.push(FieldError {
                            field: format!("{f}.timeout"),
                            reason: format!("{t:?} is not a duration (e.g. 1.5s, 300ms)"),
                        });
                        None
                    }
                },
                None => None,
            };
            routes.push(HttpRoute {
                name: h.name.clone().unwrap_or_else(|| format!("http[{i}]")),
                matches,
                action,
                headers: rules(h.headers.as_ref(), &format!("{f}.headers"), &mut errs),
                timeout,
                uri_prefixes,
            });
        }
        if errs.is_empty() {
            Ok(RouteTable {
                hosts: vs.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                routes,
            })
        } else {
            Err(errs)
        }
    }

    /// The first route that matches `r` (none: no route applies, e.g. send to the addressed
    /// service as is).
    pub fn select(&self, r: &RequestFacts<'_>) -> Option<&HttpRoute> {
        self.routes.get(self.select_index(r)?)
    }

    /// The index in [`RouteTable::routes`] of the route [`RouteTable::select`] selects.
    pub fn select_index(&self, r: &RequestFacts<'_>) -> Option<usize> {
        self.routes.iter().position(|route| {
            route.matches.is_empty() || route.matches.iter().any(|m| m.matches(r))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(json: &str) -> RouteTable {
        RouteTable::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    fn facts<'a>(method: &'a str, path: &'a str, h: &'a HeaderMap) -> RequestFacts<'a> {
        RequestFacts {
            method,
            path,
            authority: "svc",
            port: 80,
            headers: h,
        }
    }

    #[test]
    fn first_match_wins_and_conditions_and() {
        let t = table(
            r#"{"hosts": ["svc"], "http": [
            {"name": "a", "match": [{"uri": {"prefix": "/api"}, "method": {"exact": "POST"}}], "route": [{"destination": {"host": "a"}}]},
            {"name": "b", "match": [{"uri": {"regex": "/v[0-9]+/.*"}}, {"queryParams": {"debug": {"exact": "1"}}}], "route": [{"destination": {"host": "b"}}]},
            {"name": "c", "match": [{"headers": {"X-User": {"exact": "tester"}}, "withoutHeaders": {"x-skip": {"prefix": ""}}}], "directResponse": {"status": 418, "body": {"string": "teapot"}}},
            {"name": "d", "route": [{"destination": {"host": "d"}}]}
        ]}"#,
        );
        let h = HeaderMap::new();
        let name =
            |m: &str, p: &str, h: &HeaderMap| t.select(&facts(m, p, h)).unwrap().name.clone();
        assert_eq!(name("POST", "/api/x", &h), "a");
        assert_eq!(name("GET", "/api/x", &h), "d", "method must match too");
        assert_eq!(name("GET", "/v2/x", &h), "b");
        assert_eq!(name("GET", "/xv2/x", &h), "d", "regex is anchored");
        assert_eq!(name("GET", "/x?a=1&debug=1", &h), "b");
        let mut tester = HeaderMap::new();
        tester.insert("x-user", "tester".parse().unwrap());
        assert_eq!(name("GET", "/", &tester), "c");
        tester.insert("x-skip", "1".parse().unwrap());
        assert_eq!(name("GET", "/", &tester), "d", "withoutHeaders");
    }

    #[test]
    fn weights_split_and_rewrite_keeps_the_rest() {
        let t = table(
            r#"{"hosts": ["svc"], "http": [{"match": [{"uri": {"prefix": "/old"}}], "rewrite": {"uri": "/new"},
              "route": [{"destination": {"host": "svc", "subset": "v1"}, "weight": 80}, {"destination": {"host": "svc", "subset": "v2"}, "weight": 20}]}]}"#,
        );
        let h = HeaderMap::new();
        let r = t.select(&facts("GET", "/old/x?q=1", &h)).unwrap();
        let v2 = (0..1000u32)
            .filter(|i| r.pick(*i).unwrap().subset.as_deref() == Some("v2"))
            .count();
        assert_eq!(v2, 200);
        assert_eq!(r.rewrite_path("/old/x?q=1").as_deref(), Some("/new/x?q=1"));
    }

    #[test]
    fn unsupported_fields_are_named() {
        let vs = serde_json::from_str(
            r#"{"hosts": ["svc"], "http": [{"route": [{"destination": {"host": "a"}}], "retries": {"attempts": 3}, "fault": {}}], "tcp": []}"#,
        )
        .unwrap();
        let e = RouteTable::compile(&vs).unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.tcp", "spec.http[0].retries", "spec.http[0].fault"]
        );
        let vs = serde_json::from_str(r#"{"hosts": ["svc"], "http": [{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"host": "a"}}]}]}"#).unwrap();
        let e = RouteTable::compile(&vs).unwrap_err();
        assert_eq!(e[0].field, "spec.http[0].match[0].uri.regex");
        assert!(
            serde_json::from_str::<VirtualServiceSpec>(r#"{"hosts": [], "bogus": 1}"#).is_err()
        );
    }
}
