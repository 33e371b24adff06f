//! Compiled routes and the routing decision (Istio semantics: routes in order, the first whose
//! any `match` holds wins; within a match every given condition must hold; weights split
//! requests among destinations).

mod compile;
pub(crate) mod dest;
pub(crate) mod fields;

use std::time::Duration;

use http::{HeaderMap, HeaderName};
use regex::Regex;

pub use self::dest::{Destination, HeaderOps, HeaderRules};

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
    /// Retries: the route's policy, none, or the mesh's default.
    pub retries: crate::resilience::retry::RetrySetting,
    /// The uri match that selected it, for prefix rewrites (first match's, by index).
    pub(crate) uri_prefixes: Vec<Option<String>>,
    /// Fault injection, if set.
    pub fault: Option<crate::resilience::fault::FaultPolicy>,
    /// Mirrors (empty: none).
    pub mirrors: Vec<crate::resilience::mirror::MirrorPolicy>,
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

impl RouteTable {
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
    use crate::istio::VirtualServiceSpec;

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
            r#"{"hosts": ["svc"], "http": [{"route": [{"destination": {"host": "a"}}], "corsPolicy": {}, "fault": {}}], "tcp": []}"#,
        )
        .unwrap();
        let e = RouteTable::compile(&vs).unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.tcp", "spec.http[0].corsPolicy", "spec.http[0].fault"]
        );
        let vs = serde_json::from_str(r#"{"hosts": ["svc"], "http": [{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"host": "a"}}]}]}"#).unwrap();
        let e = RouteTable::compile(&vs).unwrap_err();
        assert_eq!(e[0].field, "spec.http[0].match[0].uri.regex");
        assert!(
            serde_json::from_str::<VirtualServiceSpec>(r#"{"hosts": [], "bogus": 1}"#).is_err()
        );
    }

    #[test]
    fn match_errors_keep_their_order() {
        let vs = serde_json::from_str(
            r#"{"hosts": ["svc"], "http": [{"match": [{"uri": {"regex": "("}, "port": 0, "method": {"regex": "("}, "headers": {"x-a": {}}}],
               "route": [{"destination": {"host": "a", "port": {"number": 70000}}}], "timeout": "soon"}]}"#,
        )
        .unwrap();
        let e = RouteTable::compile(&vs).unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.http[0].match[0].uri.regex",
                "spec.http[0].match[0].port",
                "spec.http[0].match[0].method.regex",
                "spec.http[0].match[0].headers.x-a",
                "spec.http[0].route[0].destination.port.number",
                "spec.http[0].timeout",
            ]
        );
        assert_eq!(e[1].reason, "0 is not a port");
        assert_eq!(e[5].reason, "\"soon\" is not a duration (e.g. 1.5s, 300ms)");
    }
}
