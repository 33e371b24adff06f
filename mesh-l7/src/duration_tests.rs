#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn istio_and_protobuf_forms_parse() {
    // protobuf JSON Duration: decimal seconds with an `s` suffix, fractions allowed
    // (google/protobuf/duration.proto: "1.000340012s"); Istio's examples: `timeout: 0.5s`,
    // `perTryTimeout: 2s`, `fixedDelay: 5s`, `baseEjectionTime: 15m`, `interval: 5m`.
    assert_eq!(parse("0.5s"), Ok(ms(500)));
    assert_eq!(parse("1.5s"), Ok(ms(1500)));
    assert_eq!(parse("1.000340012s"), Ok(Duration::new(1, 340_012)));
    assert_eq!(parse("300ms"), Ok(ms(300)));
    assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse("1.5ms"), Ok(Duration::from_micros(1500)));
    assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
    assert_eq!(parse("10µs"), Ok(Duration::from_micros(10)));
    assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
    assert_eq!(parse(" 2s "), Ok(ms(2000)));
    assert_eq!(parse(".5s"), Ok(ms(500)));
    assert_eq!(parse("0s"), Ok(Duration::ZERO));
}

#[test]
fn other_forms_are_refused() {
    // A bare number has no unit (protobuf JSON requires `s`); signs, exponents and
    // non-finite values are not durations; `infs` used to panic a float-based parser.
    for bad in [
        "", "30", "-1s", "+1s", "1e3s", "infs", "NaNs", "1.s.", "s", "1d", "1 s", "1sm", "..s",
        "1.2.3s",
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    assert!(matches!(parse("1d"), Err(DurationError::Unit { .. })));
    assert!(matches!(
        parse("99999999999999999999999h"),
        Err(DurationError::Overflow(_))
    ));
}

#[test]
fn ranges_are_the_fields_rules() {
    // Istio validation: durations MUST be >= 1ms (ValidateDuration).
    assert!(matches!(
        parse_in("0.5ms", Range::AT_LEAST_1MS),
        Err(DurationError::TooSmall { .. })
    ));
    assert_eq!(parse_in("1ms", Range::AT_LEAST_1MS), Ok(ms(1)));
    let r = Range {
        min: Duration::ZERO,
        max: ms(10),
    };
    assert!(matches!(
        parse_in("11ms", r),
        Err(DurationError::TooLarge { .. })
    ));
}

proptest! {
    /// Any input gives a value or an error, never a panic.
    #[test]
    fn never_panics(s in "\\PC{0,32}") {
        let _ = parse(&s);
    }

    /// Inputs made of the grammar's pieces never panic either.
    #[test]
    fn never_panics_on_near_misses(s in "[0-9.hmsunµ]{0,40}") {
        let _ = parse(&s);
    }

    /// The protobuf JSON form reads back to the same value.
    #[test]
    fn round_trips(secs in 0u64..=315_576_000_000, nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos);
        prop_assert_eq!(parse(&format(d)), Ok(d));
    }
}

#[test]
fn gateway_api_durations_keep_gep_2257s_grammar() {
    // Gateway API Duration (GEP-2257): ^([0-9]{1,5}(h|m|s|ms)){1,4}$.
    assert_eq!(parse_gateway("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_gateway("500ms"), Ok(ms(500)));
    for bad in [
        "",
        "1.5s",
        "10",
        "123456s",
        "1h1m1s1ms1h",
        " 1s",
        "1us",
        "-1s",
    ] {
        assert!(parse_gateway(bad).is_err(), "{bad:?}");
    }
}

proptest! {
    /// The Gateway API grammar is a subset: whatever it accepts, [`parse`] reads the same.
    #[test]
    fn gateway_is_a_subset(s in "[0-9hms]{0,24}") {
        if let Ok(d) = parse_gateway(&s) {
            prop_assert_eq!(parse(&s), Ok(d));
        }
    }
}
