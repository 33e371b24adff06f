//! Fault injection (`VirtualService` `http[].fault`), sans-IO: the spec as users write it, its
//! compiled [`FaultPolicy`], and the per-request [`FaultDecision`] taken from random rolls the
//! caller passes in (so tests can seed them). Envoy's semantics (the `envoy.filters.http.fault`
//! filter Istio configures): the delay and the abort are drawn independently; a delay is
//! applied first, then an abort answers locally instead of forwarding.

use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;

use mesh_authz::istio::FieldError;

/// `http[].fault`: a delay, an abort, or both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultSpec {
    /// Delay before forwarding.
    #[serde(default)]
    pub delay: Option<DelaySpec>,
    /// Answer with an error instead of forwarding.
    #[serde(default)]
    pub abort: Option<AbortSpec>,
}

/// `fault.delay`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DelaySpec {
    /// How long (at least 1ms, e.g. `5s`, `100ms`).
    #[serde(default)]
    pub fixed_delay: Option<String>,
    /// Share of requests delayed (none: no request is).
    #[serde(default)]
    pub percentage: Option<PercentSpec>,
    /// Legacy integer share, used when `percentage` is not set.
    #[serde(default)]
    pub percent: Option<i64>,
    /// Not supported (nor by Istio).
    #[serde(default)]
    pub exponential_delay: Option<serde::de::IgnoredAny>,
}

/// `fault.abort`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AbortSpec {
    /// HTTP status of the answer (200..=599).
    #[serde(default)]
    pub http_status: Option<i64>,
    /// gRPC status name of the answer (`UNAVAILABLE`, ...).
    #[serde(default)]
    pub grpc_status: Option<String>,
    /// Not supported (nor by Istio).
    #[serde(default)]
    pub http2_error: Option<serde::de::IgnoredAny>,
    /// Share of requests aborted (none: no request is).
    #[serde(default)]
    pub percentage: Option<PercentSpec>,
    /// Legacy integer share, used when `percentage` is not set.
    #[serde(default)]
    pub percent: Option<i64>,
}

/// Istio's `Percent`: `{value: 0.0..=100.0}`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentSpec {
    /// Percent.
    #[serde(default)]
    pub value: f64,
}

/// A share of requests in millionths (Istio translates a percentage to Envoy's
/// `FractionalPercent` over `MILLION` as `value * 10000`, truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction(u32);

impl Fraction {
    /// One million millionths.
    pub const MILLION: u32 = 1_000_000;
    /// Every request.
    pub const ALL: Fraction = Fraction(Self::MILLION);
    /// No request.
    pub const NONE: Fraction = Fraction(0);

    /// From a percentage in `0.0..=100.0` (`None` outside it, or not a number).
    pub fn from_percent(p: f64) -> Option<Fraction> {
        (0.0..=100.0)
            .contains(&p)
            .then_some(Fraction((p * 10_000.0) as u32))
    }

    /// From millionths (capped at a million).
    pub fn from_millionths(m: u32) -> Fraction {
        Fraction(m.min(Self::MILLION))
    }

    /// The share in millionths.
    pub fn millionths(self) -> u32 {
        self.0
    }

    /// Whether a request with the uniformly random `roll` is in the share: `roll` scaled to
    /// `0..MILLION` (no modulo bias) is below it.
    pub fn hits(self, roll: u32) -> bool {
        ((u64::from(roll) * u64::from(Self::MILLION)) >> 32) < u64::from(self.0)
    }
}

/// How an abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// This HTTP status.
    Http(StatusCode),
    /// A gRPC trailers-only answer with this `grpc-status` code.
    Grpc(u8),
}

/// A compiled `fault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPolicy {
    /// The delay and the share delayed.
    pub delay: Option<(Duration, Fraction)>,
    /// The abort and the share aborted.
    pub abort: Option<(Abort, Fraction)>,
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer so, instead of forwarding.
    pub abort: Option<Abort>,
}

impl FaultDecision {
    /// Whether the request goes on untouched.
    pub fn is_none(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

impl FaultPolicy {
    /// The decision for a request, from two independent uniformly random rolls (Envoy draws
    /// the delay and the abort separately).
    pub fn decide(&self, delay_roll: u32, abort_roll: u32) -> FaultDecision {
        FaultDecision {
            delay: self
                .delay
                .and_then(|(d, f)| f.hits(delay_roll).then_some(d)),
            abort: self
                .abort
                .and_then(|(a, f)| f.hits(abort_roll).then_some(a)),
        }
    }
}

/// gRPC status names as Istio accepts them in `grpcStatus`, by code.
const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn push(errs: &mut Vec<FieldError>, field: String, reason: impl Into<String>) {
    errs.push(FieldError {
        field,
        reason: reason.into(),
    });
}

/// The share at `f`: `percentage` (`f.percentage.value`) if set, else the legacy `percent`,
/// else none (Istio: "If not specified, no request will be aborted/delayed").
pub(crate) fn share(
    percentage: Option<PercentSpec>,
    percent: Option<i64>,
    f: &str,
    errs: &mut Vec<FieldError>,
) -> Fraction {
    if let Some(p) = percentage {
        return Fraction::from_percent(p.value).unwrap_or_else(|| {
            push(errs, format!("{f}.percentage.value"), "must be in 0..=100");
            Fraction::NONE
        });
    }
    match percent {
        None => Fraction::NONE,
        Some(p) if (0..=100).contains(&p) => Fraction(p as u32 * 10_000),
        Some(_) => {
            push(errs, format!("{f}.percent"), "must be in 0..=100");
            Fraction::NONE
        }
    }
}

/// Compiles `fault` at `f` (`spec.http[i].fault`); problems are reported by field path.
pub fn compile(spec: &FaultSpec, f: &str, errs: &mut Vec<FieldError>) -> Option<FaultPolicy> {
    let before = errs.len();
    if spec.delay.is_none() && spec.abort.is_none() {
        // Istio validation: "fault injection must have an abort and/or a delay".
        push(errs, f.to_owned(), "set delay, abort or both");
    }
    let delay = spec.delay.as_ref().and_then(|d| delay(d, f, errs));
    let abort = spec.abort.as_ref().and_then(|a| abort(a, f, errs));
    (errs.len() == before).then_some(FaultPolicy { delay, abort })
}

fn delay(d: &DelaySpec, f: &str, errs: &mut Vec<FieldError>) -> Option<(Duration, Fraction)> {
    let f = format!("{f}.delay");
    if d.exponential_delay.is_some() {
        push(
            errs,
            format!("{f}.exponentialDelay"),
            "not supported (Istio does not implement it either)",
        );
    }
    let share = share(d.percentage, d.percent, &f, errs);
    let Some(t) = d.fixed_delay.as_deref() else {
        push(errs, format!("{f}.fixedDelay"), "required");
        return None;
    };
    // Istio: fixedDelay is a duration of at least 1ms ([`crate::duration`]).
    match crate::duration::parse_in(t, crate::duration::Range::AT_LEAST_1MS) {
        Ok(t) => Some((t, share)),
        Err(_) => {
            push(
                errs,
                format!("{f}.fixedDelay"),
                format!("{t:?} is not a duration of at least 1ms"),
            );
            None
        }
    }
}

fn abort(a: &AbortSpec, f: &str, errs: &mut Vec<FieldError>) -> Option<(Abort, Fraction)> {
    let f = format!("{f}.abort");
    let share = share(a.percentage, a.percent, &f, errs);
    if a.http2_error.is_some() {
        push(
            errs,
            format!("{f}.http2Error"),
            "not supported (Istio does not implement it either)",
        );
        return None;
    }
    match (a.http_status, a.grpc_status.as_deref()) {
        (Some(_), Some(_)) => {
            push(errs, f, "set only one of httpStatus, grpcStatus");
            None
        }
        (Some(s), None) => match u16::try_from(s).ok().filter(|s| (200..=599).contains(s)) {
            Some(s) => StatusCode::from_u16(s)
                .ok()
                .map(|s| (Abort::Http(s), share)),
            None => {
                push(
                    errs,
                    format!("{f}.httpStatus"),
                    format!("{s} is not in 200..=599"),
                );
                None
            }
        },
        (None, Some(g)) => match GRPC_STATUS.iter().position(|n| *n == g) {
            Some(code) => Some((Abort::Grpc(code as u8), share)),
            None => {
                push(
                    errs,
                    format!("{f}.grpcStatus"),
                    format!("{g:?} is not a gRPC status name (e.g. UNAVAILABLE)"),
                );
                None
            }
        },
        (None, None) => {
            push(errs, f, "set httpStatus or grpcStatus");
            None
        }
    }
}

#[cfg(test)]
#[path = "fault_tests.rs"]
mod tests;
