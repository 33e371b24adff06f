//! Retries (`VirtualService` `http[].retries`), sans-IO: the spec as users write it, the
//! compiled [`RetryPolicy`], whether an attempt's outcome is retriable ([`RetryPolicy::retriable`])
//! and Envoy's jittered exponential backoff ([`Backoff`]), from random rolls the caller passes
//! in. No clock reads, no I/O.
//!
//! Istio's semantics (`pilot/pkg/networking/core/route/retry`): a route without `retries`
//! gets the mesh's default policy (MeshConfig `defaultHttpRetryPolicy`, else Istio's: 2
//! retries on `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
//! with 503 as the retriable status); `attempts: 0` turns retries off; `attempts` counts
//! retries, not tries; numbers in `retryOn` are retriable status codes; retries avoid the
//! hosts already tried (`previous_hosts`) unless `retryIgnorePreviousHosts` is `true`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::layer::UpstreamFailure;
use mesh_authz::istio::FieldError;

/// `http[].retries` (Istio `HTTPRetry`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries allowed (not counting the first try); 0 turns retries off.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// Timeout of each try (the first one included), e.g. `2s`.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Comma-separated conditions (Envoy `x-envoy-retry-on` and `x-envoy-retry-grpc-on`
    /// values, and HTTP status codes).
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Retry in other localities: rejected when `true` (no locality-aware retry priority).
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    /// Retry on the hosts already tried too (Istio 1.26; default `false`: avoid them).
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// The base backoff interval (Istio 1.26; Envoy's default 25 ms); the cap is 10 times it.
    #[serde(default)]
    pub backoff: Option<String>,
}

/// What a retry may be attempted on: Envoy's `retry_on` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(u32);

impl RetryOn {
    /// `5xx`: any 5xx response, or no response at all (connect failure, reset, per-try timeout).
    pub const FIVE_XX: RetryOn = RetryOn(1);
    /// `gateway-error`: 502, 503, 504, or no response at all.
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    /// `reset`: no response (disconnect, reset, per-try timeout).
    pub const RESET: RetryOn = RetryOn(1 << 2);
    /// `connect-failure`: the connection could not be opened.
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    /// `retriable-4xx`: 409.
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    /// `refused-stream`: HTTP/2 `REFUSED_STREAM`.
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    /// `retriable-status-codes`: the policy's codes.
    pub const STATUS_CODES: RetryOn = RetryOn(1 << 6);
    /// `envoy-ratelimited`: a response with `x-envoy-ratelimited`.
    pub const RATELIMITED: RetryOn = RetryOn(1 << 7);
    /// gRPC `cancelled` (1).
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 8);
    /// gRPC `deadline-exceeded` (4).
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 9);
    /// gRPC `resource-exhausted` (8).
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    /// gRPC `internal` (13).
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 11);
    /// gRPC `unavailable` (14).
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 12);

    /// Whether every condition of `other` is set.
    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any condition of `other` is set.
    pub fn any(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    fn token(t: &str) -> Option<RetryOn> {
        Some(match t {
            "5xx" => Self::FIVE_XX,
            "gateway-error" => Self::GATEWAY_ERROR,
            "reset" => Self::RESET,
            "connect-failure" => Self::CONNECT_FAILURE,
            "retriable-4xx" => Self::RETRIABLE_4XX,
            "refused-stream" => Self::REFUSED_STREAM,
            "retriable-status-codes" => Self::STATUS_CODES,
            "envoy-ratelimited" => Self::RATELIMITED,
            "cancelled" => Self::GRPC_CANCELLED,
            "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
            "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
            "internal" => Self::GRPC_INTERNAL,
            "unavailable" => Self::GRPC_UNAVAILABLE,
            _ => return None,
        })
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, o: RetryOn) -> RetryOn {
        RetryOn(self.0 | o.0)
    }
}

/// Conditions Envoy knows that this data plane does not implement (rejected by name).
const UNSUPPORTED_RETRY_ON: &[&str] = &[
    "retriable-headers",
    "reset-before-request",
    "http3-post-connect-failure",
];

/// Most status codes a policy lists (a bound on per-request work).
pub const MAX_CODES: usize = 32;

/// Most retries a policy allows: far above any sane use, a bound on one request's work
/// (the retry budget bounds them across requests).
pub const MAX_RETRIES: u32 = 100;

/// Envoy's default base backoff interval (`upstream.base_retry_backoff_ms`).
pub const DEFAULT_BASE_BACKOFF: Duration = Duration::from_millis(25);

/// A compiled retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (≥ 1: a policy with none is no policy).
    pub retries: u32,
    /// The timeout of each try, if any.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub on: RetryOn,
    /// Retriable status codes (for [`RetryOn::STATUS_CODES`]).
    pub codes: Vec<u16>,
    /// Backoff between tries.
    pub backoff: Backoff,
    /// Retries avoid the upstream addresses already tried (Envoy's `previous_hosts`).
    pub avoid_previous_hosts: bool,
}

/// What one try of a request came to, as the retry decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head from the upstream.
    Response {
        /// Its status.
        status: u16,
        /// `grpc-status` in its headers (a trailers-only gRPC response), if any.
        grpc_status: Option<u32>,
        /// It carries `x-envoy-ratelimited`.
        ratelimited: bool,
    },
    /// No response: the upstream failed.
    Failed(UpstreamFailure),
    /// The try's own timeout fired.
    PerTryTimeout,
}

impl RetryPolicy {
    /// Istio's default policy (`retry.DefaultPolicy`): 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`, 503,
    /// previous hosts avoided, Envoy's default backoff.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            retries: 2,
            per_try_timeout: None,
            on: RetryOn::CONNECT_FAILURE
                | RetryOn::REFUSED_STREAM
                | RetryOn::GRPC_UNAVAILABLE
                | RetryOn::GRPC_CANCELLED
                | RetryOn::STATUS_CODES,
            codes: vec![503],
            backoff: Backoff::envoy(DEFAULT_BASE_BACKOFF),
            avoid_previous_hosts: true,
        }
    }

    /// Whether a try that came to `outcome` may be retried under this policy.
    pub fn retriable(&self, outcome: Outcome) -> bool {
        let on = self.on;
        let no_response = RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET;
        match outcome {
            Outcome::PerTryTimeout => on.any(no_response),
            Outcome::Failed(f) => {
                on.any(no_response)
                    || (f == UpstreamFailure::ConnectFailure
                        && on.contains(RetryOn::CONNECT_FAILURE))
                    || (f == UpstreamFailure::RefusedStream && on.contains(RetryOn::REFUSED_STREAM))
            }
            Outcome::Response {
                status,
                grpc_status,
                ratelimited,
            } => {
                (on.contains(RetryOn::FIVE_XX) && (500..600).contains(&status))
                    || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
                    || (on.contains(RetryOn::RETRIABLE_4XX) && status == 409)
                    || (on.contains(RetryOn::STATUS_CODES) && self.codes.contains(&status))
                    || (on.contains(RetryOn::RATELIMITED) && ratelimited)
                    || grpc_status.is_some_and(|g| self.grpc_retriable(g))
            }
        }
    }

    fn grpc_retriable(&self, code: u32) -> bool {
        let flag = match code {
            1 => RetryOn::GRPC_CANCELLED,
            4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
            8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
            13 => RetryOn::GRPC_INTERNAL,
            14 => RetryOn::GRPC_UNAVAILABLE,
            _ => return false,
        };
        self.on.contains(flag)
    }
}

/// Envoy's jittered exponential backoff (`JitteredExponentialBackOffStrategy`): the n-th
/// retry waits a uniformly random time below `min(base × 2ⁿ, max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First interval.
    pub base: Duration,
    /// Cap (Envoy: 10 × base by default).
    pub max: Duration,
}

impl Backoff {
    /// Envoy's backoff for a base interval: the cap is 10 times it.
    pub fn envoy(base: Duration) -> Backoff {
        Backoff {
            base,
            max: base.saturating_mul(10),
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), from a random roll.
    pub fn delay(&self, retry: u32, roll: u64) -> Duration {
        let base = self.base.as_millis().max(1);
        let max = self.max.as_millis().max(base);
        let exp = retry.saturating_sub(1).min(32);
        let interval = base.saturating_mul(1u128 << exp).min(max);
        let ms = u128::from(roll) % interval;
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// What the route's `retries` resolve to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RetrySetting {
    /// No `retries` on the route: the mesh's default policy.
    #[default]
    MeshDefault,
    /// `attempts: 0`: no retries.
    Off,
    /// The route's own policy.
    Policy(Arc<RetryPolicy>),
}

impl RetrySetting {
    /// The policy in force, with `default` the mesh's.
    pub fn resolve<'a>(
        &'a self,
        default: Option<&'a Arc<RetryPolicy>>,
    ) -> Option<&'a Arc<RetryPolicy>> {
        match self {
            RetrySetting::MeshDefault => default,
            RetrySetting::Off => None,
            RetrySetting::Policy(p) => Some(p),
        }
    }
}

fn push(errs: &mut Vec<FieldError>, field: String, reason: impl Into<String>) {
    errs.push(FieldError {
        field,
        reason: reason.into(),
    });
}

fn duration(v: Option<&str>, field: String, errs: &mut Vec<FieldError>) -> Option<Duration> {
    let v = v?;
    // Istio validation: durations must be at least 1ms ([`crate::duration`]).
    match crate::duration::parse_in(v, crate::duration::Range::AT_LEAST_1MS) {
        Ok(d) => Some(d),
        Err(_) => {
            push(
                errs,
                field,
                format!("{v:?}: a duration of at least 1ms (e.g. 2s, 300ms)"),
            );
            None
        }
    }
}

/// Compiles `retries` at `f` (`spec.http[i].retries`; `None`: the route has none).
pub fn compile(spec: Option<&RetrySpec>, f: &str, errs: &mut Vec<FieldError>) -> RetrySetting {
    let Some(spec) = spec else {
        return RetrySetting::MeshDefault;
    };
    compile_policy(spec, f, errs).map_or(RetrySetting::Off, |p| RetrySetting::Policy(Arc::new(p)))
}

/// Compiles an `HTTPRetry` at `f` into a policy (`None`: `attempts` is 0 or unset, which
/// turns retries off as in Istio, or a problem was reported).
pub fn compile_policy(
    spec: &RetrySpec,
    f: &str,
    errs: &mut Vec<FieldError>,
) -> Option<RetryPolicy> {
    let before = errs.len();
    if spec.retry_remote_localities == Some(true) {
        push(
            errs,
            format!("{f}.retryRemoteLocalities"),
            "not supported yet by this data plane (no locality-aware retry priority)",
        );
    }
    let attempts = spec.attempts.unwrap_or(0);
    if attempts < 0 || attempts > i64::from(MAX_RETRIES) {
        push(
            errs,
            format!("{f}.attempts"),
            format!("must be in 0..={MAX_RETRIES}"),
        );
    }
    let mut p = RetryPolicy::istio_default();
    p.per_try_timeout = duration(
        spec.per_try_timeout.as_deref(),
        format!("{f}.perTryTimeout"),
        errs,
    );
    if let Some(b) = duration(spec.backoff.as_deref(), format!("{f}.backoff"), errs) {
        p.backoff = Backoff::envoy(b);
    }
    p.avoid_previous_hosts = !spec.retry_ignore_previous_hosts.unwrap_or(false);
    if let Some(on) = spec.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        (p.on, p.codes) = retry_on(on, &format!("{f}.retryOn"), errs);
    }
    if errs.len() > before || attempts <= 0 {
        return None;
    }
    p.retries = u32::try_from(attempts).unwrap_or(MAX_RETRIES);
    Some(p)
}

/// `retryOn`: conditions and status codes; codes imply `retriable-status-codes` (Istio).
fn retry_on(s: &str, f: &str, errs: &mut Vec<FieldError>) -> (RetryOn, Vec<u16>) {
    let mut on = RetryOn::default();
    let mut codes = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if let Some(flag) = RetryOn::token(t) {
            on = on | flag;
        } else if let Ok(code) = t.parse::<u16>() {
            if !(100..=599).contains(&code) {
                push(
                    errs,
                    f.to_owned(),
                    format!("{t:?} is not an HTTP status code"),
                );
            } else if codes.len() >= MAX_CODES {
                push(
                    errs,
                    f.to_owned(),
                    format!("at most {MAX_CODES} status codes"),
                );
            } else if !codes.contains(&code) {
                codes.push(code);
            }
        } else if UNSUPPORTED_RETRY_ON.contains(&t) {
            push(
                errs,
                f.to_owned(),
                format!("{t:?}: not supported yet by this data plane"),
            );
        } else {
            push(
                errs,
                f.to_owned(),
                format!("{t:?} is not a retry condition"),
            );
        }
    }
    if !codes.is_empty() {
        on = on | RetryOn::STATUS_CODES;
    }
    (on, codes)
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
