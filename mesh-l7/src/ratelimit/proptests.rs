//! Property tests of the EnvoyFilter rate limit parser and decision: whatever a field holds,
//! compiling reports it or succeeds, and deciding never panics.

use http::HeaderMap;
use tokio::time::Instant;

use super::tests::{GLOBAL_JSON, LOCAL, PER_CLIENT, PER_ROUTE, VH};
use super::*;

/// Replaces the value at the `pick`-th node (pre-order) of `v` with `with`.
fn mutate(v: &mut serde_json::Value, pick: &mut usize, with: &serde_json::Value) -> bool {
    if *pick == 0 {
        *v = with.clone();
        return true;
    }
    *pick -= 1;
    match v {
        serde_json::Value::Object(m) => m.values_mut().any(|c| mutate(c, pick, with)),
        serde_json::Value::Array(a) => a.iter_mut().any(|c| mutate(c, pick, with)),
        _ => false,
    }
}

fn json_leaf() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u32>().prop_map(serde_json::Value::from),
        "[ -~]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::json!("0ms")),
        Just(serde_json::json!("1e300s")),
        Just(serde_json::json!("outbound|0||x")),
        Just(serde_json::json!({})),
        Just(serde_json::json!([])),
    ]
}

proptest::proptest! {
    // The parser and the decision never panic: any one field of the documented shapes
    // replaced by anything either compiles (and then decides) or is reported.
    #[test]
    fn any_mutation_compiles_or_is_reported(
        which in 0usize..4, pick in 0usize..200, with in json_leaf(),
        hdr in "[a-z]{0,8}", client in proptest::option::of(proptest::prelude::any::<[u8; 4]>()),
    ) {
        let base = [LOCAL, PER_ROUTE, PER_CLIENT, GLOBAL_JSON][which];
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        let mut p = pick;
        mutate(&mut v, &mut p, &with);
        let Ok(spec) = serde_json::from_value::<EnvoyFilterSpec>(v) else { return Ok(()) };
        match RateLimitRules::compile(&spec) {
            Err(e) => proptest::prop_assert!(!e.is_empty() && e.iter().all(|e| e.field.starts_with("spec"))),
            Ok(r) => {
                for ctx in [Context::SidecarInbound, Context::SidecarOutbound, Context::Gateway] {
                    let Some(p) = RateLimitPolicy::build([&r], ctx, Instant::now()) else { continue };
                    let mut h = HeaderMap::new();
                    if let Ok(v) = hdr.parse() { h.insert("x-user", v); }
                    let view = RequestView {
                        method: "GET", path: "/p?q", authority: "a", headers: &h,
                        client: client.map(|c| c.into()),
                    };
                    for route in [None, Some("limited")] {
                        let _ = p.decide(VH, route, &view, Instant::now(), &mut || 7);
                    }
                }
            }
        }
    }
}
