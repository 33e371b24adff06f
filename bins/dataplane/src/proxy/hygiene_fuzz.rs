//! Fuzzing the request checks (`check_request`, `normalize_authority`, private to
//! `hygiene`) over arbitrary methods, URIs, `Host` headers (none, one, two) and headers only
//! the mesh may set, and over valid requests with mutated parts.
//!
//! Properties: no panic, each call within the time bound, and
//! - a request is accepted only with an upper-case method, at most one `Host`, and a `Host`
//!   that equals the URI's authority (ASCII case aside) when both are present;
//! - the authority returned is lower case, its host has no trailing dot, it is what `Host`
//!   now says (when not empty), and normalizing it again changes nothing;
//! - no `x-forwarded-client-cert` or `x-envoy-*` header is left; other headers are kept.

use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use proptest::prelude::*;

use super::{check_request, mesh_only, normalize_authority};

// The sniff and hygiene fuzz modules each include it: a test-only helper, twice is fine.
#[allow(clippy::duplicate_mod)]
#[path = "../../../../fuzz/mutate.rs"]
mod mutate;

const DICT: &[&[u8]] = &[
    b".",
    b"..",
    b":",
    b":80",
    b"[",
    b"]",
    b"[::1]",
    b"@",
    b"http://",
    b"https://",
    b"/",
    b"?",
    b"*",
    b"A",
    b"xn--",
];

fn methods() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        mutate::bytes(12),
        mutate::near(
            vec![
                b"GET".to_vec(),
                b"POST".to_vec(),
                b"get".to_vec(),
                b"CONNECT".to_vec(),
                b"PURGE".to_vec(),
            ],
            DICT
        ),
    ]
}

fn uris() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        mutate::bytes(100),
        mutate::near(
            vec![
                b"/".to_vec(),
                b"/admin?x=1".to_vec(),
                b"http://echo.demo.svc/x".to_vec(),
                b"http://Echo.Demo.svc.:8080/x".to_vec(),
                b"http://[::1]:8080/".to_vec(),
                b"echo.demo.svc:443".to_vec(),
                b"*".to_vec(),
            ],
            DICT
        ),
    ]
}

fn hosts() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        mutate::bytes(100),
        mutate::near(
            vec![
                b"echo.demo.svc".to_vec(),
                b"Echo.Demo.svc.:8080".to_vec(),
                b"[::1]:80".to_vec(),
                b"::1".to_vec(),
                b"10.0.0.1:8080".to_vec(),
                b"a.b.".to_vec(),
            ],
            DICT
        ),
    ]
}

fn extra() -> impl Strategy<Value = Vec<(HeaderName, Vec<u8>)>> {
    let name = prop::sample::select(vec![
        HeaderName::from_static("x-forwarded-client-cert"),
        HeaderName::from_static("x-envoy-original-path"),
        HeaderName::from_static("x-envoy-"),
        HeaderName::from_static("x-user"),
        HeaderName::from_static("x-envoyx"),
    ]);
    prop::collection::vec((name, mutate::bytes(20)), 0..4)
}

/// The request, or `None` when `http` itself refuses a part (hyper would not deliver it).
fn request(
    method: &[u8],
    uri: &[u8],
    hosts: &[Vec<u8>],
    extra: &[(HeaderName, Vec<u8>)],
) -> Option<Request<()>> {
    let mut r = Request::new(());
    *r.method_mut() = Method::from_bytes(method).ok()?;
    *r.uri_mut() = Uri::try_from(uri).ok()?;
    for h in hosts {
        r.headers_mut()
            .append(header::HOST, HeaderValue::from_bytes(h).ok()?);
    }
    for (n, v) in extra {
        r.headers_mut()
            .append(n.clone(), HeaderValue::from_bytes(v).ok()?);
    }
    Some(r)
}

fn check(r: Request<()>) -> Result<(), TestCaseError> {
    let len = r.uri().to_string().len() + r.headers().iter().map(|(_, v)| v.len()).sum::<usize>();
    let mut out = r.clone();
    let got = mutate::timed("check_request", len, || {
        out = r.clone();
        check_request(&mut out)
    });
    let Ok(authority) = got else {
        return Ok(());
    };
    prop_assert!(!r.method().as_str().bytes().any(|b| b.is_ascii_lowercase()));
    let hosts: Vec<&HeaderValue> = r.headers().get_all(header::HOST).iter().collect();
    prop_assert!(hosts.len() <= 1);
    if let (Some(h), Some(u)) = (hosts.first(), r.uri().authority()) {
        prop_assert!(h.as_bytes().eq_ignore_ascii_case(u.as_str().as_bytes()));
    }
    prop_assert_eq!(&authority, &authority.to_ascii_lowercase());
    let again = mutate::timed("normalize_authority", authority.len(), || {
        normalize_authority(&authority)
    });
    prop_assert_eq!(&again, &authority, "normalizing twice differs");
    let host = match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => authority.as_str(),
    };
    prop_assert!(!host.ends_with('.'), "trailing dot kept in {:?}", authority);
    if !authority.is_empty() {
        let now: Vec<&HeaderValue> = out.headers().get_all(header::HOST).iter().collect();
        let want = HeaderValue::from_str(&authority).unwrap();
        prop_assert_eq!(now, vec![&want]);
    }
    for n in out.headers().keys() {
        prop_assert!(!mesh_only(n.as_str()), "{} kept", n);
    }
    let others = |r: &Request<()>| {
        r.headers()
            .iter()
            .filter(|(n, _)| !mesh_only(n.as_str()) && *n != header::HOST)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    prop_assert_eq!(others(&out), others(&r));
    Ok(())
}

/// Found by `authorities`: `a..` was `a.` (and `a.` then `a`), so a `Host: a..` escaped a
/// policy on `a`.
#[test]
fn known_trailing_dots() {
    for (a, want) in [
        ("a..", "a"),
        ("Echo.Demo.svc..:8080", "echo.demo.svc:8080"),
        ("echo.demo.svc.:8080..", "echo.demo.svc:8080"),
        ("[::1]:80", "[::1]:80"),
        ("...", ""),
    ] {
        assert_eq!(normalize_authority(a), want, "{a}");
    }
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn arbitrary_requests(
        method in methods(),
        uri in uris(),
        hosts in prop::collection::vec(hosts(), 0..3),
        extra in extra(),
    ) {
        if let Some(r) = request(&method, &uri, &hosts, &extra) {
            check(r)?;
        }
    }

    #[test]
    fn authorities(b in hosts()) {
        let a = mutate::text(&b);
        let n = mutate::timed("normalize_authority", a.len(), || normalize_authority(&a));
        prop_assert_eq!(normalize_authority(&n), n.clone(), "not idempotent from {:?}", a);
        prop_assert_eq!(&n, &n.to_ascii_lowercase());
    }
}
