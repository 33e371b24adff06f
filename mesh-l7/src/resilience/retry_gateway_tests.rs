#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::RouteTable;
use crate::gateway::HttpRouteSpec;

fn compiled(json: &str) -> Result<RouteTable, Vec<FieldError>> {
    let spec: HttpRouteSpec = serde_json::from_str(json).unwrap();
    RouteTable::from_http_route(&spec, "web.ns.svc", |n| Some(format!("{n}.ns.svc")))
}

fn rule(extra: &str) -> String {
    format!(r#"{{"rules": [{{"backendRefs": [{{"name": "web", "port": 80}}]{extra}}}]}}"#)
}

#[test]
fn durations_follow_gep_2257() {
    // Gateway API Duration: ^([0-9]{1,5}(h|m|s|ms)){1,4}$.
    assert_eq!(parse_gateway_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(
        parse_gateway_duration("1h30m"),
        Some(Duration::from_secs(5400))
    );
    assert_eq!(
        parse_gateway_duration("500ms"),
        Some(Duration::from_millis(500))
    );
    assert_eq!(parse_gateway_duration("0s"), Some(Duration::ZERO));
    for bad in ["", "1.5s", "10", "s", "123456s", "1h1m1s1ms1h", "-1s", "1d"] {
        assert_eq!(parse_gateway_duration(bad), None, "{bad}");
    }
}

#[test]
fn timeouts_are_the_route_timeout_and_the_per_try_timeout() {
    // GEP-1742: timeouts.request spans the whole request (retries included);
    // backendRequest bounds each request to a backend.
    let t = compiled(&rule(
        r#", "timeouts": {"request": "10s", "backendRequest": "2s"}"#,
    ))
    .unwrap();
    let r = &t.routes[0];
    assert_eq!(r.timeout, Some(Duration::from_secs(10)));
    let RetrySetting::Policy(p) = &r.retries else {
        panic!("{:?}", r.retries)
    };
    assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        p.retries, 2,
        "Istio's default policy, with the per-try timeout"
    );
    // GEP-1742: backendRequest longer than request is invalid.
    let e = compiled(&rule(
        r#", "timeouts": {"request": "1s", "backendRequest": "2s"}"#,
    ))
    .unwrap_err();
    assert_eq!(e[0].field, "spec.rules[0].timeouts.backendRequest");
    let e = compiled(&rule(r#", "timeouts": {"request": "1.5s"}"#)).unwrap_err();
    assert_eq!(e[0].field, "spec.rules[0].timeouts.request");
    let t = compiled(&rule("")).unwrap();
    assert_eq!(
        (t.routes[0].timeout, &t.routes[0].retries),
        (None, &RetrySetting::MeshDefault)
    );
}

#[test]
fn retry_codes_attempts_and_backoff() {
    // GEP-1731: codes (400-599) to retry, attempts (max retries, 0: none), backoff.
    let t = compiled(&rule(
        r#", "retry": {"codes": [500, 502], "attempts": 3, "backoff": "100ms"}"#,
    ))
    .unwrap();
    let RetrySetting::Policy(p) = &t.routes[0].retries else {
        panic!()
    };
    assert_eq!(p.retries, 3);
    assert_eq!(p.codes, vec![500, 502]);
    assert!(p.on.contains(RetryOn::STATUS_CODES | RetryOn::CONNECT_FAILURE));
    assert_eq!(p.backoff.base, Duration::from_millis(100));
    let t = compiled(&rule(r#", "retry": {"attempts": 0}"#)).unwrap();
    assert_eq!(t.routes[0].retries, RetrySetting::Off);
    let e = compiled(&rule(r#", "retry": {"codes": [200, 600], "attempts": -1}"#)).unwrap_err();
    let f: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        f,
        [
            "spec.rules[0].retry.attempts",
            "spec.rules[0].retry.codes[0]",
            "spec.rules[0].retry.codes[1]"
        ]
    );
    assert!(
        serde_json::from_str::<HttpRouteSpec>(&rule(r#", "retry": {"perTry": "1s"}"#)).is_err()
    );
}

proptest! {
    /// Any string either parses to at most 4 x 99999 h or is refused; never panics.
    #[test]
    fn duration_parser_is_total(s in "[0-9hms]{0,24}") {
        if let Some(d) = parse_gateway_duration(&s) {
            prop_assert!(d <= Duration::from_secs(4 * 99_999 * 3600));
        }
    }
}
