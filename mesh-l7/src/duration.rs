//! The one parser of Istio / Envoy / Gateway API durations in configuration.
//!
//! Istio's duration fields (`VirtualService` `timeout`, `retries.perTryTimeout`,
//! `fault.delay.fixedDelay`, `DestinationRule` `outlierDetection.interval`, ext_authz
//! `timeout`, …) are `google.protobuf.Duration`s. Their JSON form is decimal seconds with an
//! `s` suffix (`1.5s`, `0.5s`); Istio's CRDs validate them as Go durations
//! (`duration(self) >= duration('1ms')`), so the YAML people write also uses Go's units:
//! `300ms`, `2m`, `1h`, and combinations such as `1h30m`. [`parse`] accepts exactly that: one
//! or more `<decimal><unit>` terms with the units `h`, `m`, `s`, `ms`, `us` (`µs`) and `ns`
//! (surrounding blanks ignored). A bare number (`30`), a sign, an exponent, `inf`/`NaN` or an
//! unknown unit are errors. Parsing is exact (no floating point) and total: any input gives a
//! value or an error, never a panic.
//!
//! Each field keeps its own rules (Istio's "at least 1ms", a gateway's maximum, "more than
//! 0s") as a [`Range`] given to [`parse_in`]. [`format`] writes the protobuf JSON form, which
//! [`parse`] reads back to the same value.

use std::time::Duration;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Not a duration at all.
    #[error("{0:?} is not a duration (e.g. 1.5s, 300ms, 2m, 1h)")]
    Syntax(String),
    /// A unit that is not one of `h`, `m`, `s`, `ms`, `us`, `ns`.
    #[error("{value:?}: unknown unit {unit:?} (use h, m, s, ms, us or ns)")]
    Unit {
        /// The whole value.
        value: String,
        /// The unit found.
        unit: String,
    },
    /// Beyond what a duration can hold.
    #[error("{0:?} is too large")]
    Overflow(String),
    /// Below the field's minimum.
    #[error("{value:?}: must be at least {min:?}")]
    TooSmall {
        /// The value.
        value: String,
        /// The field's minimum.
        min: Duration,
    },
    /// Above the field's maximum.
    #[error("{value:?}: must be at most {max:?}")]
    TooLarge {
        /// The value.
        value: String,
        /// The field's maximum.
        max: Duration,
    },
}

/// The values a field allows (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The smallest value allowed.
    pub min: Duration,
    /// The largest value allowed.
    pub max: Duration,
}

impl Range {
    /// Any duration.
    pub const ANY: Range = Range {
        min: Duration::ZERO,
        max: Duration::MAX,
    };

    /// Istio's rule for most duration fields: at least 1ms.
    pub const AT_LEAST_1MS: Range = Range {
        min: Duration::from_millis(1),
        max: Duration::MAX,
    };
}

/// Nanoseconds per unit.
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "h" => 3_600_000_000_000,
        "m" => 60_000_000_000,
        "s" => 1_000_000_000,
        "ms" => 1_000_000,
        "us" | "µs" => 1_000,
        "ns" => 1,
        _ => return None,
    })
}

/// The largest duration in nanoseconds.
const MAX_NANOS: u128 = Duration::MAX.as_nanos();

/// Parses an Istio / protobuf duration (see the module's grammar).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let value = s.trim();
    let syntax = || DurationError::Syntax(value.to_owned());
    if value.is_empty() {
        return Err(syntax());
    }
    let mut rest = value;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (nanos, tail) = term(rest, value)?;
        total = total
            .checked_add(nanos)
            .filter(|t| *t <= MAX_NANOS)
            .ok_or_else(|| DurationError::Overflow(value.to_owned()))?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| syntax())?;
    // Below 10⁹: fits.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// One `<decimal><unit>` term at the start of `s`: its nanoseconds and what follows.
fn term<'a>(s: &'a str, value: &str) -> Result<(u128, &'a str), DurationError> {
    let syntax = || DurationError::Syntax(value.to_owned());
    let overflow = || DurationError::Overflow(value.to_owned());
    let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (int, s) = s.split_at(int_len);
    let (frac, s) = match s.strip_prefix('.') {
        Some(t) => t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len())),
        None => ("", s),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(syntax());
    }
    let unit_len = s
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(s.len());
    let (unit, rest) = s.split_at(unit_len);
    if unit.is_empty() {
        return Err(syntax());
    }
    let per = unit_nanos(unit).ok_or_else(|| DurationError::Unit {
        value: value.to_owned(),
        unit: unit.to_owned(),
    })?;
    let mut nanos: u128 = 0;
    for d in int.bytes() {
        nanos = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(d - b'0')))
            .filter(|n| *n <= MAX_NANOS)
            .ok_or_else(overflow)?;
    }
    nanos = nanos.checked_mul(per).ok_or_else(overflow)?;
    // The fraction: digits past a nanosecond's precision are dropped (as Go does).
    let mut scale = per;
    for d in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        nanos += u128::from(d - b'0') * scale;
    }
    Ok((nanos, rest))
}

/// Parses `s` and checks it against the field's `range`.
pub fn parse_in(s: &str, range: Range) -> Result<Duration, DurationError> {
    let d = parse(s)?;
    if d < range.min {
        return Err(DurationError::TooSmall {
            value: s.trim().to_owned(),
            min: range.min,
        });
    }
    if d > range.max {
        return Err(DurationError::TooLarge {
            value: s.trim().to_owned(),
            max: range.max,
        });
    }
    Ok(d)
}

/// Parses a Gateway API duration (GEP-2257: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`, e.g. `1h30m`,
/// `500ms`): the stricter grammar is checked, the value is [`parse`]'s.
pub fn parse_gateway(s: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(s.to_owned());
    let mut rest = s;
    let mut terms = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return Err(syntax());
        }
        rest = &rest[digits..];
        let unit = if rest.starts_with("ms") { 2 } else { 1 };
        if !rest.starts_with(['h', 'm', 's']) {
            return Err(syntax());
        }
        rest = &rest[unit..];
        terms += 1;
    }
    if !(1..=4).contains(&terms) {
        return Err(syntax());
    }
    parse(s)
}

/// The protobuf JSON form of `d` (`1.5s`, `0.000000001s`), which [`parse`] reads back.
pub fn format(d: Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return format!("{}s", d.as_secs());
    }
    let frac = format!("{nanos:09}");
    format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
}

#[cfg(test)]
#[path = "duration_tests.rs"]
mod tests;
