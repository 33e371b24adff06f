//! The Envoy-side configs of a patch checked into their compiled forms: token buckets,
//! fractions, headers, local limiters, the global filter, `rate_limits` actions. Each problem
//! is reported with its field path.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

use super::descriptor::{Action, HeaderCond, HeaderRef, HeaderTest, Recipe};
use super::envoy::*;
use super::policy::{Append, Fraction, GlobalFilter};
use crate::FieldError;
use crate::resilience::ratelimit::{BucketConfig, MIN_FILL_INTERVAL};

/// Envoy's default `max_dynamic_descriptors`.
pub(crate) const DEFAULT_MAX_DYNAMIC: usize = 20;
/// The most buckets one wildcard descriptor may keep (memory bound).
pub(crate) const MAX_DYNAMIC: u32 = 100_000;
/// Envoy's default global rate limit `timeout`.
pub(crate) const DEFAULT_GLOBAL_TIMEOUT: Duration = Duration::from_millis(20);

pub(crate) const LOCAL_HTTP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
pub(crate) const GLOBAL_HTTP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
pub(crate) const LOCAL_NET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";
const TYPED_STRUCTS: &[&str] = &[
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];

pub(crate) fn err(errs: &mut Vec<FieldError>, field: impl Into<String>, reason: impl Into<String>) {
    errs.push(FieldError {
        field: field.into(),
        reason: reason.into(),
    });
}

/// Names each present field of `fields` as rejected.
pub(crate) fn reject(errs: &mut Vec<FieldError>, at: &str, fields: &[(&str, bool)], why: &str) {
    for (name, present) in fields {
        if *present {
            err(errs, format!("{at}.{name}"), why);
        }
    }
}

/// `v` typed as `T`; a problem reported at `at` plus the path inside.
pub(crate) fn typed<T: DeserializeOwned>(
    v: &serde_json::Value,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let p = e.path().to_string();
            let field = if p == "." {
                at.to_owned()
            } else {
                format!("{at}.{p}")
            };
            err(errs, field, e.into_inner().to_string());
            None
        }
    }
}

/// A `typed_config`: its type URL and its fields (unwrapping a `TypedStruct`), with the
/// path of the fields.
pub(crate) fn unwrap_typed(
    v: &serde_json::Value,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<(String, serde_json::Value, String)> {
    let Some(obj) = v.as_object() else {
        err(errs, at, "must be a mapping with \"@type\"");
        return None;
    };
    let Some(ty) = obj.get("@type").and_then(|t| t.as_str()) else {
        err(errs, format!("{at}.@type"), "missing");
        return None;
    };
    if TYPED_STRUCTS.contains(&ty) {
        for k in obj
            .keys()
            .filter(|k| !["@type", "type_url", "value"].contains(&k.as_str()))
        {
            err(errs, format!("{at}.{k}"), "unknown field of a TypedStruct");
        }
        let Some(url) = obj.get("type_url").and_then(|t| t.as_str()) else {
            err(errs, format!("{at}.type_url"), "missing");
            return None;
        };
        let value = obj
            .get("value")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        return Some((url.to_owned(), value, format!("{at}.value")));
    }
    let mut fields = obj.clone();
    fields.remove("@type");
    Some((
        ty.to_owned(),
        serde_json::Value::Object(fields),
        at.to_owned(),
    ))
}

/// A duration as Envoy YAML writes it: `60s`, `0.25s`, `250ms`.
pub(crate) fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (0.0..1e9)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

pub(crate) fn bucket(
    b: &TokenBucketSpec,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<BucketConfig> {
    let n = errs.len();
    if b.max_tokens == 0 {
        err(errs, format!("{at}.max_tokens"), "must be > 0");
    }
    if b.tokens_per_fill == Some(0) {
        err(errs, format!("{at}.tokens_per_fill"), "must be > 0");
    }
    let fill = duration(&b.fill_interval);
    match fill {
        None => err(
            errs,
            format!("{at}.fill_interval"),
            format!("{:?} is not a duration (e.g. 60s, 500ms)", b.fill_interval),
        ),
        // Envoy: "fill_interval must be >= 50ms".
        Some(d) if d < MIN_FILL_INTERVAL => {
            err(errs, format!("{at}.fill_interval"), "must be >= 50ms")
        }
        _ => {}
    }
    (errs.len() == n).then(|| BucketConfig {
        max_tokens: b.max_tokens,
        tokens_per_fill: b.tokens_per_fill.unwrap_or(1),
        fill_interval: fill.unwrap_or(MIN_FILL_INTERVAL),
    })
}

pub(crate) fn fraction(
    f: Option<&RuntimeFractionSpec>,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Fraction {
    // Envoy: an absent filter_enabled / filter_enforced means 0%.
    let Some(f) = f else { return Fraction(0) };
    let per_million = match f.default_value.denominator.as_deref().unwrap_or("HUNDRED") {
        "HUNDRED" => 10_000,
        "TEN_THOUSAND" => 100,
        "MILLION" => 1,
        d => {
            err(
                errs,
                format!("{at}.default_value.denominator"),
                format!("{d:?} is not HUNDRED, TEN_THOUSAND or MILLION"),
            );
            return Fraction(0);
        }
    };
    // Envoy caps a numerator above the denominator at 100%.
    Fraction(
        f.default_value
            .numerator
            .saturating_mul(per_million)
            .min(1_000_000),
    )
}

pub(crate) fn headers(
    hs: &[HeaderValueOptionSpec],
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Vec<(HeaderName, HeaderValue, Append)> {
    let mut out = Vec::new();
    for (i, h) in hs.iter().enumerate() {
        let at = format!("{at}[{i}]");
        reject(
            errs,
            &at,
            &[("keep_empty_value", h.keep_empty_value.is_some())],
            "not supported",
        );
        reject(
            errs,
            &format!("{at}.header"),
            &[("raw_value", h.header.raw_value.is_some())],
            "not supported; give value",
        );
        let how = match (h.append, h.append_action.as_deref()) {
            (Some(_), Some(_)) => {
                err(
                    errs,
                    format!("{at}.append_action"),
                    "give append or append_action, not both",
                );
                continue;
            }
            (Some(true), None) | (None, Some("APPEND_IF_EXISTS_OR_ADD")) => Append::Add,
            (None, Some("ADD_IF_ABSENT")) => Append::IfAbsent,
            // Envoy's default for append (true) applies to requests; a local reply is
            // written fresh, so appending and overwriting differ only among these headers.
            (Some(false), None) | (None, Some("OVERWRITE_IF_EXISTS_OR_ADD")) | (None, None) => {
                Append::Overwrite
            }
            (None, Some(a)) => {
                err(
                    errs,
                    format!("{at}.append_action"),
                    format!(
                        "{a:?} is not OVERWRITE_IF_EXISTS_OR_ADD, APPEND_IF_EXISTS_OR_ADD or ADD_IF_ABSENT"
                    ),
                );
                continue;
            }
        };
        match (
            HeaderName::from_bytes(h.header.key.as_bytes()),
            HeaderValue::from_str(&h.header.value),
        ) {
            (Ok(n), Ok(v)) => out.push((n, v, how)),
            (Err(_), _) => err(errs, format!("{at}.header.key"), "not a header name"),
            (_, Err(_)) => err(errs, format!("{at}.header.value"), "not a header value"),
        }
    }
    out
}

pub(crate) fn x_headers(v: Option<&str>, at: &str, errs: &mut Vec<FieldError>) -> bool {
    match v {
        None | Some("OFF") => false,
        Some("DRAFT_VERSION_03") => true,
        Some(o) => {
            err(errs, at, format!("{o:?} is not OFF or DRAFT_VERSION_03"));
            false
        }
    }
}

pub(crate) fn status(
    s: Option<&HttpStatusSpec>,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> StatusCode {
    match s.map(|s| StatusCode::from_u16(s.code)) {
        None => StatusCode::TOO_MANY_REQUESTS,
        // Envoy: a status below 400 is ignored for 429; this data plane refuses it instead.
        Some(Ok(c)) if c.as_u16() >= 400 => c,
        Some(_) => {
            err(errs, format!("{at}.code"), "must be an HTTP status >= 400");
            StatusCode::TOO_MANY_REQUESTS
        }
    }
}

pub(crate) fn global(
    g: &GlobalRateLimitSpec,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<Arc<GlobalFilter>> {
    let n = errs.len();
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
    let svc = &g.rate_limit_service;
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
    let x = x_headers(
        g.enable_x_ratelimit_headers.as_deref(),
        &format!("{at}.enable_x_ratelimit_headers"),
        errs,
    );
    let (host, port) = target?;
    (errs.len() == n).then(|| {
        Arc::new(GlobalFilter {
            domain: g.domain.clone(),
            failure_mode_deny: g.failure_mode_deny,
            timeout,
            authority: eg.authority.clone().unwrap_or_else(|| host.clone()),
            host,
            port,
            x_headers: x,
        })
    })
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

pub(crate) fn recipes(rls: &[RateLimitEntry], at: &str, errs: &mut Vec<FieldError>) -> Vec<Recipe> {
    let mut out = Vec::new();
    for (i, rl) in rls.iter().enumerate() {
        let at = format!("{at}[{i}]");
        reject(
            errs,
            &at,
            &[
                ("stage", rl.stage.is_some()),
                ("disable_key", rl.disable_key.is_some()),
                ("limit", rl.limit.is_some()),
            ],
            "not supported by this data plane",
        );
        if rl.actions.is_empty() {
            err(errs, format!("{at}.actions"), "at least one action");
        }
        let actions = rl.actions.iter().enumerate();
        let actions = actions.filter_map(|(j, a)| action(a, &format!("{at}.actions[{j}]"), errs));
        out.push(Recipe {
            actions: actions.collect(),
        });
    }
    out
}

fn action(a: &ActionSpec, at: &str, errs: &mut Vec<FieldError>) -> Option<Action> {
    let given = [
        a.request_headers.is_some(),
        a.remote_address.is_some(),
        a.generic_key.is_some(),
        a.header_value_match.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        err(
            errs,
            at,
            "exactly one of request_headers, remote_address, generic_key, header_value_match",
        );
        return None;
    }
    if a.remote_address.is_some() {
        return Some(Action::RemoteAddress);
    }
    if let Some(g) = &a.generic_key {
        let key = g
            .descriptor_key
            .clone()
            .unwrap_or_else(|| "generic_key".into());
        return Some(Action::GenericKey {
            key,
            value: g.descriptor_value.clone(),
        });
    }
    if let Some(h) = &a.request_headers {
        let Some(header) = HeaderRef::parse(&h.header_name) else {
            err(
                errs,
                format!("{at}.request_headers.header_name"),
                "not a header name",
            );
            return None;
        };
        return Some(Action::RequestHeader {
            header,
            key: h.descriptor_key.clone(),
            skip_if_absent: h.skip_if_absent,
        });
    }
    let m = a.header_value_match.as_ref()?;
    let at = format!("{at}.header_value_match");
    let headers = m
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| header_cond(h, &format!("{at}.headers[{i}]"), errs));
    Some(Action::HeaderValueMatch {
        key: m
            .descriptor_key
            .clone()
            .unwrap_or_else(|| "header_match".into()),
        value: m.descriptor_value.clone(),
        expect_match: m.expect_match.unwrap_or(true),
        headers: headers.collect(),
    })
}

fn header_cond(h: &HeaderMatcherSpec, at: &str, errs: &mut Vec<FieldError>) -> Option<HeaderCond> {
    let Some(name) = HeaderRef::parse(&h.name) else {
        err(errs, format!("{at}.name"), "not a header name");
        return None;
    };
    let sm = h.string_match.as_ref();
    if let Some(s) = sm {
        reject(
            errs,
            &format!("{at}.string_match"),
            &[("ignore_case", s.ignore_case.is_some())],
            "not supported",
        );
    }
    let tests = [
        h.exact_match.clone().map(HeaderTest::Exact),
        h.prefix_match.clone().map(HeaderTest::Prefix),
        h.suffix_match.clone().map(HeaderTest::Suffix),
        h.present_match.map(HeaderTest::Present),
        sm.and_then(|s| s.exact.clone()).map(HeaderTest::Exact),
        sm.and_then(|s| s.prefix.clone()).map(HeaderTest::Prefix),
        sm.and_then(|s| s.suffix.clone()).map(HeaderTest::Suffix),
    ];
    let mut given = tests.into_iter().flatten();
    let (Some(test), None) = (given.next(), given.next()) else {
        err(
            errs,
            at,
            "exactly one of exact_match, prefix_match, suffix_match, present_match, string_match (exact, prefix or suffix)",
        );
        return None;
    };
    Some(HeaderCond {
        name,
        test,
        invert: h.invert_match,
    })
}
