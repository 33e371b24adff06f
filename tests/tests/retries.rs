//! Timeouts, retries and retry budgets at the waypoint (in-process harness, loopback block
//! 127.210.x.x), against misbehaving backends written here: ones that answer 503, close the
//! connection without answering, or never answer. Exact try counts at the backend, flags in
//! the access log, bodies replayed up to the cap, and what a client cannot force.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "retries_support/mod.rs"]
mod support;

use std::time::Duration;

use mesh_tests::connect_from;
use support::*;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_backend_gets_exactly_attempts_plus_one_tries_then_urx() {
    // Istio HTTPRetry.attempts counts retries (attempts: 3 → 4 requests at the backend);
    // Envoy flags URX when retries are exhausted on a retriable response and sends
    // x-envoy-attempt-count (Istio sets include_request_attempt_count).
    let net = Net(1);
    let web1 = backend(net.addr(21, 8080), Mode::Status(503)).await;
    let web2 = backend(net.addr(22, 8080), Mode::Status(503)).await;
    let mesh = net
        .start(&vs(r#"  - retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: web.ns.svc}}]
"#))
        .await;
    let (status, _) = get(net, "/x").await;
    assert_eq!(status, 503);
    assert_eq!(tries(&web1) + tries(&web2), 4);
    let mut attempts: Vec<_> = web1
        .lock()
        .unwrap()
        .iter()
        .chain(web2.lock().unwrap().iter())
        .map(|g| g.attempt.clone().unwrap())
        .collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    mesh.expect_log("wp", r#""response_flags":"URX""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_retries_a_503_on_the_other_endpoint() {
    // Istio's default retry policy (no `retries`): 2 retries on 503, and the
    // previous_hosts predicate sends each retry to an endpoint not tried yet.
    let net = Net(2);
    let bad = backend(net.addr(21, 8080), Mode::Status(503)).await;
    let good = backend(net.addr(22, 8080), Mode::Status(200)).await;
    let _mesh = net.start("").await;
    for i in 0..20 {
        let (status, _) = get(net, &format!("/{i}")).await;
        assert_eq!(status, 200, "request {i}");
    }
    assert_eq!(tries(&good), 20);
    // Never twice on the bad one for the same request.
    let bad = bad.lock().unwrap();
    let mut paths: Vec<_> = bad.iter().map(|g| g.path.clone()).collect();
    paths.dedup();
    assert_eq!(paths.len(), bad.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_the_response_is_retried_only_under_reset() {
    // Envoy retryOn `reset`: no response at all (disconnect/reset); Istio's default policy
    // has no `reset` (only connect-failure, refused-stream, 503, gRPC unavailable and
    // cancelled), so the default answers 503 UC after one try.
    let net = Net(3);
    let web1 = backend(net.addr(21, 8080), Mode::Close).await;
    let web2 = backend(net.addr(22, 8080), Mode::Close).await;
    let mesh = net
        .start(&vs(r#"  - match: [{uri: {prefix: /reset}}]
    retries: {attempts: 2, retryOn: reset}
    route: [{destination: {host: web.ns.svc}}]
  - route: [{destination: {host: web.ns.svc}}]
"#))
        .await;
    let (status, _) = get(net, "/reset").await;
    assert_eq!(status, 503);
    assert_eq!(tries(&web1) + tries(&web2), 3);
    mesh.expect_log("wp", r#""response_flags":"URX""#);
    let (status, _) = get(net, "/other").await;
    assert_eq!(status, 503);
    assert_eq!(tries(&web1) + tries(&web2), 4);
    mesh.expect_log("wp", r#""response_flags":"UC""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tries_are_cut_by_the_per_try_timeout_and_the_route_timeout_answers_504_ut() {
    // Envoy: per_try_timeout bounds each try (retried under 5xx); the route timeout spans
    // all tries and answers 504 "upstream request timeout", flag UT. (Per-try timeouts of
    // 500 ms leave room for the first HBONE dial of a loaded debug build.)
    let net = Net(4);
    let web1 = backend(net.addr(21, 8080), Mode::Slow).await;
    let web2 = backend(net.addr(22, 8080), Mode::Slow).await;
    let mesh = net
        .start(&vs(r#"  - match: [{uri: {prefix: /pertry}}]
    timeout: 10s
    retries: {attempts: 2, perTryTimeout: 500ms, retryOn: 5xx}
    route: [{destination: {host: web.ns.svc}}]
  - match: [{uri: {prefix: /route}}]
    timeout: 300ms
    retries: {attempts: 0}
    route: [{destination: {host: web.ns.svc}}]
"#))
        .await;
    let t0 = Instant::now();
    let (status, body) = get(net, "/pertry").await;
    let took = t0.elapsed();
    assert_eq!((status, body.as_str()), (504, "upstream request timeout"));
    assert_eq!(tries(&web1) + tries(&web2), 3);
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    mesh.expect_log("wp", r#""response_flags":"URX""#);
    let t0 = Instant::now();
    let (status, _) = get(net, "/route").await;
    let took = t0.elapsed();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(tries(&web1) + tries(&web2), 4);
    mesh.expect_log("wp", r#""response_flags":"UT""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_up_to_the_cap_are_replayed_and_bigger_ones_sent_once() {
    // Envoy buffers a request for retries up to a limit and does not retry past it; ours is
    // 64 KiB. Attacker: a big body on a retrying route is sent once, never held whole.
    let net = Net(5);
    let web1 = backend(net.addr(21, 8080), Mode::Status(503)).await;
    let web2 = backend(net.addr(22, 8080), Mode::Status(503)).await;
    let _mesh = net
        .start(&vs(r#"  - retries: {attempts: 1, retryOn: 5xx}
    route: [{destination: {host: web.ns.svc}}]
"#))
        .await;
    let all = |a: &Seen, b: &Seen| -> Vec<usize> {
        let mut v: Vec<_> = a.lock().unwrap().iter().map(|g| g.body_len).collect();
        v.extend(b.lock().unwrap().iter().map(|g| g.body_len));
        v.sort_unstable();
        v
    };
    let small = vec![b'x'; 1000];
    let mut c = net.conn().await;
    let head = format!("POST /small HTTP/1.1\r\n{HOST}\r\ncontent-length: 1000");
    assert_eq!(exchange(&mut c, &head, &small).await.0, 503);
    assert_eq!(all(&web1, &web2), [1000, 1000]);
    let big = vec![b'y'; 70_000];
    let mut c = net.conn().await;
    let head = format!("POST /big HTTP/1.1\r\n{HOST}\r\ncontent-length: 70000");
    assert_eq!(exchange(&mut c, &head, &big).await.0, 503);
    assert_eq!(all(&web1, &web2), [1000, 1000, 70_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_force_retries_or_timeouts_with_envoy_headers() {
    // Envoy honours x-envoy-retry-on, x-envoy-max-retries and
    // x-envoy-upstream-rq-timeout-ms only from trusted downstreams; the waypoint strips
    // x-envoy-* from clients and its retry layer never reads them.
    let net = Net(6);
    let web1 = backend(net.addr(21, 8080), Mode::Status(503)).await;
    let web2 = backend(net.addr(22, 8080), Mode::Status(503)).await;
    let _mesh = net
        .start(&vs(r#"  - retries: {attempts: 0}
    route: [{destination: {host: web.ns.svc}}]
"#))
        .await;
    let mut c = net.conn().await;
    let head = format!(
        "GET /x HTTP/1.1\r\n{HOST}\r\nx-envoy-retry-on: 5xx\r\nx-envoy-max-retries: 5\r\n\
         x-envoy-upstream-rq-timeout-ms: 1\r\nx-envoy-attempt-count: 9"
    );
    assert_eq!(exchange(&mut c, &head, b"").await.0, 503);
    assert_eq!(tries(&web1) + tries(&web2), 1);
    let got = web1
        .lock()
        .unwrap()
        .iter()
        .chain(web2.lock().unwrap().iter())
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(got[0].retry_on, None);
    assert_eq!(got[0].attempt, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_retry_budget_stops_retries() {
    // Istio 1.27 DestinationRule retryBudget: at most max(minRetryConcurrency, percent% of
    // active requests) retries at once; with both 0 no retry is ever allowed (Envoy: a
    // retry overflow, flag UO, the try's own response returned).
    let net = Net(7);
    let web1 = backend(net.addr(21, 8080), Mode::Status(503)).await;
    let web2 = backend(net.addr(22, 8080), Mode::Status(503)).await;
    let mesh = net
        .start(&format!(
            "{}{}",
            vs(r#"  - retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: web.ns.svc}}]
"#),
            r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: ns}
spec:
  host: web.ns.svc
  trafficPolicy:
    retryBudget: {percent: 0, minRetryConcurrency: 0}
"#
        ))
        .await;
    for _ in 0..5 {
        assert_eq!(get(net, "/x").await.0, 503);
    }
    assert_eq!(tries(&web1) + tries(&web2), 5);
    mesh.expect_log("wp", r#""response_flags":"UO""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_retry_fields_are_rejected_by_name() {
    let net = Net(8);
    let yaml = net.config(&vs(
        r#"  - retries: {attempts: 2, retryOn: "5xx,retriable-headers", retryRemoteLocalities: true}
    route: [{destination: {host: web.ns.svc}}]
"#,
    ));
    let e = mesh_dataplane::config::parse(std::path::Path::new("mesh.yaml"), &yaml)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.http[0].retries.retryRemoteLocalities"),
        "{e}"
    );
    assert!(e.contains("spec.http[0].retries.retryOn"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_retry_and_timeouts_apply() {
    // Gateway API GEP-1731 `retry` (codes, attempts) and GEP-1742 `timeouts.request`
    // (the whole request: 504 past it).
    let net = Net(9);
    let web1 = backend(net.addr(21, 8080), Mode::Status(500)).await;
    let web2 = backend(net.addr(22, 8080), Mode::Status(500)).await;
    let _mesh = net
        .start(&http_route(
            r#"  - matches: [{path: {type: PathPrefix, value: /retry}}]
    retry: {codes: [500], attempts: 2, backoff: 10ms}
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
"#,
        ))
        .await;
    assert_eq!(get(net, "/retry").await.0, 500);
    assert_eq!(tries(&web1) + tries(&web2), 3);
    // No `retry`: the mesh default (503 only), so a 500 is not retried.
    assert_eq!(get(net, "/other").await.0, 500);
    assert_eq!(tries(&web1) + tries(&web2), 4);

    let net = Net(10);
    let web1 = backend(net.addr(21, 8080), Mode::Slow).await;
    let web2 = backend(net.addr(22, 8080), Mode::Slow).await;
    let mesh = net
        .start(&http_route(
            r#"  - timeouts: {request: 300ms}
    backendRefs: [{name: web, port: 80}]
"#,
        ))
        .await;
    let t0 = Instant::now();
    assert_eq!(get(net, "/slow").await.0, 504);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(tries(&web1) + tries(&web2), 1);
    mesh.expect_log("wp", r#""response_flags":"UT""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_config_default_http_retry_policy_replaces_istios() {
    // Istio MeshConfig.defaultHttpRetryPolicy: the policy of routes without `retries`;
    // attempts 0 turns default retries off. Bad values are rejected by field.
    let net = Net(11);
    let web1 = backend(net.addr(21, 8080), Mode::Status(503)).await;
    let web2 = backend(net.addr(22, 8080), Mode::Status(503)).await;
    let mesh_config = |policy: &str| {
        format!(
            "---\napiVersion: dataplane.mesh.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec:\n  defaultHttpRetryPolicy: {policy}\n"
        )
    };
    let _mesh = net.start(&mesh_config("{attempts: 0}")).await;
    assert_eq!(get(net, "/x").await.0, 503);
    assert_eq!(tries(&web1) + tries(&web2), 1);
    let yaml = net.config(&mesh_config("{attempts: 1, retryOn: bogus}"));
    let e = mesh_dataplane::config::parse(std::path::Path::new("mesh.yaml"), &yaml)
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.defaultHttpRetryPolicy.retryOn"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_retried_by_default_and_flagged_ur_when_not() {
    // Envoy retryOn `refused-stream` (in Istio's default policy): an HTTP/2 REFUSED_STREAM
    // reset; Envoy logs an upstream reset as UR.
    let net = Net(12);
    let web1 = refusing_h2_backend(net.addr(21, 8080)).await;
    let web2 = refusing_h2_backend(net.addr(22, 8080)).await;
    let yaml = net
        .config(&vs(r#"  - match: [{uri: {prefix: /once}}]
    retries: {attempts: 0}
    route: [{destination: {host: web.ns.svc}}]
  - route: [{destination: {host: web.ns.svc}}]
"#))
        .replace("protocol: HTTP,", "protocol: HTTP2,");
    let mesh = net.start_yaml(&yaml).await;
    let client = net.ip(10).parse().unwrap();
    let tcp = connect_from(client, net.addr(41, 80)).await.unwrap();
    let (mut h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = |path: &str| {
        let req = http::Request::get(format!("http://web.ns.svc{path}"))
            .body(())
            .unwrap();
        let (resp, _) = h2c.send_request(req, true).unwrap();
        resp
    };
    let total = || *web1.lock().unwrap() + *web2.lock().unwrap();
    let resp = send("/x").await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(total(), 3);
    mesh.expect_log("wp", r#""response_flags":"URX""#);
    let resp = send("/once").await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(total(), 4);
    mesh.expect_log("wp", r#""response_flags":"UR""#);
}
