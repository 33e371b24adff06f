//! Request headers as L7 policy sees them, so a header sent twice cannot slip past a rule.
//!
//! - A repeated header is one value, its values joined with `,` in order (Envoy's and so
//!   Istio's `request.headers[...]`); a header sent once is used as is, without allocating.
//! - Matching errs on denying: where a match leads to denial — `values` of a DENY rule,
//!   `notValues` of an ALLOW rule — every element of the list (split at `,`, trimmed) is tried
//!   as well as the joined value, so `x-role: user` + `x-role: admin` (or `x-role: user,
//!   admin`) meets a DENY on `admin`. Elsewhere the joined value alone is matched, as Envoy
//!   does (an ALLOW on `dev` does not admit `dev,prod`).

use std::borrow::Cow;

use crate::model::Action;
use crate::model::string::StringMatch;

/// The value of header `name` in `headers` as policies match it: absent, the single value
/// (borrowed), or the values joined with `,` (allocated only then). Bytes that are not UTF-8
/// are replaced (U+FFFD), never dropped: a value cannot hide by being invalid.
pub fn header_value<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<Cow<'h, str>> {
    join_values(
        headers
            .get_all(name)
            .iter()
            .map(http::HeaderValue::as_bytes),
    )
}

/// Joins header values with `,` as [`header_value`] does.
pub fn join_values<'h>(mut values: impl Iterator<Item = &'h [u8]>) -> Option<Cow<'h, str>> {
    let first = String::from_utf8_lossy(values.next()?);
    let Some(second) = values.next() else {
        return Some(first);
    };
    let mut joined = first.into_owned();
    for v in std::iter::once(second).chain(values) {
        joined.push(',');
        joined.push_str(&String::from_utf8_lossy(v));
    }
    Some(Cow::Owned(joined))
}

/// Whether one of `ms` matches `value`; with `every_element`, an element of the
/// comma-separated list matching is enough too.
fn hit(ms: &[StringMatch], value: &str, every_element: bool) -> bool {
    let one = |v: &str| ms.iter().any(|m| m.matches(Some(v)));
    one(value) || (every_element && value.contains(',') && value.split(',').any(|e| one(e.trim())))
}

/// A `request.headers[...]` condition (`values`, `notValues`) on `value` (absent: `None`),
/// for a rule of a policy with `action` (see the module docs).
pub(crate) fn condition_matches(
    action: Action,
    values: &[StringMatch],
    not_values: &[StringMatch],
    value: Option<&str>,
) -> bool {
    let Some(v) = value else {
        // Absent: no `values` match, every `notValues` holds.
        return values.is_empty();
    };
    let deny = action != Action::Allow;
    (values.is_empty() || hit(values, v, deny)) && !hit(not_values, v, !deny)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_only_repeated_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(header_value(&h, "x-a"), None);
        h.append("x-a", http::HeaderValue::from_static("one"));
        assert!(matches!(
            header_value(&h, "x-a"),
            Some(Cow::Borrowed("one"))
        ));
        h.append("x-a", http::HeaderValue::from_static("two"));
        h.append("x-a", http::HeaderValue::from_static(""));
        assert_eq!(header_value(&h, "x-a").as_deref(), Some("one,two,"));
        let bad = [&b"ok"[..], &b"\xffadmin"[..]];
        assert_eq!(
            join_values(bad.into_iter()).as_deref(),
            Some("ok,\u{fffd}admin")
        );
    }
}
