//! Validation of `extensionProviders[]` into [`ExtAuthzProviders`], and the check that every
//! `CUSTOM` policy names one of them.

use std::sync::Arc;

use http::StatusCode;
use mesh_l7::layer::ext_authz::Provider;
use serde::Deserialize;

use super::types::{DEFAULT_TIMEOUT, ExtAuthzProvider, ExtAuthzProviders, ExtensionProviderSpec};

use crate::config::errors::Validator;

/// `envoyExtAuthzGrpc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GrpcSpec {
    service: String,
    port: u32,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    fail_open: bool,
    #[serde(default)]
    status_on_error: Option<String>,
    #[serde(default)]
    clear_route_cache: Option<bool>,
    #[serde(default)]
    include_request_body_in_check: Option<serde_json::Value>,
}

/// The HTTP provider's fields, named when given to a gRPC provider.
const HTTP_ONLY_FIELDS: &[&str] = &[
    "pathPrefix",
    "includeRequestHeadersInCheck",
    "includeAdditionalHeadersInCheck",
    "includeHeadersInCheck",
    "headersToUpstreamOnAllow",
    "headersToDownstreamOnDeny",
    "headersToDownstreamOnAllow",
];

/// Validates `specs` (found at `location`) and checks that every `CUSTOM` policy of
/// `policies` names one of them (an unknown name is reported at the policy's location,
/// `policy_location`).
fn index(
    v: &mut Validator,
    location: &str,
    specs: &[ExtensionProviderSpec],
    policies: &[mesh_authz::Policy],
    policy_location: impl Fn(&mesh_authz::Policy) -> String,
) -> ExtAuthzProviders {
    let mut out = ExtAuthzProviders::default();
    for (i, spec) in specs.iter().enumerate() {
        let field = format!("spec.extensionProviders[{i}]");
        if out.by_name.contains_key(&spec.name) {
            v.err(
                location,
                format!("{field}.name"),
                format!("duplicate provider {:?}", spec.name),
            );
            continue;
        }
        if let Some(p) = provider(v, location, &field, spec) {
            out.by_name.insert(spec.name.clone(), Arc::new(p));
        }
    }
    for p in policies
        .iter()
        .filter(|p| p.action == mesh_authz::Action::Custom)
    {
        out.has_custom = true;
        let name = p.provider.as_deref().unwrap_or_default();
        if !out.by_name.contains_key(name) {
            v.err(
                &policy_location(p),
                "spec.provider.name",
                format!("{name:?} is not one of the mesh's extensionProviders (requests it would check are denied)"),
            );
        }
    }
    out
}

/// One `extensionProviders[i]` at `field`.
fn provider(
    v: &mut Validator,
    location: &str,
    field: &str,
    spec: &ExtensionProviderSpec,
) -> Option<ExtAuthzProvider> {
    if spec.name.is_empty() {
        v.err(location, format!("{field}.name"), "a provider needs a name");
    }
    let mut kinds = spec.kind.iter();
    let (Some((kind, value)), None) = (kinds.next(), kinds.next()) else {
        v.err(
            location,
            field,
            "a provider needs exactly one kind (envoyExtAuthzGrpc)",
        );
        return None;
    };
    if kind != "envoyExtAuthzGrpc" {
        let why = if kind == "envoyExtAuthzHttp" {
            "the HTTP ext_authz API is not supported; use envoyExtAuthzGrpc"
        } else {
            "only envoyExtAuthzGrpc providers are supported"
        };
        v.err(location, format!("{field}.{kind}"), why);
        return None;
    }
    let at = format!("{field}.envoyExtAuthzGrpc");
    if let Some(obj) = value.as_object() {
        for k in obj
            .keys()
            .filter(|k| HTTP_ONLY_FIELDS.contains(&k.as_str()))
        {
            v.err(
                location,
                format!("{at}.{k}"),
                "a field of envoyExtAuthzHttp; a gRPC authorizer sets headers in its CheckResponse",
            );
        }
        if obj.keys().any(|k| HTTP_ONLY_FIELDS.contains(&k.as_str())) {
            return None;
        }
    }
    let g: GrpcSpec = match serde_json::from_value(value.clone()) {
        Ok(g) => g,
        Err(e) => {
            v.err(location, &at, e.to_string());
            return None;
        }
    };
    grpc(v, location, &at, spec, g)
}

/// The checked settings of a gRPC provider.
fn grpc(
    v: &mut Validator,
    location: &str,
    at: &str,
    spec: &ExtensionProviderSpec,
    g: GrpcSpec,
) -> Option<ExtAuthzProvider> {
    let mut errs: Vec<(String, String)> = Vec::new();
    let mut err = |f: &str, why: String| errs.push((format!("{at}.{f}"), why));
    if g.include_request_body_in_check.is_some() {
        err(
            "includeRequestBodyInCheck",
            "request bodies are not sent to the authorizer".into(),
        );
    }
    if g.clear_route_cache == Some(false) {
        err(
            "clearRouteCache",
            "routing always sees the authorizer's headers (the route is chosen after the check); only true is valid".into(),
        );
    }
    let host = g
        .service
        .rsplit_once('/')
        .map_or(g.service.as_str(), |(_, h)| h);
    if host.is_empty() {
        err("service", "a service host is required".into());
    }
    let port = u16::try_from(g.port).ok().filter(|p| *p != 0);
    if port.is_none() {
        err("port", format!("{} is not a port (1-65535)", g.port));
    }
    let timeout = match g.timeout.as_deref().map(mesh_l7::duration::parse) {
        None => DEFAULT_TIMEOUT,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            err("timeout", "must be more than 0s".into());
            DEFAULT_TIMEOUT
        }
        Some(Err(e)) => {
            err("timeout", e.to_string());
            DEFAULT_TIMEOUT
        }
    };
    // Istio: `statusOnError` defaults to 403; Envoy takes an error status.
    let status_on_error = match g.status_on_error.as_deref() {
        None | Some("") => StatusCode::FORBIDDEN,
        Some(s) => match s
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(c) if c.is_client_error() || c.is_server_error() => c,
            _ => {
                err(
                    "statusOnError",
                    format!("{s:?} is not an HTTP error status (400-599)"),
                );
                StatusCode::FORBIDDEN
            }
        },
    };
    let ok = errs.is_empty();
    for (f, why) in errs {
        v.err(location, f, why);
    }
    ok.then(|| ExtAuthzProvider {
        settings: Provider {
            name: Arc::from(spec.name.as_str()),
            timeout,
            fail_open: g.fail_open,
            status_on_error,
        },
        host: host.to_ascii_lowercase(),
        port: port.unwrap_or_default(),
    })
}

/// [`index`] over the resources of a source: the `MeshConfig`'s providers, and the validated
/// policies (an unknown provider reported at the `AuthorizationPolicy`'s document).
// `pub(crate)` for the config module (the Validator is its own, hence the allow).
#[allow(private_interfaces)]
pub(crate) fn index_resources(
    v: &mut Validator,
    res: &crate::config::parse::Resources,
    policies: &[mesh_authz::Policy],
) -> ExtAuthzProviders {
    let (location, specs) = match &res.extension_providers {
        Some((l, s)) => (l.as_str(), s.as_slice()),
        None => ("MeshConfig", &[][..]),
    };
    index(v, location, specs, policies, |p| {
        res.policies
            .iter()
            .find(|n| n.namespace == p.namespace && n.name == p.name)
            .map_or_else(
                || format!("AuthorizationPolicy {}/{}", p.namespace, p.name),
                |n| n.location.clone(),
            )
    })
}
