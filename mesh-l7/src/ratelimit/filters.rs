//! The filters a patch inserts, checked: Envoy's HTTP local rate limit, the global rate
//! limit filter (and its service's cluster), the network local rate limit.

use std::sync::Arc;

use super::envoy::*;
use super::fields::*;
use super::parts::GlobalFilter;
use super::rules::{LocalTemplate, Rule};
use mesh_authz::istio::FieldError;

pub(super) fn filter(
    v: FilterValue,
    http: bool,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<Rule> {
    let want: &[&str] = if http {
        &[
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.ratelimit",
        ]
    } else {
        &["envoy.filters.network.local_ratelimit"]
    };
    if !want.contains(&v.name.as_str()) {
        err(
            errs,
            format!("{at}.name"),
            format!("{:?}: only {want:?} filters are supported", v.name),
        );
        return None;
    }
    let Some(tc) = &v.typed_config else {
        err(errs, format!("{at}.typed_config"), "missing");
        return None;
    };
    let (ty, fields, fat) = unwrap_typed(tc, &format!("{at}.typed_config"), errs)?;
    let expect = match v.name.as_str() {
        "envoy.filters.http.local_ratelimit" => LOCAL_HTTP_TYPE,
        "envoy.filters.http.ratelimit" => GLOBAL_HTTP_TYPE,
        _ => LOCAL_NET_TYPE,
    };
    if ty != expect {
        err(
            errs,
            format!("{fat}.@type"),
            format!("{ty:?} is not {expect}"),
        );
        return None;
    }
    match expect {
        LOCAL_HTTP_TYPE => Some(Rule::LocalFilter(local_template(
            &typed(&fields, &fat, errs)?,
            &fat,
            errs,
        )?)),
        GLOBAL_HTTP_TYPE => Some(Rule::GlobalFilter(global(
            &typed(&fields, &fat, errs)?,
            &fat,
            errs,
        )?)),
        _ => {
            let n: NetworkLocalRateLimitSpec = typed(&fields, &fat, errs)?;
            reject(
                errs,
                &fat,
                &[
                    ("runtime_enabled", n.runtime_enabled.is_some()),
                    ("share_key", n.share_key.is_some()),
                ],
                "not supported by this data plane",
            );
            let cfg = bucket(&n.token_bucket, &format!("{fat}.token_bucket"), errs)?;
            Some(Rule::Connections {
                name: n.stat_prefix,
                cfg,
            })
        }
    }
}

pub(super) fn local_template(
    l: &LocalRateLimitSpec,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<LocalTemplate> {
    let n = errs.len();
    rejected_local(l, at, errs);
    let b = l
        .token_bucket
        .as_ref()
        .and_then(|b| bucket(b, &format!("{at}.token_bucket"), errs));
    if !l.descriptors.is_empty() && l.token_bucket.is_none() {
        // Envoy requires the default bucket beside descriptors.
        err(
            errs,
            format!("{at}.token_bucket"),
            "required when descriptors are given",
        );
    }
    let descriptors = local_descriptors(l, at, errs);
    let max_dynamic = max_dynamic(l, at, errs);
    let t = LocalTemplate {
        name: l.stat_prefix.clone(),
        bucket: b,
        enabled: fraction(
            l.filter_enabled.as_ref(),
            &format!("{at}.filter_enabled"),
            errs,
        ),
        enforced: fraction(
            l.filter_enforced.as_ref(),
            &format!("{at}.filter_enforced"),
            errs,
        ),
        headers: headers(
            &l.response_headers_to_add,
            &format!("{at}.response_headers_to_add"),
            errs,
        ),
        x_headers: x_headers(
            l.enable_x_ratelimit_headers.as_deref(),
            &format!("{at}.enable_x_ratelimit_headers"),
            errs,
        ),
        descriptors,
        max_dynamic,
        status: status(l.status.as_ref(), &format!("{at}.status"), errs),
    };
    (errs.len() == n).then_some(t)
}

fn rejected_local(l: &LocalRateLimitSpec, at: &str, errs: &mut Vec<FieldError>) {
    reject(
        errs,
        at,
        &[
            (
                "request_headers_to_add_when_not_enforced",
                l.request_headers_to_add_when_not_enforced.is_some(),
            ),
            (
                "local_rate_limit_per_downstream_connection",
                l.local_rate_limit_per_downstream_connection.is_some(),
            ),
            (
                "always_consume_default_token_bucket",
                l.always_consume_default_token_bucket.is_some(),
            ),
            ("stage", l.stage.is_some()),
            (
                "rate_limited_as_resource_exhausted",
                l.rate_limited_as_resource_exhausted.is_some(),
            ),
            (
                "local_cluster_rate_limit",
                l.local_cluster_rate_limit.is_some(),
            ),
            ("vh_rate_limits", l.vh_rate_limits.is_some()),
            ("rate_limits", l.rate_limits.is_some()),
        ],
        "not supported by this data plane",
    );
}

fn local_descriptors(
    l: &LocalRateLimitSpec,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Vec<(
    super::rules::Entries,
    crate::resilience::ratelimit::BucketConfig,
)> {
    let mut descriptors = Vec::new();
    for (i, d) in l.descriptors.iter().enumerate() {
        let dat = format!("{at}.descriptors[{i}]");
        if d.entries.is_empty() {
            err(errs, format!("{dat}.entries"), "at least one entry");
        }
        let entries = d
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        if let Some(cfg) = bucket(&d.token_bucket, &format!("{dat}.token_bucket"), errs) {
            descriptors.push((entries, cfg));
        }
    }
    descriptors
}

fn max_dynamic(l: &LocalRateLimitSpec, at: &str, errs: &mut Vec<FieldError>) -> usize {
    match l.max_dynamic_descriptors {
        None => DEFAULT_MAX_DYNAMIC,
        Some(m) if (1..=MAX_DYNAMIC).contains(&m) => m as usize,
        Some(_) => {
            err(
                errs,
                format!("{at}.max_dynamic_descriptors"),
                format!("must be 1..={MAX_DYNAMIC} (memory is bounded)"),
            );
            DEFAULT_MAX_DYNAMIC
        }
    }
}

fn global(
    g: &GlobalRateLimitSpec,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<Arc<GlobalFilter>> {
    let n = errs.len();
    rejected_global(g, at, errs);
    if g.domain.is_empty() {
        err(errs, format!("{at}.domain"), "must not be empty");
    }
    let timeout = match g.timeout.as_deref().map(|t| (t, duration(t))) {
        None => DEFAULT_GLOBAL_TIMEOUT,
        Some((_, Some(d))) if !d.is_zero() => d,
        Some((t, _)) => {
            err(
                errs,
                format!("{at}.timeout"),
                format!("{t:?} is not a positive duration (e.g. 20ms, 1s)"),
            );
            DEFAULT_GLOBAL_TIMEOUT
        }
    };
    let (host, port, authority) = service(&g.rate_limit_service, at, errs)?;
    let x = x_headers(
        g.enable_x_ratelimit_headers.as_deref(),
        &format!("{at}.enable_x_ratelimit_headers"),
        errs,
    );
    (errs.len() == n).then(|| {
        Arc::new(GlobalFilter {
            domain: g.domain.clone(),
            failure_mode_deny: g.failure_mode_deny,
            timeout,
            authority,
            host,
            port,
            x_headers: x,
        })
    })
}

/// The rate limit service: Istio's `outbound|<port>||<host>` cluster and the authority.
fn service(
    svc: &RateLimitServiceSpec,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<(String, u16, String)> {
    let sat = format!("{at}.rate_limit_service");
    if svc
        .transport_api_version
        .as_deref()
        .is_some_and(|v| v != "V3")
    {
        err(errs, format!("{sat}.transport_api_version"), "only V3");
    }
    let gs = &svc.grpc_service;
    let gat = format!("{sat}.grpc_service");
    reject(
        errs,
        &gat,
        &[
            ("google_grpc", gs.google_grpc.is_some()),
            ("timeout", gs.timeout.is_some()),
            ("initial_metadata", gs.initial_metadata.is_some()),
            ("retry_policy", gs.retry_policy.is_some()),
        ],
        "not supported; give envoy_grpc (and the filter's timeout)",
    );
    let Some(eg) = &gs.envoy_grpc else {
        err(errs, format!("{gat}.envoy_grpc"), "missing");
        return None;
    };
    let target = cluster(&eg.cluster_name);
    if target.is_none() {
        err(
            errs,
            format!("{gat}.envoy_grpc.cluster_name"),
            format!(
                "{:?} is not an Istio cluster name outbound|<port>||<host>",
                eg.cluster_name
            ),
        );
    }
    let (host, port) = target?;
    let authority = eg.authority.clone().unwrap_or_else(|| host.clone());
    if authority.parse::<http::uri::Authority>().is_err() {
        let why = format!("{authority:?} is not an authority (host[:port])");
        err(errs, format!("{gat}.envoy_grpc.authority"), why);
        return None;
    }
    Some((host, port, authority))
}

fn rejected_global(g: &GlobalRateLimitSpec, at: &str, errs: &mut Vec<FieldError>) {
    let no = "not supported by this data plane";
    reject(
        errs,
        at,
        &[
            ("stage", g.stage.is_some()),
            ("request_type", g.request_type.is_some()),
            (
                "rate_limited_as_resource_exhausted",
                g.rate_limited_as_resource_exhausted.is_some(),
            ),
            ("status_on_error", g.status_on_error.is_some()),
            ("rate_limited_status", g.rate_limited_status.is_some()),
            (
                "disable_x_envoy_ratelimited_header",
                g.disable_x_envoy_ratelimited_header.is_some(),
            ),
            (
                "response_headers_to_add",
                g.response_headers_to_add.is_some(),
            ),
        ],
        no,
    );
}

/// Istio's cluster name `outbound|<port>|<subset>|<host>` (no subset).
fn cluster(name: &str) -> Option<(String, u16)> {
    let mut it = name.split('|');
    let (dir, port, subset, host) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if dir != "outbound" || !subset.is_empty() || host.is_empty() || it.next().is_some() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok().filter(|p| *p != 0)?))
}
