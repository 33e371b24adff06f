//! Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1) attached to a Service (GAMMA mesh
//! routing), compiled into the same [`RouteTable`](crate::RouteTable) as a `VirtualService`. Gateway API orders
//! matches by precedence, not by position: an `Exact` path before a `PathPrefix`, a longer
//! prefix first, then a method match, then more header and query matches; a path prefix
//! matches whole path elements (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`).

pub(crate) mod backend;
mod compile;

use serde::Deserialize;

pub use self::backend::BackendRef;

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
    /// Request and per-try timeouts (GEP-1742).
    #[serde(default)]
    pub timeouts: Option<crate::resilience::retry_gateway::TimeoutsSpec>,
    /// Retries (GEP-1731).
    #[serde(default)]
    pub retry: Option<crate::resilience::retry_gateway::HttpRouteRetrySpec>,
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
    /// Mirror requests to another backend.
    #[serde(default)]
    pub request_mirror: Option<crate::resilience::mirror::RequestMirrorSpec>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RequestFacts, RouteTable};

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
            r#"{"parentRefs": [{"name": "web"}], "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {}}], "backendRefs": [{"name": "nope"}]}]}"#,
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

    #[test]
    fn zero_weights_are_reported_only_without_earlier_errors() {
        let compile = |json: &str| {
            let spec: HttpRouteSpec = serde_json::from_str(json).unwrap();
            RouteTable::from_http_route(&spec, "web.ns.svc", |n| Some(format!("{n}.ns.svc")))
                .unwrap_err()
        };
        let e = compile(r#"{"rules": [{"backendRefs": [{"name": "a", "weight": 0}]}]}"#);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "spec.rules[0].backendRefs");
        assert_eq!(e[0].reason, "weights add up to 0");
        let e = compile(
            r#"{"hostnames": ["x"], "rules": [{"backendRefs": [{"name": "a", "weight": 0, "port": 0}]}]}"#,
        );
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.hostnames", "spec.rules[0].backendRefs[0].port"]
        );
    }
}
