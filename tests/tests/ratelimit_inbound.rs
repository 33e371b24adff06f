//! Rate limits at a workload's inbound (`SIDECAR_INBOUND`), in process: Envoy's network
//! local rate limit at the destination ztunnel's connection admission (refusals counted), and
//! the HTTP local rate limit at a sidecar's inbound. Loopback block 127.214.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ratelimit_support/mod.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use support::{B, header, mesh_yaml, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// Envoy's network local rate limit (`envoy.filters.network.local_ratelimit`) on the web
/// workload's inbound: 2 connections per hour; the third is refused and counted (RL).
const L4: &str = r#"---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: conn-limit, namespace: ns}
spec:
  workloadSelector: {labels: {app: web}}
  configPatches:
  - applyTo: NETWORK_FILTER
    match:
      context: SIDECAR_INBOUND
      listener: {filterChain: {filter: {name: envoy.filters.network.tcp_proxy}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: tcp_local_rate_limiter
          token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 3600s}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_and_counts() {
    let o = 20;
    let mut mesh = InprocMesh::new(&mesh_yaml(o, false, L4));
    http_app(format!("127.{B}.{}.21:8080", o + 1).parse().unwrap(), "web").await;
    let none: [&str; 0] = [];
    mesh.ztunnel("b", &none).await;
    mesh.ztunnel("a", &none).await;
    let vip: SocketAddr = format!("127.{B}.{}.1:80", o + 2).parse().unwrap();
    let client: IpAddr = format!("127.{B}.{}.10", o + 1).parse().unwrap();
    let mut served = 0;
    for _ in 0..4 {
        let mut s = connect_from(client, vip).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: web.ns.svc\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        if String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200") {
            served += 1;
        }
    }
    assert_eq!(served, 2);
    let m = mesh.proxy("b").metrics_text();
    let refused = metric(
        &m,
        "istio_tcp_connections_closed_total",
        &["response_flags=\"RL\""],
    );
    assert_eq!(refused, 2, "{m}");
    mesh.expect_log("b", "connection rate limit exceeded");
}

/// A sidecar's inbound (`SIDECAR_INBOUND`): Istio's task shape selecting the workload by
/// label; the sidecar serves the port as HTTP because of the limit alone (no L7 policy).
fn sidecar_extra(o: u8) -> String {
    let (w, v) = (o + 1, o + 2);
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: side, namespace: ns}}
spec:
  address: 127.{B}.{w}.30
  serviceAccount: side
  labels: {{app: side, sidecar.istio.io/inject: "true"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: side, namespace: ns}}
spec:
  hosts: [side.ns.svc]
  addresses: [127.{B}.{v}.3]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: side}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: filter-local-ratelimit-svc, namespace: ns}}
spec:
  workloadSelector: {{labels: {{app: side}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager}}}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {{max_tokens: 2, tokens_per_fill: 2, fill_interval: 3600s}}
            filter_enabled: {{runtime_key: e, default_value: {{numerator: 100, denominator: HUNDRED}}}}
            filter_enforced: {{runtime_key: f, default_value: {{numerator: 100, denominator: HUNDRED}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_inbound_local_limit() {
    let o = 30;
    let mut mesh = InprocMesh::new(&mesh_yaml(o, false, &sidecar_extra(o)));
    http_app(
        format!("127.{B}.{}.30:8080", o + 1).parse().unwrap(),
        "side",
    )
    .await;
    let none: [&str; 0] = [];
    mesh.sidecar(
        "side",
        "ns/side",
        None,
        &["--outbound-port", "0", "--plaintext-port", "0"],
    )
    .await;
    mesh.ztunnel("a", &none).await;
    let vip: SocketAddr = format!("127.{B}.{}.3:80", o + 2).parse().unwrap();
    let client: IpAddr = format!("127.{B}.{}.10", o + 1).parse().unwrap();
    let mut c = BufReader::new(connect_from(client, vip).await.unwrap());
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (status, h, _) = http_request(&mut c, "GET", "/", "side.ns.svc", &[]).await;
        codes.push((status, header(&h, "x-app").map(str::to_owned)));
    }
    let side = Some("side".to_owned());
    assert_eq!(
        codes,
        [(200, side.clone()), (200, side), (429, None), (429, None)]
    );
    mesh.expect_log("side", r#""response_flags":"RL""#);
}
