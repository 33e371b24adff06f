#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn compiled(json: &str) -> Result<Vec<MirrorPolicy>, Vec<FieldError>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct R {
        mirror: Option<DestinationSpec>,
        mirror_percentage: Option<PercentSpec>,
        #[serde(default)]
        mirrors: Vec<MirrorSpec>,
    }
    let r: R = serde_json::from_str(json).unwrap();
    let mut errs = Vec::new();
    let m = compile(
        r.mirror.as_ref(),
        r.mirror_percentage,
        &r.mirrors,
        "spec.http[0]",
        &mut errs,
    );
    if errs.is_empty() { Ok(m) } else { Err(errs) }
}

#[test]
fn mirror_without_percentage_takes_all() {
    // Istio route translation (mirrorPercent): "If no mirror percent is provided
    // explicitly, we should mirror 100%"; an explicit 0 mirrors nothing.
    let m = compiled(r#"{"mirror": {"host": "Shadow.ns.svc", "subset": "v2"}}"#).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].share, Fraction::ALL);
    assert_eq!(m[0].destination.host, "shadow.ns.svc");
    let m = compiled(r#"{"mirror": {"host": "s"}, "mirrorPercentage": {"value": 0}}"#).unwrap();
    assert!(!m[0].share.hits(0));
}

#[test]
fn mirrors_list_each_with_its_share() {
    // Istio VirtualService `mirrors` (HTTPMirrorPolicy): destination and percentage each.
    let m = compiled(
        r#"{"mirrors": [{"destination": {"host": "a", "port": {"number": 8080}}, "percentage": {"value": 50}},
                        {"destination": {"host": "b"}}]}"#,
    )
    .unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].share.millionths(), 500_000);
    assert_eq!(m[0].destination.port, Some(8080));
    assert_eq!(m[1].share, Fraction::ALL);
}

#[test]
fn conflicts_and_bad_values_are_named() {
    let field = |j: &str| {
        compiled(j)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        field(r#"{"mirror": {"host": "a"}, "mirrors": [{"destination": {"host": "b"}}]}"#),
        ["spec.http[0].mirrors"]
    );
    assert_eq!(
        field(r#"{"mirrorPercentage": {"value": 5}}"#),
        ["spec.http[0].mirrorPercentage"]
    );
    assert_eq!(
        field(r#"{"mirror": {"host": "a"}, "mirrorPercentage": {"value": 500}}"#),
        ["spec.http[0].mirrorPercentage.value"]
    );
    assert_eq!(
        field(r#"{"mirrors": [{"destination": {"host": "a", "port": {"number": 0}}}]}"#),
        ["spec.http[0].mirrors[0].destination.port.number"]
    );
    let nine: Vec<String> = (0..9)
        .map(|i| format!(r#"{{"destination": {{"host": "m{i}"}}}}"#))
        .collect();
    assert_eq!(
        field(&format!(r#"{{"mirrors": [{}]}}"#, nine.join(","))),
        ["spec.http[0].mirrors"]
    );
}

#[test]
fn shadow_suffix_goes_before_the_port() {
    // Envoy router (shadow policies): the mirrored request's host/authority gets `-shadow`
    // appended to the host, keeping the port.
    assert_eq!(shadow_authority("reviews"), "reviews-shadow");
    assert_eq!(
        shadow_authority("reviews.ns.svc:9080"),
        "reviews.ns.svc-shadow:9080"
    );
    assert_eq!(shadow_authority("10.0.0.1:80"), "10.0.0.1-shadow:80");
    assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    assert_eq!(shadow_authority("[::1]"), "[::1]-shadow");
}

#[test]
fn shares_hold_statistically() {
    let m = compiled(r#"{"mirror": {"host": "a"}, "mirrorPercentage": {"value": 25}}"#).unwrap();
    let mut x: u32 = 0x9E37_79B9;
    let mut n = 0;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        n += usize::from(takes(&m[0], x));
    }
    assert!((24_000..26_000).contains(&n), "{n}");
}

proptest! {
    #[test]
    fn shadow_keeps_the_port_and_adds_one_suffix(host in "[a-z0-9.-]{1,20}", port in proptest::option::of(1u16..)) {
        let a = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
        let s = shadow_authority(&a);
        prop_assert_eq!(s.matches("-shadow").count(), a.matches("-shadow").count() + 1);
        match port {
            Some(p) => { let suffix = format!("-shadow:{p}"); prop_assert!(s.ends_with(&suffix)); }
            None => prop_assert!(s.ends_with("-shadow")),
        }
    }
}

fn gateway(json: &str) -> Result<crate::RouteTable, Vec<FieldError>> {
    let spec: crate::gateway::HttpRouteSpec = serde_json::from_str(json).unwrap();
    crate::RouteTable::from_http_route(&spec, "web.ns.svc", |n| {
        (n != "missing").then(|| format!("{n}.ns.svc"))
    })
}

#[test]
fn gateway_request_mirror_filter() {
    // Gateway API HTTPRequestMirrorFilter: `backendRef` and `percent` or `fraction`
    // (GEP-3171), neither meaning every request.
    let t = gateway(
        r#"{"parentRefs": [{"kind": "Service", "name": "web"}], "rules": [{
             "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 8080}, "percent": 50}},
                         {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "audit"}, "fraction": {"numerator": 1, "denominator": 3}}},
                         {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "all"}}}],
             "backendRefs": [{"name": "v1"}]}]}"#,
    )
    .unwrap();
    let m = &t.routes[0].mirrors;
    assert_eq!(m.len(), 3);
    assert_eq!(m[0].destination.host, "shadow.ns.svc");
    assert_eq!(m[0].destination.port, Some(8080));
    assert_eq!(m[0].share.millionths(), 500_000);
    assert_eq!(m[1].share.millionths(), 333_333);
    assert_eq!(m[2].share, Fraction::ALL);
    let e = gateway(
        r#"{"parentRefs": [{"kind": "Service", "name": "web"}], "rules": [{
             "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "s"}, "percent": 5, "fraction": {"numerator": 1}}},
                         {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "missing"}}},
                         {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "s"}, "fraction": {"numerator": 3, "denominator": 2}}},
                         {"type": "RequestMirror"}],
             "backendRefs": [{"name": "v1"}]}]}"#,
    )
    .unwrap_err();
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].filters[3]",
            "spec.rules[0].filters[0].requestMirror",
            "spec.rules[0].filters[1].requestMirror.backendRef.name",
            "spec.rules[0].filters[2].requestMirror",
        ]
    );
}
