//! Timers against a slow client at the waypoint (in-process harness, loopback block
//! 127.219.x.x; the retry tests' mesh and backends): Envoy's route timeout and per-try
//! timeout run from the end of the downstream request (envoy route_components.proto,
//! `RouteAction.timeout`: "spans between the point at which the entire downstream request
//! (i.e. end-of-stream) has been processed and when the upstream response has been
//! completely processed"; `RetryPolicy.per_try_timeout` likewise), so a client trickling its
//! body neither fires them nor decides how many tries go upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // The retry tests' helpers, partly used here.
#[path = "retries_support/mod.rs"]
mod support;

use std::time::Duration;

use mesh_tests::connect_from;
use support::*;
use tokio::io::{AsyncWriteExt, BufReader};

/// The retry tests' mesh moved to this file's block.
fn ip(c: u8, host: u8) -> String {
    format!("127.219.{c}.{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_body_gets_one_try_and_no_per_try_504() {
    // Attacker: a 10-byte body sent a byte per 200 ms (2 s) under perTryTimeout 500ms and
    // retryOn 5xx/reset/gateway-error. Before the fix the per-try timer ran from dispatch:
    // it fired mid-upload, and the client chose how many upstream tries were made.
    let c = 1;
    let web1 = backend(
        format!("{}:8080", ip(c, 21)).parse().unwrap(),
        Mode::Status(200),
    )
    .await;
    let web2 = backend(
        format!("{}:8080", ip(c, 22)).parse().unwrap(),
        Mode::Status(200),
    )
    .await;
    let yaml = Net(c)
        .config(&vs(r#"  - timeout: 1s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset,gateway-error"}
    route: [{destination: {host: web.ns.svc}}]
"#))
        .replace("127.210.", "127.219.");
    let mesh = Net(c).start_yaml(&yaml).await;
    let client = ip(c, 10).parse().unwrap();
    let vip = format!("{}:80", ip(c, 41)).parse().unwrap();
    let mut s = BufReader::new(connect_from(client, vip).await.unwrap());
    // Warm the HBONE path first so the trickle measures only the timers.
    let (status, _) = exchange(&mut s, "GET /warm HTTP/1.1\r\nhost: web.ns.svc", b"").await;
    assert_eq!(status, 200);
    let head = "POST /slow HTTP/1.1\r\nhost: web.ns.svc\r\ncontent-length: 10\r\n\r\n";
    s.get_mut().write_all(head.as_bytes()).await.unwrap();
    for _ in 0..9 {
        s.get_mut().write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.get_mut().write_all(b"x").await.unwrap();
    let (first, _) = tokio::time::timeout(Duration::from_secs(10), read_head(&mut s))
        .await
        .expect("response in time")
        .expect("a response");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let got: Vec<_> = [web1, web2]
        .iter()
        .flat_map(|w| w.lock().unwrap().clone())
        .filter(|g| g.path == "/slow")
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body_len, 10);
    // The first try: a try cut mid-upload never reaches `got` (its body is incomplete),
    // but a retry would carry a higher attempt count.
    assert_eq!(got[0].attempt.as_deref(), Some("1"));
    drop(mesh);
}
