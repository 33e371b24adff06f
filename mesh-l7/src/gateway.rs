//! Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1) attached to a Service (GAMMA mesh
//! routing), compiled into the same [`RouteTable`] as a `VirtualService`. Gateway API orders
//! matches by precedence, not by position: an `Exact` path before a `PathPrefix`, a longer
//! prefix first, then a method match, then more header and query matches; a path prefix
//! matches whole path elements (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`).

use http::{HeaderName, HeaderValue};
use regex::Regex;
use serde::Deserialize;

use crate::FieldError;
use crate::route::{
    Action, Destination, HeaderOps, HeaderRules, HttpRoute, RequestMatch, Rewrite, RouteTable,
    StringMatch, header_name,
};

/// `spec` of an `HTTPRoute`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Services (mesh) this route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Not supported for mesh routes.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// `parentRefs[]` / `backendRefs[]` common fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// `""` (core) for a Service.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name (in the route's namespace).
    pub name: String,
    /// Not supported.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Not supported yet.
    #[serde(default)]
    pub port: Option<u32>,
    /// Not supported.
    #[serde(default)]
    pub section_name: Option<String>,
}

/// `rules[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches (none: every request).
    #[serde(default)]
    pub matches: Vec<MatchSpec>,
    /// Filters.
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Not supported yet.
    #[serde(default)]
    pub timeouts: Option<serde::de::IgnoredAny>,
}

/// `matches[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    /// Path.
    #[serde(default)]
    pub path: Option<ValueMatch>,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<NamedMatch>,
    /// Query parameters.
    #[serde(default)]
    pub query_params: Vec<NamedMatch>,
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
}

/// `path`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Value (default `/`).
    #[serde(default)]
    pub value: Option<String>,
}

/// `headers[]` / `queryParams[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `filters[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterSpec {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier` or `URLRewrite`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Request header operations.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// Response header operations.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// URL rewrite.
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    /// Not supported yet.
    #[serde(default)]
    pub request_redirect: Option<serde::de::IgnoredAny>,
    /// Not supported yet.
    #[serde(default)]
    pub request_mirror: Option<serde::de::IgnoredAny>,
    /// Not supported.
    #[serde(default)]
    pub extension_ref: Option<serde::de::IgnoredAny>,
}

/// `requestHeaderModifier` / `responseHeaderModifier`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace.
    #[serde(default)]
    pub set: Vec<HeaderPair>,
    /// Append.
    #[serde(default)]
    pub add: Vec<HeaderPair>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderPair {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `urlRewrite`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    /// New authority.
    #[serde(default)]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// `urlRewrite.path`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// `backendRefs[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// `""` (core) for a Service.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` (default).
    #[serde(default)]
    pub kind: Option<String>,
    /// Service name (in the route's namespace).
    pub name: String,
    /// Not supported.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Not supported yet.
    #[serde(default)]
    pub filters: Option<serde::de::IgnoredAny>,
}

/// Gateway API match precedence, smallest first: path kind (exact, prefix, regex), longer
/// prefix, method present, more headers, more query parameters, then rule and match order.
type Precedence = (u8, usize, u8, usize, usize, usize, usize);

fn err(errs: &mut Vec<FieldError>, field: String, reason: impl Into<String>) {
    errs.push(FieldError {
        field,
        reason: reason.into(),
    });
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
        for (i, rule) in spec.rules.iter().enumerate() {
            let f = format!("spec.rules[{i}]");
            if rule.timeouts.is_some() {
                err(
                    &mut errs,
                    format!("{f}.timeouts"),
                    "not supported yet by this data plane",
                );
            }
            let mut headers = HeaderRules::default();
            let mut rewrite: Option<(Option<String>, Option<PathModifier>)> = None;
            for (j, fl) in rule.filters.iter().enumerate() {
                let ff = format!("{f}.filters[{j}]");
                match fl.kind.as_str() {
                    "RequestHeaderModifier" => match &fl.request_header_modifier {
                        Some(m) => {
                            headers.request =
                                modifier(m, &format!("{ff}.requestHeaderModifier"), &mut errs)
                        }
                        None => err(
                            &mut errs,
                            ff.clone(),
                            "requestHeaderModifier is required for this type",
                        ),
                    },
                    "ResponseHeaderModifier" => match &fl.response_header_modifier {
                        Some(m) => {
                            headers.response =
                                modifier(m, &format!("{ff}.responseHeaderModifier"), &mut errs)
                        }
                        None => err(
                            &mut errs,
                            ff.clone(),
                            "responseHeaderModifier is required for this type",
                        ),
                    },
                    "URLRewrite" => match &fl.url_rewrite {
                        Some(u) => rewrite = Some((u.hostname.clone(), u.path.clone())),
                        None => err(
                            &mut errs,
                            ff.clone(),
                            "urlRewrite is required for this type",
                        ),
                    },
                    o => err(
                        &mut errs,
                        format!("{ff}.type"),
                        format!("{o:?} is not supported yet by this data plane"),
                    ),
                }
            }
            let mut destinations = Vec::new();
            for (k, b) in rule.backend_refs.iter().enumerate() {
                let bf = format!("{f}.backendRefs[{k}]");
                if !is_service(&b.group, &b.kind) {
                    err(
                        &mut errs,
                        format!("{bf}.kind"),
                        "only Service backends are supported",
                    );
                    continue;
                }
                if b.namespace.is_some() {
                    err(
                        &mut errs,
                        format!("{bf}.namespace"),
                        "not supported: backends are in the route's namespace",
                    );
                }
                if b.filters.is_some() {
                    err(
                        &mut errs,
                        format!("{bf}.filters"),
                        "not supported yet by this data plane",
                    );
                }
                let Some(h) = backend(&b.name) else {
                    err(
                        &mut errs,
                        format!("{bf}.name"),
                        format!("no ServiceEntry {:?} in the route's namespace", b.name),
                    );
                    continue;
                };
                let port = match b.port {
                    Some(p) if (1..=65535).contains(&p) => Some(p as u16),
                    Some(p) => {
                        err(
                            &mut errs,
                            format!("{bf}.port"),
                            format!("{p} is not a port"),
                        );
                        None
                    }
                    None => None,
                };
                destinations.push(Destination {
                    host: h,
                    subset: None,
                    port,
                    weight: b.weight.unwrap_or(1),
                    headers: HeaderRules::default(),
                });
            }
            let total: u32 = destinations.iter().map(|d| d.weight).sum();
            if rule.backend_refs.is_empty() {
                err(
                    &mut errs,
                    format!("{f}.backendRefs"),
                    "a rule needs backendRefs (redirects are not supported yet)",
                );
            } else if total == 0 && errs.is_empty() {
                err(&mut errs, format!("{f}.backendRefs"), "weights add up to 0");
            }
            destinations.retain(|d| d.weight > 0);
            let default_match = [MatchSpec::default()];
            let matches = if rule.matches.is_empty() {
                &default_match[..]
            } else {
                &rule.matches[..]
            };
            for (j, m) in matches.iter().enumerate() {
                let mf = format!("{f}.matches[{j}]");
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
                                    err(&mut errs, format!("{mf}.path.value"), e.to_string());
                                    continue;
                                }
                            }
                        }
                    }
                    "RegularExpression" => match value_match(
                        Some("RegularExpression"),
                        &value,
                        &format!("{mf}.path"),
                        &mut errs,
                    ) {
                        Some(m) => (2, Some(m), None),
                        None => continue,
                    },
                    o => {
                        err(
                            &mut errs,
                            format!("{mf}.path.type"),
                            format!("{o:?}: expected Exact, PathPrefix or RegularExpression"),
                        );
                        continue;
                    }
                };
                let hdrs: Vec<(HeaderName, StringMatch)> = m
                    .headers
                    .iter()
                    .enumerate()
                    .filter_map(|(k, h)| {
                        let hf = format!("{mf}.headers[{k}]");
                        Some((
                            header_name(&h.name, &hf, &mut errs)?,
                            value_match(h.kind.as_deref(), &h.value, &hf, &mut errs)?,
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
                                &mut errs,
                            )?,
                        ))
                    })
                    .collect();
                // Rewrite: ReplacePrefixMatch replaces the matched prefix; ReplaceFullPath the
                // whole path.
                let (uri_rewrite, uri_prefix) = match rewrite.as_ref().and_then(|(_, p)| p.as_ref())
                {
                    Some(p) if p.kind == "ReplacePrefixMatch" => {
                        if rank != 1 {
                            err(
                                &mut errs,
                                format!("{f}.filters"),
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
                        (Some(new), prefix.clone())
                    }
                    Some(p) if p.kind == "ReplaceFullPath" => (p.replace_full_path.clone(), None),
                    Some(p) => {
                        err(
                            &mut errs,
                            format!("{f}.filters"),
                            format!(
                                "{:?}: expected ReplaceFullPath or ReplacePrefixMatch",
                                p.kind
                            ),
                        );
                        (None, None)
                    }
                    None => (None, prefix.clone()),
                };
                let key = (
                    rank,
                    usize::MAX - prefix.as_ref().map_or(value.len(), String::len),
                    u8::from(m.method.is_none()),
                    usize::MAX - hdrs.len(),
                    usize::MAX - query.len(),
                    i,
                    j,
                );
                let method = m.method.clone().map(StringMatch::Exact);
                routes.push((
                    key,
                    HttpRoute {
                        name: rule.name.clone().unwrap_or_else(|| format!("rules[{i}]")),
                        matches: vec![RequestMatch {
                            uri,
                            method,
                            headers: hdrs,
                            query,
                            ..RequestMatch::default()
                        }],
                        action: Action::Forward {
                            destinations: destinations.clone(),
                            total,
                            rewrite: if uri_rewrite.is_some()
                                || rewrite.as_ref().is_some_and(|(h, _)| h.is_some())
                            {
                                Some(Rewrite {
                                    uri: uri_rewrite
                                        .map(|u| if u.is_empty() { "/".into() } else { u }),
                                    authority: rewrite.as_ref().and_then(|(h, _)| h.clone()),
                                })
                            } else {
                                None
                            },
                        },
                        headers: headers.clone(),
                        timeout: None,
                        uri_prefixes: vec![uri_prefix],
                    },
                ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestFacts;

    fn table(yaml_json: &str) -> RouteTable {
        let spec: HttpRouteSpec = serde_json::from_str(yaml_json).unwrap();
        RouteTable::from_http_route(&spec, "web.ns.svc", |n| Some(format!("{n}.ns.svc"))).unwrap()
    }

    #[test]
    fn precedence_and_element_prefixes() {
        let t = table(
            r#"{"parentRefs": [{"kind": "Service", "name": "web"}], "rules": [
              {"name": "catch-all", "backendRefs": [{"name": "v1"}]},
              {"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": [{"name": "v2"}]},
              {"name": "api-exact", "matches": [{"path": {"type": "Exact", "value": "/api/health"}}], "backendRefs": [{"name": "v3"}]},
              {"name": "rewrite", "matches": [{"path": {"type": "PathPrefix", "value": "/old/"}}],
               "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}],
               "backendRefs": [{"name": "v1"}]}
            ]}"#,
        );
        let h = http::HeaderMap::new();
        let pick = |p: &str| {
            let r = t
                .select(&RequestFacts {
                    method: "GET",
                    path: p,
                    authority: "web",
                    port: 80,
                    headers: &h,
                })
                .unwrap();
            (
                r.name.clone(),
                r.pick(0).unwrap().host.clone(),
                r.rewrite_path(p),
            )
        };
        assert_eq!(
            pick("/api/health").0,
            "api-exact",
            "Exact beats a prefix declared earlier"
        );
        assert_eq!(pick("/api/x").0, "api");
        assert_eq!(pick("/api").0, "api");
        assert_eq!(
            pick("/apix").0,
            "catch-all",
            "prefixes match whole elements"
        );
        assert_eq!(pick("/").1, "v1.ns.svc");
        assert_eq!(pick("/old/page?q=1").2.as_deref(), Some("/new/page?q=1"));
    }

    #[test]
    fn unsupported_filters_and_backends_are_named() {
        let spec: HttpRouteSpec = serde_json::from_str(
            r#"{"parentRefs": [{"name": "web"}], "rules": [{"filters": [{"type": "RequestMirror", "requestMirror": {}}], "backendRefs": [{"name": "nope"}]}]}"#,
        )
        .unwrap();
        let e = RouteTable::from_http_route(&spec, "web.ns.svc", |n| {
            (n == "web").then(|| "web.ns.svc".into())
        })
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].filters[0].type",
                "spec.rules[0].backendRefs[0].name"
            ]
        );
    }
}
