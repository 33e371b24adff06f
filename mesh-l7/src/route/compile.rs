//! `VirtualService` → [`RouteTable`]: the spec is checked, then compiled route by route and
//! match by match; every problem is collected with its field path, in spec order.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;
use mesh_authz::istio::FieldError;

use super::fields::{header_name, parse_timeout, port, rules, string_match, unsupported};
use super::{
    Action, Destination, HttpRoute, Redirect, RequestMatch, Rewrite, RouteTable, StringMatch,
};
use crate::istio::{
    DirectResponseSpec, HttpMatchSpec, HttpRouteSpec, RedirectSpec, StringMatchSpec,
    VirtualServiceSpec,
};

impl RouteTable {
    /// Compiles a `VirtualService` spec; every problem is returned with its field path.
    pub fn compile(vs: &VirtualServiceSpec) -> Result<RouteTable, Vec<FieldError>> {
        let mut errs = Vec::new();
        check_spec(vs, &mut errs);
        let routes: Vec<HttpRoute> = vs
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, h)| http_route(i, h, &mut errs))
            .collect();
        if errs.is_empty() {
            Ok(RouteTable {
                hosts: vs.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                routes,
            })
        } else {
            Err(errs)
        }
    }
}

/// The spec-level checks: unsupported sections, hosts and gateways.
fn check_spec(vs: &VirtualServiceSpec, errs: &mut Vec<FieldError>) {
    unsupported(vs.tcp.is_some(), "spec.tcp", errs);
    unsupported(vs.tls.is_some(), "spec.tls", errs);
    unsupported(vs.export_to.is_some(), "spec.exportTo", errs);
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
}

/// `spec.http[i]` compiled (`None`: it sets no single action, which is reported).
fn http_route(i: usize, h: &HttpRouteSpec, errs: &mut Vec<FieldError>) -> Option<HttpRoute> {
    let f = format!("spec.http[{i}]");
    unsupported(h.cors_policy.is_some(), &format!("{f}.corsPolicy"), errs);
    let mut matches = Vec::new();
    let mut uri_prefixes = Vec::new();
    for (j, m) in h.matches.iter().enumerate() {
        matches.push(request_match(m, &format!("{f}.match[{j}]"), errs));
        uri_prefixes.push(m.uri.as_ref().and_then(|u| u.prefix.clone()));
    }
    let action = action(h, &f, errs)?;
    let timeout = timeout(h.timeout.as_deref(), &f, errs);
    Some(HttpRoute {
        name: h.name.clone().unwrap_or_else(|| format!("http[{i}]")),
        matches,
        action,
        headers: rules(h.headers.as_ref(), &format!("{f}.headers"), errs),
        timeout,
        retries: crate::resilience::retry::compile(
            h.retries.as_ref(),
            &format!("{f}.retries"),
            errs,
        ),
        uri_prefixes,
        fault: h
            .fault
            .as_ref()
            .and_then(|x| crate::resilience::fault::compile(x, &format!("{f}.fault"), errs)),
        mirrors: crate::resilience::mirror::compile(
            h.mirror.as_ref(),
            h.mirror_percentage,
            &h.mirrors,
            &f,
            errs,
        ),
    })
}

/// One `match[]` (at `mf`) compiled.
fn request_match(m: &HttpMatchSpec, mf: &str, errs: &mut Vec<FieldError>) -> RequestMatch {
    unsupported(m.scheme.is_some(), &format!("{mf}.scheme"), errs);
    unsupported(m.gateways.is_some(), &format!("{mf}.gateways"), errs);
    unsupported(
        m.source_namespace.is_some(),
        &format!("{mf}.sourceNamespace"),
        errs,
    );
    unsupported(m.stat_prefix.is_some(), &format!("{mf}.statPrefix"), errs);
    unsupported(
        !m.source_labels.is_empty(),
        &format!("{mf}.sourceLabels"),
        errs,
    );
    let mut uri = m
        .uri
        .as_ref()
        .and_then(|u| string_match(u, &format!("{mf}.uri"), errs));
    if m.ignore_uri_case {
        uri = uri.map(StringMatch::lower);
    }
    let port = port(m.port, || format!("{mf}.port"), errs);
    RequestMatch {
        uri,
        ignore_uri_case: m.ignore_uri_case,
        method: m
            .method
            .as_ref()
            .and_then(|x| string_match(x, &format!("{mf}.method"), errs)),
        authority: m
            .authority
            .as_ref()
            .and_then(|x| string_match(x, &format!("{mf}.authority"), errs)),
        headers: header_matches(&m.headers, mf, "headers", errs),
        without_headers: header_matches(&m.without_headers, mf, "withoutHeaders", errs),
        query: m
            .query_params
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.clone(),
                    string_match(v, &format!("{mf}.queryParams.{k}"), errs)?,
                ))
            })
            .collect(),
        port,
    }
}

/// The header conditions of a match (`headers` or `withoutHeaders`, the `kind`).
fn header_matches(
    map: &BTreeMap<String, StringMatchSpec>,
    mf: &str,
    kind: &str,
    errs: &mut Vec<FieldError>,
) -> Vec<(HeaderName, StringMatch)> {
    map.iter()
        .filter_map(|(k, v)| {
            let hf = format!("{mf}.{kind}.{k}");
            Some((header_name(k, &hf, errs)?, string_match(v, &hf, errs)?))
        })
        .collect()
}

/// What the route at `f` does: exactly one of route, redirect, directResponse.
fn action(h: &HttpRouteSpec, f: &str, errs: &mut Vec<FieldError>) -> Option<Action> {
    let kinds = usize::from(!h.route.is_empty())
        + usize::from(h.redirect.is_some())
        + usize::from(h.direct_response.is_some());
    if kinds != 1 {
        errs.push(FieldError {
            field: f.to_owned(),
            reason: "set exactly one of route, redirect, directResponse".into(),
        });
        return None;
    }
    Some(if let Some(r) = &h.redirect {
        redirect(r, f, errs)
    } else if let Some(d) = &h.direct_response {
        direct_response(d, f, errs)
    } else {
        forward(h, f, errs)
    })
}

/// `redirect` of the route at `f`.
fn redirect(r: &RedirectSpec, f: &str, errs: &mut Vec<FieldError>) -> Action {
    let status = r.redirect_code.unwrap_or(301);
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        errs.push(FieldError {
            field: format!("{f}.redirect.redirectCode"),
            reason: format!("{status} is not a redirect status"),
        });
    }
    unsupported(r.scheme.is_some(), &format!("{f}.redirect.scheme"), errs);
    unsupported(r.port.is_some(), &format!("{f}.redirect.port"), errs);
    Action::Redirect(Redirect {
        uri: r.uri.clone(),
        authority: r.authority.clone(),
        status: status as u16,
    })
}

/// `directResponse` of the route at `f`.
fn direct_response(d: &DirectResponseSpec, f: &str, errs: &mut Vec<FieldError>) -> Action {
    if !(200..=599).contains(&d.status) {
        errs.push(FieldError {
            field: format!("{f}.directResponse.status"),
            reason: format!("{} is not an HTTP status", d.status),
        });
    }
    unsupported(
        d.body.as_ref().is_some_and(|b| b.bytes.is_some()),
        &format!("{f}.directResponse.body.bytes"),
        errs,
    );
    Action::DirectResponse {
        status: d.status as u16,
        body: d
            .body
            .as_ref()
            .and_then(|b| b.string.clone())
            .unwrap_or_default(),
    }
}

/// `route` (weighted destinations) and `rewrite` of the route at `f`.
fn forward(h: &HttpRouteSpec, f: &str, errs: &mut Vec<FieldError>) -> Action {
    let single = h.route.len() == 1;
    let mut destinations = Vec::new();
    for (k, r) in h.route.iter().enumerate() {
        let rf = format!("{f}.route[{k}]");
        let weight = r.weight.unwrap_or(if single { 100 } else { 0 });
        let port = port(
            r.destination.port.as_ref().map(|p| p.number),
            || format!("{rf}.destination.port.number"),
            errs,
        );
        destinations.push(Destination {
            host: r.destination.host.to_ascii_lowercase(),
            subset: r.destination.subset.clone(),
            port,
            weight,
            headers: rules(r.headers.as_ref(), &format!("{rf}.headers"), errs),
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
                errs,
            );
            Rewrite {
                uri: r.uri.clone(),
                authority: r.authority.clone(),
            }
        }),
    }
}

/// `timeout` of the route at `f`.
fn timeout(t: Option<&str>, f: &str, errs: &mut Vec<FieldError>) -> Option<Duration> {
    let t = t?;
    let d = parse_timeout(t);
    if d.is_none() {
        errs.push(FieldError {
            field: format!("{f}.timeout"),
            reason: format!("{t:?} is not a duration (e.g. 1.5s, 300ms)"),
        });
    }
    d
}
