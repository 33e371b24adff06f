//! Compilers of the spec's field types shared by the route formats (string matches, header
//! names and operations, durations): each reports problems with the field path given.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use mesh_authz::istio::FieldError;
use regex::Regex;

use super::{HeaderOps, HeaderRules, StringMatch};
use crate::istio::{HeaderOpsSpec, HeadersSpec, StringMatchSpec};

/// A `StringMatchSpec` at `field`: exactly one of exact, prefix, regex (anchored).
pub(super) fn string_match(
    s: &StringMatchSpec,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Option<StringMatch> {
    let n = usize::from(s.exact.is_some())
        + usize::from(s.prefix.is_some())
        + usize::from(s.regex.is_some());
    if n != 1 {
        errs.push(FieldError {
            field: field.to_owned(),
            reason: "set exactly one of exact, prefix, regex".into(),
        });
        return None;
    }
    if let Some(e) = &s.exact {
        return Some(StringMatch::Exact(e.clone()));
    }
    if let Some(p) = &s.prefix {
        return Some(StringMatch::Prefix(p.clone()));
    }
    let re = s.regex.as_deref().unwrap_or_default();
    match Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => Some(StringMatch::Regex(r)),
        Err(e) => {
            errs.push(FieldError {
                field: format!("{field}.regex"),
                reason: format!("invalid regular expression: {e}"),
            });
            None
        }
    }
}

/// A header name (lower-cased) at `field`.
pub(crate) fn header_name(n: &str, field: &str, errs: &mut Vec<FieldError>) -> Option<HeaderName> {
    match HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errs.push(FieldError {
                field: field.to_owned(),
                reason: format!("{n:?} is not a header name"),
            });
            None
        }
    }
}

/// Header operations (`set`, `add`, `remove`) at `field`.
fn ops(spec: Option<&HeaderOpsSpec>, field: &str, errs: &mut Vec<FieldError>) -> HeaderOps {
    let mut out = HeaderOps::default();
    let Some(spec) = spec else { return out };
    let pairs = |m: &BTreeMap<String, String>, kind: &str, errs: &mut Vec<FieldError>| {
        let mut v = Vec::new();
        for (k, val) in m {
            let f = format!("{field}.{kind}.{k}");
            let (Some(n), Ok(hv)) = (header_name(k, &f, errs), HeaderValue::from_str(val)) else {
                errs.push(FieldError {
                    field: f,
                    reason: "not a valid header".into(),
                });
                continue;
            };
            v.push((n, hv));
        }
        v
    };
    out.set = pairs(&spec.set, "set", errs);
    out.add = pairs(&spec.add, "add", errs);
    out.remove = spec
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, n)| header_name(n, &format!("{field}.remove[{i}]"), errs))
        .collect();
    out
}

/// Request and response header operations at `field`.
pub(super) fn rules(
    spec: Option<&HeadersSpec>,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> HeaderRules {
    HeaderRules {
        request: ops(
            spec.and_then(|h| h.request.as_ref()),
            &format!("{field}.request"),
            errs,
        ),
        response: ops(
            spec.and_then(|h| h.response.as_ref()),
            &format!("{field}.response"),
            errs,
        ),
    }
}

/// Reports the field as not supported yet when it is `present`.
pub(super) fn unsupported(present: bool, field: &str, errs: &mut Vec<FieldError>) {
    if present {
        errs.push(FieldError {
            field: field.to_owned(),
            reason: "not supported yet by this data plane".into(),
        });
    }
}

/// A route's `timeout` (`300ms`, `1.5s`, `2m`, `1h`; `0s`: none): the mesh's one duration
/// parser ([`crate::duration`]), any value allowed.
pub(super) fn parse_timeout(s: &str) -> Option<Duration> {
    crate::duration::parse(s).ok()
}

/// A port number (`None` when not given); one out of range is reported at `field()`.
pub(crate) fn port(
    p: Option<u32>,
    field: impl FnOnce() -> String,
    errs: &mut Vec<FieldError>,
) -> Option<u16> {
    match p {
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        Some(p) => {
            errs.push(FieldError {
                field: field(),
                reason: format!("{p} is not a port"),
            });
            None
        }
        None => None,
    }
}
