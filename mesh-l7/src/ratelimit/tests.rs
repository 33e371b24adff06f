//! EnvoyFilter rate limit shapes from Istio's task "Enabling Rate Limits using Envoy"
//! (istio.io/latest/docs/tasks/policy-enforcement/rate-limit/) and Envoy's local rate limit
//! filter docs, compiled and decided.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::*;

fn spec(yaml_json: &str) -> EnvoyFilterSpec {
    serde_json::from_str(yaml_json).unwrap()
}

fn rules(json: &str) -> RateLimitRules {
    RateLimitRules::compile(&spec(json)).unwrap()
}

fn errors(json: &str) -> Vec<String> {
    let e = RateLimitRules::compile(&spec(json)).unwrap_err();
    e.iter().map(|e| e.field.clone()).collect()
}

/// Istio task, local rate limit for the whole proxy (4 per minute, header added).
pub(crate) const LOCAL: &str = r#"{
  "workloadSelector": {"labels": {"app": "productpage"}},
  "configPatches": [{
    "applyTo": "HTTP_FILTER",
    "match": {"context": "SIDECAR_INBOUND", "listener": {"filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager"}}}},
    "patch": {"operation": "INSERT_BEFORE", "value": {
      "name": "envoy.filters.http.local_ratelimit",
      "typed_config": {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "value": {
          "stat_prefix": "http_local_rate_limiter",
          "token_bucket": {"max_tokens": 4, "tokens_per_fill": 4, "fill_interval": "60s"},
          "filter_enabled": {"runtime_key": "local_rate_limit_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
          "filter_enforced": {"runtime_key": "local_rate_limit_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
          "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
          "response_headers_to_add": [{"append": false, "header": {"key": "x-local-rate-limit", "value": "true"}}]
        }
      }
    }}
  }]
}"#;

fn view<'a>(h: &'a HeaderMap, client: Option<&str>) -> RequestView<'a> {
    RequestView {
        method: "GET",
        path: "/productpage",
        authority: "productpage",
        headers: h,
        client: client.map(|c| c.parse().unwrap()),
    }
}

pub(crate) const VH: VhostFacts<'static> = VhostFacts {
    host: None,
    port: 9080,
};

fn refused(v: &Verdict) -> bool {
    matches!(v.local, LocalOutcome::Refuse { .. })
}

#[test]
fn local_filter_admits_max_tokens_then_429_with_headers() {
    let r = rules(LOCAL);
    let t0 = Instant::now();
    let p = RateLimitPolicy::build([&r], Context::SidecarInbound, t0).unwrap();
    assert!(RateLimitPolicy::build([&r], Context::SidecarOutbound, t0).is_none());
    let h = HeaderMap::new();
    let got: Vec<bool> = (0..6)
        .map(|_| refused(&p.decide(VH, None, &view(&h, None), t0, &mut || 0)))
        .collect();
    assert_eq!(got, [false, false, false, false, true, true]);
    let v = p.decide(
        VH,
        None,
        &view(&h, None),
        t0 + Duration::from_secs(10),
        &mut || 0,
    );
    let LocalOutcome::Refuse {
        status, headers, ..
    } = v.local
    else {
        panic!()
    };
    assert_eq!(status, 429);
    let get = |n: &str| {
        headers
            .iter()
            .find(|(h, _)| h == n)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
    };
    assert_eq!(get("x-local-rate-limit").as_deref(), Some("true"));
    assert_eq!(get("x-ratelimit-limit").as_deref(), Some("4"));
    assert_eq!(get("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(get("x-ratelimit-reset").as_deref(), Some("50"));
    // After the fill interval, 4 more.
    let t1 = t0 + Duration::from_secs(60);
    let ok = (0..5)
        .filter(|_| !refused(&p.decide(VH, None, &view(&h, None), t1, &mut || 0)))
        .count();
    assert_eq!(ok, 4);
}

// Envoy: filter_enabled / filter_enforced absent mean 0% — the filter-level config of Istio's
// per-route example (only stat_prefix) passes everything; the route's config limits.
pub(crate) const PER_ROUTE: &str = r#"{
  "configPatches": [
    {"applyTo": "HTTP_FILTER", "match": {"context": "SIDECAR_INBOUND"},
     "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.http.local_ratelimit",
       "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
         "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
         "value": {"stat_prefix": "http_local_rate_limiter"}}}}},
    {"applyTo": "HTTP_ROUTE",
     "match": {"context": "SIDECAR_INBOUND", "routeConfiguration": {"vhost": {"name": "inbound|http|9080", "route": {"action": "ANY"}}}},
     "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": {"envoy.filters.http.local_ratelimit": {
       "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
       "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
       "value": {"stat_prefix": "http_local_rate_limiter",
         "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "60s"},
         "filter_enabled": {"runtime_key": "e", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
         "filter_enforced": {"runtime_key": "f", "default_value": {"numerator": 100, "denominator": "HUNDRED"}}}}}}}}
  ]
}"#;

#[test]
fn per_route_config_replaces_the_filter_level_one_on_its_vhost_only() {
    let r = rules(PER_ROUTE);
    let t0 = Instant::now();
    let p = RateLimitPolicy::build([&r], Context::SidecarInbound, t0).unwrap();
    let h = HeaderMap::new();
    let n = |vh| {
        (0..10)
            .filter(|_| !refused(&p.decide(vh, None, &view(&h, None), t0, &mut || 0)))
            .count()
    };
    assert_eq!(n(VH), 2);
    // Another port's virtual host is not matched: the filter-level config (0%) passes all.
    assert_eq!(
        n(VhostFacts {
            host: None,
            port: 8080
        }),
        10
    );
    // The route patch alone (its HTTP_FILTER in no EnvoyFilter of this proxy) still limits.
    let mut v: serde_json::Value = serde_json::from_str(PER_ROUTE).unwrap();
    v["configPatches"].as_array_mut().unwrap().remove(0);
    let alone = RateLimitRules::compile(&serde_json::from_value(v).unwrap()).unwrap();
    let p = RateLimitPolicy::build([&alone], Context::SidecarInbound, t0).unwrap();
    let n = |vh| {
        (0..10)
            .filter(|_| !refused(&p.decide(vh, None, &view(&h, None), t0, &mut || 0)))
            .count()
    };
    assert_eq!(n(VH), 2);
}

// Per client: route rate_limits with remote_address, a wildcard descriptor (value omitted:
// one bucket per address, Envoy's dynamic descriptors bounded by max_dynamic_descriptors).
pub(crate) const PER_CLIENT: &str = r#"{
  "configPatches": [
    {"applyTo": "HTTP_FILTER", "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.http.local_ratelimit",
       "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
         "stat_prefix": "per_client",
         "token_bucket": {"max_tokens": 1000, "tokens_per_fill": 1000, "fill_interval": "1s"},
         "filter_enabled": {"default_value": {"numerator": 100}},
         "filter_enforced": {"default_value": {"numerator": 100}},
         "max_dynamic_descriptors": 3,
         "descriptors": [{"entries": [{"key": "remote_address"}], "token_bucket": {"max_tokens": 2, "fill_interval": "60s"}}]}}}},
    {"applyTo": "VIRTUAL_HOST", "patch": {"operation": "MERGE", "value": {"rate_limits": [{"actions": [{"remote_address": {}}]}]}}}
  ]
}"#;

#[test]
fn per_client_buckets_are_separate_bounded_and_not_spoofable() {
    let r = rules(PER_CLIENT);
    let t0 = Instant::now();
    let p = RateLimitPolicy::build([&r], Context::Gateway, t0).unwrap();
    let mut h = HeaderMap::new();
    let n = |h: &HeaderMap, c: &str| {
        (0..5)
            .filter(|_| !refused(&p.decide(VH, None, &view(h, Some(c)), t0, &mut || 0)))
            .count()
    };
    assert_eq!(n(&h, "10.0.0.1"), 2);
    assert_eq!(n(&h, "10.0.0.2"), 2, "another client has its own bucket");
    // Attacker: x-forwarded-for does not pick the bucket; the mesh-asserted address does.
    h.insert("x-forwarded-for", "10.9.9.9".parse().unwrap());
    assert_eq!(n(&h, "10.0.0.1"), 0);
    // Attacker: many addresses keep at most max_dynamic_descriptors buckets.
    for i in 0..10_000 {
        let _ = p.decide(
            VH,
            None,
            &view(&h, Some(&format!("10.1.{}.{}", i / 256, i % 256))),
            t0,
            &mut || 0,
        );
    }
    let super::policy::Buckets::PerValue(m) = &p.local[0].descriptors[0].buckets else {
        panic!()
    };
    assert_eq!(m.lock().unwrap().len(), 3);
}

// Envoy's local_ratelimit_impl.cc: `max_dynamic_descriptors` defaults to 20.
#[test]
fn dynamic_descriptors_default_to_twenty() {
    let json = PER_CLIENT.replace(r#""max_dynamic_descriptors": 3,"#, "");
    let p = RateLimitPolicy::build([&rules(&json)], Context::Gateway, Instant::now()).unwrap();
    let h = HeaderMap::new();
    for i in 0..100 {
        let c = format!("10.2.0.{i}");
        let _ = p.decide(VH, None, &view(&h, Some(&c)), Instant::now(), &mut || 0);
    }
    let super::policy::Buckets::PerValue(m) = &p.local[0].descriptors[0].buckets else {
        panic!()
    };
    assert_eq!(m.lock().unwrap().len(), 20);
}

#[test]
fn fractions_roll() {
    let json = LOCAL.replace(
        r#""numerator": 100, "denominator": "HUNDRED"}},
          "filter_enforced""#,
        r#""numerator": 50, "denominator": "HUNDRED"}},
          "filter_enforced""#,
    );
    let p =
        RateLimitPolicy::build([&rules(&json)], Context::SidecarInbound, Instant::now()).unwrap();
    let h = HeaderMap::new();
    let t0 = Instant::now();
    // Rolls >= 500000 (of a million) are outside 50%: never checked, never refused.
    let passed = (0..100)
        .filter(|_| !refused(&p.decide(VH, None, &view(&h, None), t0, &mut || 999_999)))
        .count();
    assert_eq!(passed, 100);
    let passed = (0..100)
        .filter(|_| !refused(&p.decide(VH, None, &view(&h, None), t0, &mut || 0)))
        .count();
    assert_eq!(passed, 4);
}

pub(crate) const GLOBAL_JSON: &str = r#"{
  "configPatches": [
    {"applyTo": "HTTP_FILTER",
     "match": {"context": "GATEWAY", "listener": {"filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager", "subFilter": {"name": "envoy.filters.http.router"}}}}},
     "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.http.ratelimit",
       "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
         "domain": "ratelimit", "failure_mode_deny": true, "timeout": "10s",
         "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "outbound|8081||ratelimit.default.svc.cluster.local", "authority": "ratelimit.default.svc.cluster.local"}}, "transport_api_version": "V3"}}}}},
    {"applyTo": "VIRTUAL_HOST",
     "match": {"context": "GATEWAY", "routeConfiguration": {"vhost": {"name": "", "route": null}}},
     "patch": {"operation": "MERGE", "value": {"rate_limits": [{"actions": [{"request_headers": {"header_name": ":path", "descriptor_key": "PATH"}}]}]}}}
  ]
}"#;

#[test]
fn global_descriptors_from_actions() {
    let p =
        RateLimitPolicy::build([&rules(GLOBAL_JSON)], Context::Gateway, Instant::now()).unwrap();
    let h = HeaderMap::new();
    let v = p.decide(VH, None, &view(&h, None), Instant::now(), &mut || 0);
    let (g, d) = v.global.unwrap();
    assert_eq!(
        (
            g.domain.as_str(),
            g.host.as_str(),
            g.port,
            g.failure_mode_deny
        ),
        (
            "ratelimit",
            "ratelimit.default.svc.cluster.local",
            8081,
            true
        )
    );
    assert_eq!(g.timeout, Duration::from_secs(10));
    assert_eq!(
        d,
        [Descriptor {
            entries: vec![("PATH".into(), "/productpage".into())]
        }]
    );
}

// Envoy RateLimit.Action docs: request_headers without skip_if_absent drops the descriptor
// when the header is absent; header_value_match with expect_match; generic_key's default key.
#[test]
fn actions_follow_envoy() {
    let json = GLOBAL_JSON.replace(
        r#"[{"request_headers": {"header_name": ":path", "descriptor_key": "PATH"}}]"#,
        r#"[{"generic_key": {"descriptor_value": "g"}}, {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}, {"actions": [{"header_value_match": {"descriptor_value": "get", "headers": [{"name": ":method", "exact_match": "GET"}]}}]"#,
    );
    let p = RateLimitPolicy::build([&rules(&json)], Context::Gateway, Instant::now()).unwrap();
    let mut h = HeaderMap::new();
    let (_, d) = p
        .decide(VH, None, &view(&h, None), Instant::now(), &mut || 0)
        .global
        .unwrap();
    assert_eq!(
        d,
        [Descriptor {
            entries: vec![("header_match".into(), "get".into())]
        }]
    );
    h.insert("x-user", "alice".parse().unwrap());
    let (_, d) = p
        .decide(VH, None, &view(&h, None), Instant::now(), &mut || 0)
        .global
        .unwrap();
    assert_eq!(
        d[0].entries,
        [
            ("generic_key".to_owned(), "g".to_owned()),
            ("user".to_owned(), "alice".to_owned())
        ]
    );
}

// Envoy RateLimit.Action.MaskedRemoteAddress: `<masked>/<len>`; attacker: addresses of one
// /24 share one bucket, so cycling through them gains nothing.
#[test]
fn masked_remote_address_groups_a_network() {
    let json = PER_CLIENT
        .replace(
            r#"[{"remote_address": {}}]"#,
            r#"[{"masked_remote_address": {"v4_prefix_mask_len": 24}}]"#,
        )
        .replace(
            r#"{"key": "remote_address"}"#,
            r#"{"key": "masked_remote_address"}"#,
        );
    let p = RateLimitPolicy::build([&rules(&json)], Context::Gateway, Instant::now()).unwrap();
    let h = HeaderMap::new();
    let t0 = Instant::now();
    let ok = (1..=10)
        .filter(|i| {
            !refused(&p.decide(
                VH,
                None,
                &view(&h, Some(&format!("10.0.0.{i}"))),
                t0,
                &mut || 0,
            ))
        })
        .count();
    assert_eq!(ok, 2, "one bucket for 10.0.0.0/24");
    assert!(!refused(&p.decide(
        VH,
        None,
        &view(&h, Some("10.0.1.1")),
        t0,
        &mut || 0
    )));
    let g = GLOBAL_JSON.replace(
        r#"[{"request_headers": {"header_name": ":path", "descriptor_key": "PATH"}}]"#,
        r#"[{"masked_remote_address": {"v6_prefix_mask_len": 64}}]"#,
    );
    let p = RateLimitPolicy::build([&rules(&g)], Context::Gateway, Instant::now()).unwrap();
    let (_, d) = p
        .decide(VH, None, &view(&h, Some("2001:db8::1:2")), t0, &mut || 0)
        .global
        .unwrap();
    assert_eq!(
        d[0].entries,
        [(
            "masked_remote_address".to_owned(),
            "2001:db8::/64".to_owned()
        )]
    );
    let (_, d) = p
        .decide(VH, None, &view(&h, Some("192.0.2.7")), t0, &mut || 0)
        .global
        .unwrap();
    assert_eq!(d[0].entries[0].1, "192.0.2.7/32");
}

#[test]
fn other_patches_and_fields_are_rejected_by_name() {
    let bad = LOCAL.replace(
        r#""stat_prefix": "http_local_rate_limiter","#,
        r#""stat_prefix": "x", "local_rate_limit_per_downstream_connection": true, "bogus": 1,"#,
    );
    assert_eq!(
        errors(&bad),
        ["spec.configPatches[0].patch.value.typed_config.value.bogus"]
    );
    let bad = LOCAL.replace(
        r#""stat_prefix": "http_local_rate_limiter","#,
        r#""stat_prefix": "x", "local_rate_limit_per_downstream_connection": true,"#,
    );
    assert_eq!(
        errors(&bad),
        [
            "spec.configPatches[0].patch.value.typed_config.value.local_rate_limit_per_downstream_connection"
        ]
    );
    let bad = PER_ROUTE.replace(
        r#""token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "60s"},"#,
        "",
    );
    assert_eq!(
        errors(&bad),
        [
            "spec.configPatches[1].patch.value.typed_per_filter_config.envoy.filters.http.local_ratelimit.value.token_bucket"
        ]
    );
    let bad = LOCAL.replace("HTTP_FILTER", "CLUSTER");
    assert_eq!(errors(&bad), ["spec.configPatches[0].applyTo"]);
    let bad = LOCAL.replace(
        "envoy.filters.http.local_ratelimit\"",
        "envoy.filters.http.lua\"",
    );
    assert_eq!(errors(&bad), ["spec.configPatches[0].patch.value.name"]);
    let bad = LOCAL.replace("INSERT_BEFORE", "REPLACE");
    assert_eq!(errors(&bad), ["spec.configPatches[0].patch.operation"]);
    let bad = LOCAL.replace("\"60s\"", "\"10ms\"");
    assert_eq!(
        errors(&bad),
        ["spec.configPatches[0].patch.value.typed_config.value.token_bucket.fill_interval"]
    );
    let bad = GLOBAL_JSON.replace("\"envoy_grpc\"", "\"google_grpc\": {}, \"envoy_grpc\"");
    assert_eq!(
        errors(&bad),
        [
            "spec.configPatches[0].patch.value.typed_config.rate_limit_service.grpc_service.google_grpc"
        ]
    );
    let bad = GLOBAL_JSON.replace("\"remote_address\"", "x").replace(
        ":path\", \"descriptor_key\": \"PATH\"}",
        ":path\", \"descriptor_key\": \"PATH\"}, \"source_cluster\": {}",
    );
    assert_eq!(
        errors(&bad),
        ["spec.configPatches[1].patch.value.rate_limits[0].actions[0].source_cluster"]
    );
    assert!(
        serde_json::from_str::<EnvoyFilterSpec>(r#"{"configPatches": [], "bogus": 1}"#).is_err()
    );
    let e = errors(
        r#"{"priority": 1, "configPatches": [{"applyTo": "HTTP_FILTER", "match": {"proxy": {}}, "patch": {"operation": "INSERT_BEFORE", "filterClass": "AUTHZ", "value": {"name": "envoy.filters.http.ratelimit"}}}]}"#,
    );
    assert_eq!(
        e,
        [
            "spec.priority",
            "spec.configPatches[0].match.proxy",
            "spec.configPatches[0].patch.filterClass",
            "spec.configPatches[0].patch.value.typed_config"
        ]
    );
}

/// Envoy network local rate limit docs: one token per connection.
const NET: &str = r#"{"configPatches": [{"applyTo": "NETWORK_FILTER",
      "match": {"context": "SIDECAR_INBOUND", "listener": {"filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}}},
      "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.network.local_ratelimit",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
          "stat_prefix": "tcp", "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "1s"}}}}}]}"#;

#[test]
fn network_filter_limits_connections() {
    let r = rules(NET);
    let t0 = Instant::now();
    let p = RateLimitPolicy::build([&r], Context::SidecarInbound, t0).unwrap();
    assert!(!p.has_http());
    // Not enforced elsewhere, so refused elsewhere (by name).
    let any = errors(&NET.replace(r#""context": "SIDECAR_INBOUND", "#, ""));
    assert_eq!(any, ["spec.configPatches[0].match.context"]);
    let c = p.connections().unwrap();
    let got: Vec<bool> = (0..3).map(|_| c.admit(t0)).collect();
    assert_eq!(got, [true, true, false]);
    assert!(c.admit(t0 + Duration::from_secs(1)));
}
