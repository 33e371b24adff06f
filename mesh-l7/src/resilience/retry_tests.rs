#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn policy(json: &str) -> Result<RetrySetting, Vec<FieldError>> {
    let spec: RetrySpec = serde_json::from_str(json).unwrap();
    let mut errs = Vec::new();
    let s = compile(Some(&spec), "spec.http[0].retries", &mut errs);
    if errs.is_empty() { Ok(s) } else { Err(errs) }
}

fn fields(e: &[FieldError]) -> Vec<&str> {
    e.iter().map(|e| e.field.as_str()).collect()
}

fn resp(status: u16) -> Outcome {
    Outcome::Response {
        status,
        grpc_status: None,
        ratelimited: false,
    }
}

#[test]
fn no_retries_field_is_the_mesh_default_and_istios_default_is_two_retries_on_503_and_connect_failures()
 {
    // Istio pilot/pkg/networking/core/route/retry/retry.go DefaultPolicy: NumRetries 2,
    // RetryOn "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    // RetriableStatusCodes [503], previous_hosts predicate.
    let mut errs = Vec::new();
    assert_eq!(compile(None, "f", &mut errs), RetrySetting::MeshDefault);
    let d = RetryPolicy::istio_default();
    assert_eq!(d.retries, 2);
    assert!(d.retriable(resp(503)));
    assert!(!d.retriable(resp(500)));
    assert!(!d.retriable(resp(502)));
    assert!(d.retriable(Outcome::Failed(UpstreamFailure::ConnectFailure)));
    assert!(d.retriable(Outcome::Failed(UpstreamFailure::RefusedStream)));
    // A reset after the request was sent is not retried by default (no `reset`).
    assert!(!d.retriable(Outcome::Failed(UpstreamFailure::Reset)));
    assert!(!d.retriable(Outcome::PerTryTimeout));
    assert!(d.retriable(Outcome::Response {
        status: 200,
        grpc_status: Some(14),
        ratelimited: false
    }));
    assert!(d.retriable(Outcome::Response {
        status: 200,
        grpc_status: Some(1),
        ratelimited: false
    }));
    assert!(!d.retriable(Outcome::Response {
        status: 200,
        grpc_status: Some(13),
        ratelimited: false
    }));
    assert!(d.avoid_previous_hosts);
    let d = Arc::new(d);
    assert_eq!(RetrySetting::MeshDefault.resolve(Some(&d)), Some(&d));
}

#[test]
fn attempts_zero_or_unset_turns_retries_off() {
    // Istio ConvertPolicy: "if in.Attempts <= 0 { return nil }" (retries explicitly disabled).
    assert_eq!(policy(r#"{"attempts": 0}"#).unwrap(), RetrySetting::Off);
    assert_eq!(
        policy(r#"{"perTryTimeout": "1s"}"#).unwrap(),
        RetrySetting::Off
    );
    assert_eq!(
        RetrySetting::Off.resolve(Some(&Arc::new(RetryPolicy::istio_default()))),
        None
    );
}

#[test]
fn attempts_count_retries_and_retry_on_replaces_the_default_conditions() {
    // Istio VirtualService HTTPRetry.attempts: "Number of retries to be allowed for a given
    // request"; ConvertPolicy starts from the default and overrides what is set.
    let RetrySetting::Policy(p) =
        policy(r#"{"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure,refused-stream"}"#)
            .unwrap()
    else {
        panic!("a policy")
    };
    assert_eq!(p.retries, 3);
    assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
    assert!(p.retriable(resp(502)) && p.retriable(resp(503)) && p.retriable(resp(504)));
    assert!(!p.retriable(resp(500)));
    // gateway-error also covers no response at all (Envoy wouldRetryFromReset).
    assert!(p.retriable(Outcome::Failed(UpstreamFailure::Reset)));
    assert!(p.retriable(Outcome::PerTryTimeout));
    // The default's grpc conditions were replaced.
    assert!(!p.retriable(Outcome::Response {
        status: 200,
        grpc_status: Some(14),
        ratelimited: false
    }));
}

#[test]
fn numeric_codes_in_retry_on_imply_retriable_status_codes() {
    // Istio ConvertPolicy: "If user has just specified HTTP status codes in retryOn but have
    // not specified retriable-status-codes, let us add it."
    let RetrySetting::Policy(p) = policy(r#"{"attempts": 1, "retryOn": "429, 500"}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(p.codes, vec![429, 500]);
    assert!(p.retriable(resp(429)) && p.retriable(resp(500)));
    assert!(!p.retriable(resp(503)));
    // Envoy: retriable-4xx is 409 only; 5xx is any 5xx and no response.
    let RetrySetting::Policy(p) =
        policy(r#"{"attempts": 1, "retryOn": "retriable-4xx,5xx,envoy-ratelimited"}"#).unwrap()
    else {
        panic!()
    };
    assert!(p.retriable(resp(409)) && !p.retriable(resp(429)));
    assert!(p.retriable(resp(500)) && p.retriable(resp(599)));
    assert!(p.retriable(Outcome::Failed(UpstreamFailure::ConnectionTermination)));
    assert!(p.retriable(Outcome::Response {
        status: 200,
        grpc_status: None,
        ratelimited: true
    }));
}

#[test]
fn unknown_and_unsupported_conditions_are_rejected_by_name() {
    let e = policy(
        r#"{"attempts": 2, "retryOn": "5xx,bogus,retriable-headers,999", "retryRemoteLocalities": true,
            "perTryTimeout": "0s", "backoff": "soon"}"#,
    )
    .unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "spec.http[0].retries.retryRemoteLocalities",
            "spec.http[0].retries.perTryTimeout",
            "spec.http[0].retries.backoff",
            "spec.http[0].retries.retryOn",
            "spec.http[0].retries.retryOn",
            "spec.http[0].retries.retryOn",
        ]
    );
    let e = policy(r#"{"attempts": -1}"#).unwrap_err();
    assert_eq!(fields(&e), ["spec.http[0].retries.attempts"]);
    let e = policy(r#"{"attempts": 1000000}"#).unwrap_err();
    assert_eq!(fields(&e), ["spec.http[0].retries.attempts"]);
    // `retryRemoteLocalities: false` is what Istio does without it.
    assert!(policy(r#"{"attempts": 1, "retryRemoteLocalities": false}"#).is_ok());
    // A field Istio's HTTPRetry does not have.
    assert!(serde_json::from_str::<RetrySpec>(r#"{"attempts": 1, "retries": 2}"#).is_err());
}

#[test]
fn backoff_and_previous_hosts() {
    // Istio 1.26: HTTPRetry.backoff sets Envoy's base interval (max 10x, Envoy's default);
    // retryIgnorePreviousHosts: true drops the previous_hosts predicate.
    let RetrySetting::Policy(p) =
        policy(r#"{"attempts": 1, "backoff": "100ms", "retryIgnorePreviousHosts": true}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        p.backoff,
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1)
        }
    );
    assert!(!p.avoid_previous_hosts);
}

#[test]
fn envoys_backoff_doubles_from_25ms_up_to_250ms() {
    // Envoy JitteredExponentialBackOffStrategy: random % interval, interval doubling from the
    // base (25 ms) to the max (10 x base).
    let b = Backoff::envoy(DEFAULT_BASE_BACKOFF);
    assert_eq!(b.delay(1, 24), Duration::from_millis(24));
    assert_eq!(b.delay(1, 25), Duration::ZERO);
    assert_eq!(b.delay(2, 49), Duration::from_millis(49));
    assert_eq!(b.delay(4, 199), Duration::from_millis(199));
    assert_eq!(b.delay(5, 249), Duration::from_millis(249));
    assert_eq!(b.delay(50, 249), Duration::from_millis(249));
    assert_eq!(b.delay(50, 250), Duration::ZERO);
}

proptest! {
    /// Every delay is below both the doubled base and the cap.
    #[test]
    fn backoff_is_bounded(base_ms in 1u64..1000, retry in 1u32..200, roll in any::<u64>()) {
        let b = Backoff::envoy(Duration::from_millis(base_ms));
        let d = b.delay(retry, roll);
        prop_assert!(d < b.max);
        let exp = 1u64.checked_shl(retry - 1).unwrap_or(u64::MAX);
        prop_assert!(u128::from(d.as_millis() as u64) < u128::from(base_ms) * u128::from(exp));
    }

    /// Whatever the retryOn string: it compiles or is rejected with the retryOn field, and a
    /// compiled policy never retries a 2xx without gRPC status.
    #[test]
    fn retry_on_never_panics_and_never_retries_success(s in "[a-z0-9,\\- ]{0,40}", status in 200u16..300) {
        let spec = RetrySpec { attempts: Some(1), retry_on: Some(s), ..RetrySpec::default() };
        let mut errs = Vec::new();
        if let Some(p) = compile_policy(&spec, "f", &mut errs) {
            prop_assert!(p.codes.len() <= MAX_CODES);
            let _ = p.retriable(resp(status));
        } else {
            prop_assert!(errs.iter().all(|e| e.field == "f.retryOn"));
        }
    }
}
