//! The Envoy-side configs of a patch checked into their compiled forms: token buckets,
//! fractions, headers, local limiters, the global filter, `rate_limits` actions. Each problem
//! is reported with its field path.

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

use super::envoy::*;
use super::parts::{Append, Fraction};
use crate::resilience::ratelimit::{BucketConfig, MIN_FILL_INTERVAL};
use mesh_authz::istio::FieldError;

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
