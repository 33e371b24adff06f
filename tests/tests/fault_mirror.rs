//! Fault injection and mirroring at the waypoint (in-process harness, loopback block
//! 127.211.x.x): aborts and delays with their flags, mirrored copies counted at a mirror
//! backend that may be slow or down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "l7_support/mod.rs"]
mod support;

use std::time::Duration;

use mesh_tests::*;
use support::*;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_with_their_flags() {
    // Istio fault injection task (VirtualService `fault`): aborts answer with the status
    // without reaching the app; delays hold the request first. Envoy flags: FI, DI.
    let net = Net(10);
    let seen = backend(net.addr(21, 8080), Mode::Http).await;
    let mesh = net
        .start(&vs(r#"  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web.ns.svc}}]
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: web.ns.svc}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 400ms, percent: 100}}
    route: [{destination: {host: web.ns.svc}}]
  - route: [{destination: {host: web.ns.svc}}]
"#))
        .await;
    let mut c = net.conn().await;
    let (status, _, body) = exchange_http(&mut c, &format!("GET /abort HTTP/1.1\r\n{HOST}")).await;
    assert_eq!((status, body.as_str()), (418, "fault filter abort"));
    mesh.expect_log("wp", r#""response_flags":"FI""#);
    // The request metric carries the flag too, as Istio's `istio_requests_total` does.
    let fi = |t: &str| {
        t.lines().any(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(r#"response_flags="FI""#)
                && l.contains(r#"response_code="418""#)
        })
    };
    let m = metrics_until(&mesh, fi).await;
    assert!(fi(&m), "{m}");
    let (status, headers, _) =
        exchange_http(&mut c, &format!("GET /grpc HTTP/1.1\r\n{HOST}")).await;
    assert_eq!(status, 200);
    assert!(
        headers.contains(&("grpc-status".into(), "14".into())),
        "{headers:?}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "aborts never reach the app"
    );
    let t0 = Instant::now();
    let (status, _, body) = exchange_http(&mut c, &format!("GET /delay HTTP/1.1\r\n{HOST}")).await;
    let took = t0.elapsed();
    assert_eq!((status, body.as_str()), (200, "ok /delay upgrade=-"));
    assert!(took >= Duration::from_millis(400), "{took:?}");
    mesh.expect_log("wp", r#""response_flags":"DI""#);
    let t0 = Instant::now();
    let (status, _, _) = exchange_http(&mut c, &format!("GET /other HTTP/1.1\r\n{HOST}")).await;
    assert_eq!(status, 200);
    assert!(t0.elapsed() < Duration::from_millis(400));
    // Attacker: Envoy's header-controlled faults are not honoured (nor forwarded).
    let (status, _, _) = exchange_http(
        &mut c,
        &format!("GET /other HTTP/1.1\r\n{HOST}\r\nx-envoy-fault-abort-request: 500"),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_copies_are_counted_and_never_hold_the_main_request() {
    let net = Net(20);
    let web = backend(net.addr(21, 8080), Mode::Http).await;
    let shadow = backend(net.addr(22, 8080), Mode::Http).await;
    let mesh = net
        .start(&vs(r#"  - match: [{uri: {prefix: /half}}]
    mirror: {host: shadow.ns.svc}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: web.ns.svc}}]
  - route: [{destination: {host: web.ns.svc}}]
    mirrors: [{destination: {host: shadow.ns.svc}}]
"#))
        .await;
    let mut c = net.conn().await;
    for i in 0..20 {
        let (status, _, body) =
            exchange_http(&mut c, &format!("GET /all/{i} HTTP/1.1\r\n{HOST}")).await;
        assert_eq!((status, body), (200, format!("ok /all/{i} upgrade=-")));
    }
    // Every copy arrives (fire and forget: wait for them), with Envoy's `-shadow` host.
    let copies = |seen: &Seen| seen.lock().unwrap().len();
    for _ in 0..100 {
        if copies(&shadow) == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(copies(&web), 20);
    assert_eq!(copies(&shadow), 20, "{:?}", shadow.lock().unwrap());
    assert!(
        shadow
            .lock()
            .unwrap()
            .iter()
            .all(|l| l.starts_with("web.ns.svc-shadow /all/")),
        "{:?}",
        shadow.lock().unwrap()
    );
    let m = metrics_until(&mesh, |t| metric(t, "mesh_mirror_sent_total", &[]) >= 20.0).await;
    assert_eq!(metric(&m, "mesh_mirror_sent_total", &[]), 20.0);
    assert_eq!(metric(&m, "mesh_mirror_dropped_overflow_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_backend_down_leaves_the_main_request_alone() {
    let net = Net(70);
    let web = backend(net.addr(21, 8080), Mode::Http).await;
    // Nothing listens for the shadow workload: its copies fail (503 UF), dropped.
    let mesh = net
        .start(&vs(r#"  - route: [{destination: {host: web.ns.svc}}]
    mirror: {host: shadow.ns.svc}
"#))
        .await;
    let mut c = net.conn().await;
    for i in 0..5 {
        let (status, _, body) =
            exchange_http(&mut c, &format!("GET /{i} HTTP/1.1\r\n{HOST}")).await;
        assert_eq!((status, body), (200, format!("ok /{i} upgrade=-")));
    }
    assert_eq!(web.lock().unwrap().len(), 5);
    let m = metrics_until(&mesh, |t| metric(t, "mesh_mirror_sent_total", &[]) >= 5.0).await;
    assert_eq!(metric(&m, "mesh_mirror_sent_total", &[]), 5.0);
    assert_eq!(metric(&m, "mesh_mirror_in_flight", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_absent_mirror_backend_does_not_touch_the_main_response() {
    let net = Net(30);
    let web = backend(net.addr(21, 8080), Mode::Http).await;
    // The shadow workload hangs every request.
    let shadow = backend(net.addr(22, 8080), Mode::Slow).await;
    let mesh = net
        .start(&vs(r#"  - route: [{destination: {host: web.ns.svc}}]
    mirror: {host: shadow.ns.svc}
"#))
        .await;
    let mut c = net.conn().await;
    let t0 = Instant::now();
    for i in 0..10 {
        let (status, _, _) = exchange_http(&mut c, &format!("GET /{i} HTTP/1.1\r\n{HOST}")).await;
        assert_eq!(status, 200);
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(web.lock().unwrap().len(), 10);
    for _ in 0..100 {
        if shadow.lock().unwrap().len() == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        shadow.lock().unwrap().len(),
        10,
        "copies sent, their answers never awaited"
    );
    let m = mesh.proxy("wp").metrics_text();
    assert_eq!(
        metric(&m, "mesh_mirror_in_flight", &[]),
        10.0,
        "bounded by the copy timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_request_mirror_filter() {
    // Gateway API HTTPRoute `RequestMirror` filter (GEP-3171 `percent`) on the waypoint.
    let net = Net(90);
    let web = backend(net.addr(21, 8080), Mode::Http).await;
    let shadow = backend(net.addr(22, 8080), Mode::Http).await;
    let _mesh = net
        .start(
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: ns}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}, percent: 100}
    backendRefs: [{name: web, port: 80}]
"#,
        )
        .await;
    let mut c = net.conn().await;
    for i in 0..5 {
        let (status, _, _) =
            exchange_http(&mut c, &format!("GET /gw/{i} HTTP/1.1\r\n{HOST}")).await;
        assert_eq!(status, 200);
    }
    for _ in 0..100 {
        if shadow.lock().unwrap().len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(web.lock().unwrap().len(), 5);
    let copies = shadow.lock().unwrap().clone();
    assert_eq!(copies.len(), 5, "{copies:?}");
    assert!(
        copies
            .iter()
            .all(|l| l.starts_with("web.ns.svc-shadow /gw/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_mirrored_up_to_the_cap() {
    use tokio::io::AsyncWriteExt;
    let net = Net(100);
    let web = backend(net.addr(21, 8080), Mode::Http).await;
    let shadow = backend(net.addr(22, 8080), Mode::Http).await;
    let mesh = net
        .start(&vs(r#"  - route: [{destination: {host: web.ns.svc}}]
    mirror: {host: shadow.ns.svc}
"#))
        .await;
    let mut c = net.conn().await;
    // 1 KiB is copied (the retry layer kept it); 100 KB is over the 64 KiB cap: the main
    // request gets it, the mirror nothing (counted).
    for n in [1024usize, 100_000] {
        let head = format!("POST /post HTTP/1.1\r\n{HOST}\r\ncontent-length: {n}\r\n\r\n");
        c.get_mut().write_all(head.as_bytes()).await.unwrap();
        c.get_mut().write_all(&vec![b'x'; n]).await.unwrap();
        let (first, _) = tokio::time::timeout(Duration::from_secs(10), read_head(&mut c))
            .await
            .unwrap()
            .unwrap();
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let mut body = String::new();
        let len = "ok /post upgrade=-".len();
        let mut buf = vec![0; len];
        tokio::io::AsyncReadExt::read_exact(&mut c, &mut buf)
            .await
            .unwrap();
        body.push_str(&String::from_utf8_lossy(&buf));
        assert_eq!(body, "ok /post upgrade=-");
    }
    let m = metrics_until(&mesh, |t| metric(t, "mesh_mirror_sent_total", &[]) >= 1.0).await;
    assert_eq!(metric(&m, "mesh_mirror_sent_total", &[]), 1.0);
    assert_eq!(metric(&m, "mesh_mirror_dropped_body_total", &[]), 1.0);
    assert_eq!(
        web.lock().unwrap().as_slice(),
        [
            "web.ns.svc /post upgrade=- body=1024",
            "web.ns.svc /post upgrade=- body=100000"
        ]
    );
    assert_eq!(
        shadow.lock().unwrap().as_slice(),
        ["web.ns.svc-shadow /post upgrade=- body=1024"]
    );
}
