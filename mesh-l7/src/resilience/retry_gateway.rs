//! Gateway API `HTTPRoute` `rules[].timeouts` (GEP-1742) and `rules[].retry` (GEP-1731),
//! compiled into the same route timeout and [`RetrySetting`] as a `VirtualService`'s, the way
//! Istio translates them: `timeouts.request` is the route timeout, `timeouts.backendRequest`
//! each try's timeout; `retry.attempts` the retries (0: none), `retry.codes` the retriable
//! statuses (with Istio's default connect-failure, refused-stream, unavailable and
//! cancelled), `retry.backoff` the base backoff. Without `retry`, the mesh's default policy.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::retry::{Backoff, MAX_CODES, MAX_RETRIES, RetryOn, RetryPolicy, RetrySetting};
use mesh_authz::istio::FieldError;

/// `rules[].timeouts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// The whole request, retries included (`0s`: none).
    #[serde(default)]
    pub request: Option<String>,
    /// Each request to a backend (a try).
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// `rules[].retry` (GEP-1731).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRetrySpec {
    /// Statuses (400–599) to retry.
    #[serde(default)]
    pub codes: Vec<u32>,
    /// Most retries of one request (0: none).
    #[serde(default)]
    pub attempts: Option<i64>,
    /// Minimum wait between tries (the base of the exponential backoff).
    #[serde(default)]
    pub backoff: Option<String>,
}

fn push(errs: &mut Vec<FieldError>, field: String, reason: impl Into<String>) {
    errs.push(FieldError {
        field,
        reason: reason.into(),
    });
}

/// A Gateway API duration (GEP-2257: one to four `<n><h|m|s|ms>` parts, e.g. `1h30m`,
/// `500ms`; no fractions).
pub fn parse_gateway_duration(s: &str) -> Option<Duration> {
    crate::duration::parse_gateway(s).ok()
}

fn duration(v: Option<&str>, field: String, errs: &mut Vec<FieldError>) -> Option<Duration> {
    let v = v?;
    let d = parse_gateway_duration(v);
    if d.is_none() {
        push(
            errs,
            field,
            format!("{v:?} is not a Gateway API duration (e.g. 10s, 500ms, 1h30m)"),
        );
    }
    d
}

/// A rule's route timeout and retry setting.
pub type Compiled = (Option<Duration>, RetrySetting);

/// Compiles a rule's `timeouts` and `retry` at `f` (`spec.rules[i]`): the route timeout
/// (`0s`: none) and the retry setting.
pub fn compile(
    timeouts: Option<&TimeoutsSpec>,
    retry: Option<&HttpRouteRetrySpec>,
    f: &str,
    errs: &mut Vec<FieldError>,
) -> Compiled {
    let request = timeouts
        .and_then(|t| duration(t.request.as_deref(), format!("{f}.timeouts.request"), errs));
    let backend = timeouts.and_then(|t| {
        duration(
            t.backend_request.as_deref(),
            format!("{f}.timeouts.backendRequest"),
            errs,
        )
    });
    // GEP-1742: backendRequest must not be longer than request (when both are non-zero).
    if let (Some(r), Some(b)) = (request, backend)
        && !r.is_zero()
        && b > r
    {
        push(
            errs,
            format!("{f}.timeouts.backendRequest"),
            "must not exceed timeouts.request",
        );
    }
    let setting = match retry {
        None => RetrySetting::MeshDefault,
        Some(r) => {
            policy(r, f, errs).map_or(RetrySetting::Off, |p| RetrySetting::Policy(Arc::new(p)))
        }
    };
    let per_try = backend.filter(|b| !b.is_zero());
    let setting = match (per_try, setting) {
        (None, s) => s,
        (Some(_), RetrySetting::Off) => RetrySetting::Off,
        // A per-try timeout needs a policy: the default's (Istio's) with it.
        (Some(t), RetrySetting::MeshDefault) => RetrySetting::Policy(Arc::new(RetryPolicy {
            per_try_timeout: Some(t),
            ..RetryPolicy::istio_default()
        })),
        (Some(t), RetrySetting::Policy(p)) => RetrySetting::Policy(Arc::new(RetryPolicy {
            per_try_timeout: Some(t),
            ..(*p).clone()
        })),
    };
    (request, setting)
}

/// `retry` as a policy (`None`: `attempts: 0`, or a problem reported).
fn policy(r: &HttpRouteRetrySpec, f: &str, errs: &mut Vec<FieldError>) -> Option<RetryPolicy> {
    let before = errs.len();
    let mut p = RetryPolicy::istio_default();
    if let Some(a) = r.attempts {
        if !(0..=i64::from(MAX_RETRIES)).contains(&a) {
            push(
                errs,
                format!("{f}.retry.attempts"),
                format!("must be in 0..={MAX_RETRIES}"),
            );
        }
        p.retries = u32::try_from(a).unwrap_or(0);
    }
    if !r.codes.is_empty() {
        if r.codes.len() > MAX_CODES {
            push(
                errs,
                format!("{f}.retry.codes"),
                format!("at most {MAX_CODES} codes"),
            );
        }
        p.codes = Vec::new();
        for (j, c) in r.codes.iter().enumerate() {
            match u16::try_from(*c) {
                Ok(c) if (400..=599).contains(&c) => p.codes.push(c),
                _ => push(
                    errs,
                    format!("{f}.retry.codes[{j}]"),
                    "must be in 400..=599",
                ),
            }
        }
        p.on = RetryOn::CONNECT_FAILURE
            | RetryOn::REFUSED_STREAM
            | RetryOn::GRPC_UNAVAILABLE
            | RetryOn::GRPC_CANCELLED
            | RetryOn::STATUS_CODES;
    }
    if let Some(b) = duration(r.backoff.as_deref(), format!("{f}.retry.backoff"), errs) {
        p.backoff = Backoff::envoy(b.max(Duration::from_millis(1)));
    }
    (errs.len() == before && p.retries > 0).then_some(p)
}

#[cfg(test)]
#[path = "retry_gateway_tests.rs"]
mod tests;
