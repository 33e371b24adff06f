#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn compiled(json: &str) -> Result<FaultPolicy, Vec<FieldError>> {
    let spec: FaultSpec = serde_json::from_str(json).unwrap();
    let mut errs = Vec::new();
    compile(&spec, "spec.http[0].fault", &mut errs).ok_or(errs)
}

fn fields(e: &[FieldError]) -> Vec<&str> {
    e.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn delay_and_abort_compile() {
    // Istio VirtualService reference, HTTPFaultInjection: `percentage.value` is a double in
    // [0, 100]; istiod translates it to Envoy's FractionalPercent over MILLION (value * 10000).
    let p = compiled(
        r#"{"delay": {"fixedDelay": "5s", "percentage": {"value": 0.1}},
            "abort": {"httpStatus": 503, "percentage": {"value": 12.5}}}"#,
    )
    .unwrap();
    assert_eq!(
        p.delay,
        Some((Duration::from_secs(5), Fraction::from_percent(0.1).unwrap()))
    );
    assert_eq!(p.delay.unwrap().1.millionths(), 1000);
    assert_eq!(
        p.abort.unwrap().0,
        Abort::Http(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(p.abort.unwrap().1.millionths(), 125_000);
}

#[test]
fn legacy_percent_and_missing_share() {
    // Istio: the deprecated integer `percent` is used only when `percentage` is not set.
    let p = compiled(r#"{"delay": {"fixedDelay": "100ms", "percent": 50}}"#).unwrap();
    assert_eq!(p.delay.unwrap().1.millionths(), 500_000);
    let p =
        compiled(r#"{"delay": {"fixedDelay": "1s", "percent": 50, "percentage": {"value": 100}}}"#)
            .unwrap();
    assert_eq!(p.delay.unwrap().1, Fraction::ALL);
    // Istio docs (HTTPFaultInjection.Abort.percentage): "If not specified, no request will be
    // aborted" (istiod leaves Envoy's percentage at 0).
    let p = compiled(r#"{"abort": {"httpStatus": 500}}"#).unwrap();
    assert_eq!(p.abort.unwrap().1, Fraction::NONE);
    assert!(p.decide(0, 0).is_none());
}

#[test]
fn grpc_status_is_a_name() {
    // Istio's API takes `grpcStatus` as a status name (istiod maps it with
    // SupportedGRPCStatus to Envoy's numeric `grpc_status`).
    let p = compiled(r#"{"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}"#)
        .unwrap();
    assert_eq!(p.abort.unwrap().0, Abort::Grpc(14));
    let e = compiled(r#"{"abort": {"grpcStatus": "14"}}"#).unwrap_err();
    assert_eq!(fields(&e), ["spec.http[0].fault.abort.grpcStatus"]);
}

#[test]
fn unsupported_and_invalid_are_named() {
    let e = compiled(
        r#"{"delay": {"exponentialDelay": "1s", "fixedDelay": "0s", "percentage": {"value": 101}},
            "abort": {"http2Error": "REFUSED_STREAM"}}"#,
    )
    .unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "spec.http[0].fault.delay.exponentialDelay",
            "spec.http[0].fault.delay.percentage.value",
            "spec.http[0].fault.delay.fixedDelay",
            "spec.http[0].fault.abort.http2Error",
        ]
    );
    let e = compiled(r#"{"abort": {"httpStatus": 600, "percent": 200}}"#).unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "spec.http[0].fault.abort.percent",
            "spec.http[0].fault.abort.httpStatus"
        ]
    );
    let e = compiled(r#"{"abort": {"httpStatus": 500, "grpcStatus": "INTERNAL"}}"#).unwrap_err();
    assert_eq!(fields(&e), ["spec.http[0].fault.abort"]);
    let e = compiled(r#"{}"#).unwrap_err();
    assert_eq!(fields(&e), ["spec.http[0].fault"]);
    assert!(serde_json::from_str::<FaultSpec>(r#"{"delay": {"fixed_delay": "1s"}}"#).is_err());
}

#[test]
fn shares_hold_statistically() {
    // Seeded rolls: 10% aborts and 30% delays over 100 000 requests, drawn independently.
    let p = compiled(
        r#"{"delay": {"fixedDelay": "1s", "percentage": {"value": 30}},
            "abort": {"httpStatus": 503, "percentage": {"value": 10}}}"#,
    )
    .unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut roll = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 32) as u32
    };
    let (mut delayed, mut aborted, mut both) = (0u32, 0u32, 0u32);
    for _ in 0..100_000 {
        let d = p.decide(roll(), roll());
        delayed += u32::from(d.delay.is_some());
        aborted += u32::from(d.abort.is_some());
        both += u32::from(d.delay.is_some() && d.abort.is_some());
    }
    assert!((29_000..31_000).contains(&delayed), "{delayed}");
    assert!((9_500..10_500).contains(&aborted), "{aborted}");
    assert!((2_700..3_300).contains(&both), "independent draws: {both}");
}

proptest! {
    #[test]
    fn share_is_exact_over_the_roll_space(pct in 0.0f64..=100.0, roll in any::<u32>()) {
        let f = Fraction::from_percent(pct).unwrap();
        // Monotone in the roll: a hit roll stays a hit for every smaller roll.
        if f.hits(roll) {
            prop_assert!(f.hits(roll / 2));
        }
        prop_assert!(Fraction::ALL.hits(roll));
        prop_assert!(!Fraction::NONE.hits(roll));
    }

    #[test]
    fn decide_never_invents_a_fault(d in any::<u32>(), a in any::<u32>(), ms in 1u64..100_000) {
        let p = FaultPolicy { delay: Some((Duration::from_millis(ms), Fraction::NONE)), abort: None };
        prop_assert!(p.decide(d, a).is_none());
        let p = FaultPolicy { delay: Some((Duration::from_millis(ms), Fraction::ALL)), abort: None };
        prop_assert_eq!(p.decide(d, a).delay, Some(Duration::from_millis(ms)));
        prop_assert_eq!(p.decide(d, a).abort, None);
    }

    #[test]
    fn compile_never_panics(s in "\\PC{0,12}", n in any::<i64>(), v in any::<f64>()) {
        let spec = FaultSpec {
            delay: Some(DelaySpec { fixed_delay: Some(s.clone()), percentage: Some(PercentSpec { value: v }), percent: Some(n), exponential_delay: None }),
            abort: Some(AbortSpec { http_status: Some(n), grpc_status: None, http2_error: None, percentage: None, percent: Some(n) }),
        };
        let mut errs = Vec::new();
        let _ = compile(&spec, "f", &mut errs);
        let _ = crate::duration::parse(&s);
    }
}
