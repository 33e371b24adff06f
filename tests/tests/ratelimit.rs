//! Rate limits as Istio users write them (`EnvoyFilter`, the shapes of Istio's task
//! "Enabling Rate Limits using Envoy"), in process, at the waypoint: local token buckets (per
//! proxy, per route, per client) and the global filter asking a RateLimitService written here
//! (answering as Envoy's ratelimit server does). Loopback block 127.214.x.x; each test its
//! own third octets (the connection and sidecar limits: `ratelimit_inbound.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ratelimit_support/mod.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use support::{B, header, mesh_yaml, metric};
use tokio::io::BufReader;

/// Istio task, local: a proxy-wide filter (1000 per hour, so no refill during the test)
/// with a per-client descriptor (remote_address, value omitted: one bucket per client, 3
/// each) and x-ratelimit headers; the route `limited` gets its own config (2 per hour).
const LOCAL: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: ns}
spec:
  hosts: [web.ns.svc]
  http:
  - name: limited
    match: [{uri: {prefix: /limited}}]
    route: [{destination: {host: web.ns.svc}}]
  - name: rest
    route: [{destination: {host: web.ns.svc}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: local, namespace: ns}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 1000, tokens_per_fill: 1000, fill_interval: 3600s}
            filter_enabled: {runtime_key: local_rate_limit_enabled, default_value: {numerator: 100, denominator: HUNDRED}}
            filter_enforced: {runtime_key: local_rate_limit_enforced, default_value: {numerator: 100, denominator: HUNDRED}}
            enable_x_ratelimit_headers: DRAFT_VERSION_03
            response_headers_to_add:
            - append: false
              header: {key: x-local-rate-limit, value: "true"}
            descriptors:
            - entries: [{key: remote_address}]
              token_bucket: {max_tokens: 3, tokens_per_fill: 3, fill_interval: 3600s}
  - applyTo: VIRTUAL_HOST
    match: {context: GATEWAY, routeConfiguration: {vhost: {name: "web.ns.svc:80"}}}
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions: [{remote_address: {}}]
  - applyTo: HTTP_ROUTE
    match:
      context: GATEWAY
      routeConfiguration: {vhost: {name: "*:80", route: {name: limited}}}
    patch:
      operation: MERGE
      value:
        typed_per_filter_config:
          envoy.filters.http.local_ratelimit:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: limited
            token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 3600s}
            filter_enabled: {default_value: {numerator: 100}}
            filter_enforced: {default_value: {numerator: 100}}
"#;

async fn counts(
    s: &mut BufReader<tokio::net::TcpStream>,
    path: &str,
    n: usize,
    extra: &[(&str, &str)],
) -> (usize, usize, Vec<(String, String)>) {
    let (mut ok, mut limited, mut last) = (0, 0, Vec::new());
    for _ in 0..n {
        let (status, h, _) = http_request(s, "GET", path, "web.ns.svc", extra).await;
        match status {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("{path}: {other}"),
        }
        last = h;
    }
    (ok, limited, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_limits_per_proxy_route_and_client() {
    let o = 0;
    let mut mesh = InprocMesh::new(&mesh_yaml(o, true, LOCAL));
    http_app(format!("127.{B}.{}.21:8080", o + 1).parse().unwrap(), "web").await;
    let none: [&str; 0] = [];
    mesh.ztunnel("b", &none).await;
    mesh.waypoint("wp", "ns/wp", &none).await;
    mesh.ztunnel("a", &none).await;
    let vip: SocketAddr = format!("127.{B}.{}.1:80", o + 2).parse().unwrap();
    let client: IpAddr = format!("127.{B}.{}.10", o + 1).parse().unwrap();
    let intruder: IpAddr = format!("127.{B}.{}.11", o + 1).parse().unwrap();
    let mut c = BufReader::new(connect_from(client, vip).await.unwrap());

    // Per client: 3 each, exactly (Envoy local rate limit descriptors; a value omitted
    // makes one bucket per value).
    let (ok, limited, h) = counts(&mut c, "/a", 5, &[]).await;
    assert_eq!((ok, limited), (3, 2));
    // The 429 as Envoy writes it: x-envoy-ratelimited, the configured header, and the
    // DRAFT_VERSION_03 headers of the refusing bucket.
    assert_eq!(header(&h, "x-envoy-ratelimited"), Some("true"));
    assert_eq!(header(&h, "x-local-rate-limit"), Some("true"));
    assert_eq!(header(&h, "x-ratelimit-limit"), Some("3"));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("0"));
    let reset: u64 = header(&h, "x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&reset), "{reset}");

    // Another client has its own bucket; spoofing the first client's address in
    // x-forwarded-for does not move it (remote_address is what the mesh asserts).
    let mut i = BufReader::new(connect_from(intruder, vip).await.unwrap());
    let spoof = [("x-forwarded-for", "127.214.1.99")];
    let (ok, limited, h) = counts(&mut i, "/b", 3, &spoof).await;
    assert_eq!((ok, limited), (3, 0));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("0"));
    let (ok, limited, _) = counts(&mut i, "/b", 2, &spoof).await;
    assert_eq!((ok, limited), (0, 2));

    // The route `limited` has its own config (Envoy typed_per_filter_config replaces the
    // filter-level one): 2 for everyone together, even for a client out of its own tokens.
    let (ok, limited, h) = counts(&mut c, "/limited/x", 3, &[]).await;
    assert_eq!((ok, limited), (2, 1));
    assert_eq!(
        header(&h, "x-ratelimit-limit"),
        None,
        "not enabled on the route"
    );
    let (ok, limited, _) = counts(&mut i, "/limited/y", 2, &[]).await;
    assert_eq!((ok, limited), (0, 2));

    // A new config with the same EnvoyFilter (here: the same file again) keeps the buckets:
    // a config push does not refill them.
    let same = mesh_yaml(o, true, LOCAL);
    mesh.proxy("wp").apply_yaml(&same).await.unwrap();
    let (ok, limited, _) = counts(&mut c, "/a", 1, &[]).await;
    assert_eq!((ok, limited), (0, 1));

    // Counted (response code 429, one per refusal above) and logged with Envoy's flag RL.
    let m = mesh.proxy("wp").metrics_text();
    let rl = metric(&m, "istio_requests_total", &["response_code=\"429\""]);
    assert_eq!(rl, 2 + 2 + 1 + 2 + 1, "{m}");
    mesh.expect_log("wp", r#""response_flags":"RL""#);
}

/// What the test's rate limit service saw: (domain, descriptors as `k=v,…`).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A small RateLimitService answering as Envoy's ratelimit server does: `OVER_LIMIT` for a
/// path with `over`, a slow answer for `slow`, `OK` otherwise, with the statuses' current
/// limit, `limit_remaining`, `duration_until_reset`, and the `x-ratelimit-*` headers it adds
/// with `LIMIT_RESPONSE_HEADERS_ENABLED`.
#[derive(Clone)]
struct Rls {
    seen: Seen,
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        req: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let r = req.into_inner();
        let d: Vec<String> = r
            .descriptors
            .iter()
            .flat_map(|d| d.entries.iter().map(|e| format!("{}={}", e.key, e.value)))
            .collect();
        let d = d.join(",");
        self.seen
            .lock()
            .unwrap()
            .push((r.domain.clone(), d.clone()));
        if d.contains("slow") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let over = d.contains("over");
        let status = DescriptorStatus {
            code: if over { Code::OverLimit } else { Code::Ok } as i32,
            current_limit: Some(RateLimit {
                requests_per_unit: 10,
                unit: Unit::Minute as i32,
                ..RateLimit::default()
            }),
            limit_remaining: if over { 0 } else { 7 },
            duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 42,
                nanos: 0,
            }),
            ..DescriptorStatus::default()
        };
        let hv = |k: &str, v: &str| HeaderValue {
            key: k.into(),
            value: v.into(),
            ..HeaderValue::default()
        };
        let remaining = status.limit_remaining.to_string();
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: status.code,
            statuses: vec![status],
            response_headers_to_add: vec![hv("x-rls-remaining", &remaining)],
            ..RateLimitResponse::default()
        }))
    }
}

async fn rls(addr: SocketAddr, seen: Seen) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let svc = RateLimitServiceServer::new(Rls { seen });
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper_util::service::TowerToHyperService::new(svc),
                        )
                        .await;
            });
        }
    });
}

/// Istio task, global: the ratelimit filter (domain, failure_mode_deny, timeout, the
/// service's cluster) and the virtual host's `rate_limits` sending `:path` as `PATH`, plus a
/// generic key and a header match (Envoy RateLimit.Action).
fn global(o: u8, deny: bool) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: filter-ratelimit, namespace: ns}}
spec:
  targetRefs: [{{kind: Gateway, name: wp}}]
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
          domain: ratelimit
          failure_mode_deny: {deny}
          timeout: 500ms
          enable_x_ratelimit_headers: DRAFT_VERSION_03
          rate_limit_service:
            grpc_service:
              envoy_grpc:
                cluster_name: outbound|8081||127.{B}.{w}.30
                authority: ratelimit.default.svc.cluster.local
            transport_api_version: V3
  - applyTo: VIRTUAL_HOST
    match: {{context: GATEWAY, routeConfiguration: {{vhost: {{name: ""}}}}}}
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions:
          - request_headers: {{header_name: ":path", descriptor_key: PATH}}
        - actions:
          - generic_key: {{descriptor_value: web}}
          - header_value_match:
              descriptor_value: post
              headers: [{{name: ":method", exact_match: POST}}]
"#,
        w = o + 1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limits_ask_the_rate_limit_service() {
    let o = 10;
    let seen: Seen = Arc::default();
    rls(
        format!("127.{B}.{}.30:8081", o + 1).parse().unwrap(),
        seen.clone(),
    )
    .await;
    let mut mesh = InprocMesh::new(&mesh_yaml(o, true, &global(o, true)));
    http_app(format!("127.{B}.{}.21:8080", o + 1).parse().unwrap(), "web").await;
    let none: [&str; 0] = [];
    mesh.ztunnel("b", &none).await;
    mesh.waypoint("wp", "ns/wp", &none).await;
    mesh.ztunnel("a", &none).await;
    let vip: SocketAddr = format!("127.{B}.{}.1:80", o + 2).parse().unwrap();
    let client: IpAddr = format!("127.{B}.{}.10", o + 1).parse().unwrap();
    let mut c = BufReader::new(connect_from(client, vip).await.unwrap());
    let host = "web.ns.svc";

    // OK: forwarded, with the service's headers and the DRAFT_VERSION_03 ones.
    let (status, h, _) = http_request(&mut c, "GET", "/ok", host, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-app"), Some("web"));
    assert_eq!(header(&h, "x-rls-remaining"), Some("7"));
    assert_eq!(header(&h, "x-ratelimit-limit"), Some("10, 10;w=60"));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("7"));
    assert_eq!(header(&h, "x-ratelimit-reset"), Some("42"));
    // The descriptors Envoy would send: PATH, and generic_key + header_match (GET: no
    // header_match, so that descriptor is not made — Envoy drops a descriptor whose action
    // cannot produce its entry).
    assert_eq!(
        seen.lock().unwrap().last().cloned(),
        Some(("ratelimit".to_owned(), "PATH=/ok".to_owned()))
    );
    let (status, _, _) =
        http_request(&mut c, "POST", "/ok2", host, &[("content-length", "0")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        seen.lock().unwrap().last().unwrap().1,
        "PATH=/ok2,generic_key=web,header_match=post"
    );

    // OVER_LIMIT: 429 RL, never reaching the app.
    let (status, h, _) = http_request(&mut c, "GET", "/over", host, &[]).await;
    assert_eq!(status, 429);
    assert_eq!(header(&h, "x-envoy-ratelimited"), Some("true"));
    assert_eq!(header(&h, "x-rls-remaining"), Some("0"));
    assert_eq!(header(&h, "x-app"), None);

    // A service slower than the filter's timeout (500ms), failure_mode_deny: 500 RLSE.
    let (status, h, _) = http_request(&mut c, "GET", "/slow", host, &[]).await;
    assert_eq!(status, 500);
    assert_eq!(header(&h, "x-app"), None);
    let m = mesh.proxy("wp").metrics_text();
    let code = |c: &str| metric(&m, "istio_requests_total", &[c]);
    assert_eq!(
        (code("response_code=\"429\""), code("response_code=\"500\"")),
        (1, 1),
        "{m}"
    );
    mesh.expect_log("wp", r#""response_flags":"RL""#);
    mesh.expect_log("wp", r#""response_flags":"RLSE""#);

    // Fail open: the same with failure_mode_deny false lets the request through.
    let open = mesh_yaml(o, true, &global(o, false));
    mesh.proxy("wp").apply_yaml(&open).await.unwrap();
    let (status, h, _) = http_request(&mut c, "GET", "/slow", host, &[]).await;
    assert_eq!((status, header(&h, "x-app")), (200, Some("web")));
    // A service that is down: through as well (fail open), then 500 when closed.
    let down = open.replace(
        &format!("127.{B}.{}.30", o + 1),
        &format!("127.{B}.{}.31", o + 1),
    );
    mesh.proxy("wp").apply_yaml(&down).await.unwrap();
    let (status, _, _) = http_request(&mut c, "GET", "/ok", host, &[]).await;
    assert_eq!(status, 200);
    let down_closed = down.replace("failure_mode_deny: false", "failure_mode_deny: true");
    mesh.proxy("wp").apply_yaml(&down_closed).await.unwrap();
    let (status, _, _) = http_request(&mut c, "GET", "/ok", host, &[]).await;
    assert_eq!(status, 500);
}
