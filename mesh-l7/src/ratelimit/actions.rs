//! Route and virtual host `rate_limits` checked into descriptor recipes (Envoy's
//! `RateLimit.Action`: request_headers, remote_address, masked_remote_address, generic_key,
//! header_value_match).

use super::descriptor::{Action, HeaderCond, HeaderRef, HeaderTest, Recipe};
use super::envoy::{ActionSpec, HeaderMatcherSpec, RateLimitEntry};
use super::fields::{err, reject};
use mesh_authz::istio::FieldError;

pub(super) fn recipes(rls: &[RateLimitEntry], at: &str, errs: &mut Vec<FieldError>) -> Vec<Recipe> {
    let mut out = Vec::new();
    for (i, rl) in rls.iter().enumerate() {
        let at = format!("{at}[{i}]");
        reject(
            errs,
            &at,
            &[
                ("stage", rl.stage.is_some()),
                ("disable_key", rl.disable_key.is_some()),
                ("limit", rl.limit.is_some()),
            ],
            "not supported by this data plane",
        );
        if rl.actions.is_empty() {
            err(errs, format!("{at}.actions"), "at least one action");
        }
        let actions = rl.actions.iter().enumerate();
        let actions = actions.filter_map(|(j, a)| action(a, &format!("{at}.actions[{j}]"), errs));
        out.push(Recipe {
            actions: actions.collect(),
        });
    }
    out
}

fn action(a: &ActionSpec, at: &str, errs: &mut Vec<FieldError>) -> Option<Action> {
    let given = [
        a.request_headers.is_some(),
        a.remote_address.is_some(),
        a.masked_remote_address.is_some(),
        a.generic_key.is_some(),
        a.header_value_match.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        err(
            errs,
            at,
            "exactly one of request_headers, remote_address, masked_remote_address, generic_key, header_value_match",
        );
        return None;
    }
    if a.remote_address.is_some() {
        return Some(Action::RemoteAddress);
    }
    if let Some(m) = &a.masked_remote_address {
        let (v4, v6) = (
            m.v4_prefix_mask_len.unwrap_or(32),
            m.v6_prefix_mask_len.unwrap_or(128),
        );
        if v4 > 32 {
            err(
                errs,
                format!("{at}.masked_remote_address.v4_prefix_mask_len"),
                "at most 32",
            );
        }
        if v6 > 128 {
            err(
                errs,
                format!("{at}.masked_remote_address.v6_prefix_mask_len"),
                "at most 128",
            );
        }
        return Some(Action::MaskedRemoteAddress {
            v4: v4.min(32) as u8,
            v6: v6.min(128) as u8,
        });
    }
    if let Some(g) = &a.generic_key {
        let key = g
            .descriptor_key
            .clone()
            .unwrap_or_else(|| "generic_key".into());
        return Some(Action::GenericKey {
            key,
            value: g.descriptor_value.clone(),
        });
    }
    if let Some(h) = &a.request_headers {
        let Some(header) = HeaderRef::parse(&h.header_name) else {
            err(
                errs,
                format!("{at}.request_headers.header_name"),
                "not a header name",
            );
            return None;
        };
        return Some(Action::RequestHeader {
            header,
            key: h.descriptor_key.clone(),
            skip_if_absent: h.skip_if_absent,
        });
    }
    let m = a.header_value_match.as_ref()?;
    let at = format!("{at}.header_value_match");
    let headers = m
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| header_cond(h, &format!("{at}.headers[{i}]"), errs));
    Some(Action::HeaderValueMatch {
        key: m
            .descriptor_key
            .clone()
            .unwrap_or_else(|| "header_match".into()),
        value: m.descriptor_value.clone(),
        expect_match: m.expect_match.unwrap_or(true),
        headers: headers.collect(),
    })
}

fn header_cond(h: &HeaderMatcherSpec, at: &str, errs: &mut Vec<FieldError>) -> Option<HeaderCond> {
    let Some(name) = HeaderRef::parse(&h.name) else {
        err(errs, format!("{at}.name"), "not a header name");
        return None;
    };
    let sm = h.string_match.as_ref();
    if let Some(s) = sm {
        reject(
            errs,
            &format!("{at}.string_match"),
            &[("ignore_case", s.ignore_case.is_some())],
            "not supported",
        );
    }
    let tests = [
        h.exact_match.clone().map(HeaderTest::Exact),
        h.prefix_match.clone().map(HeaderTest::Prefix),
        h.suffix_match.clone().map(HeaderTest::Suffix),
        h.present_match.map(HeaderTest::Present),
        sm.and_then(|s| s.exact.clone()).map(HeaderTest::Exact),
        sm.and_then(|s| s.prefix.clone()).map(HeaderTest::Prefix),
        sm.and_then(|s| s.suffix.clone()).map(HeaderTest::Suffix),
    ];
    let mut given = tests.into_iter().flatten();
    let (Some(test), None) = (given.next(), given.next()) else {
        err(
            errs,
            at,
            "exactly one of exact_match, prefix_match, suffix_match, present_match, string_match (exact, prefix or suffix)",
        );
        return None;
    };
    Some(HeaderCond {
        name,
        test,
        invert: h.invert_match,
    })
}
