//! The L4 connection rate limit (Envoy's `envoy.filters.network.local_ratelimit` on a
//! workload's inbound) against attackers and the caller's resilience, in process: a token is
//! taken only for an authorized connection, and the caller treats the tunnel's 429 as a
//! policy refusal (one attempt, the endpoint not ejected). Loopback block 127.217.x.x, each
//! test its own third octets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Node a (`127.217.o.1`) runs `ns/client` (`.o+1.10`, SA client) and `ns/intruder`
/// (`.o+1.11`, SA intruder); node b (`.o.2`) runs `ns/web` and `ns/web2` (`.o+1.21/.22`,
/// echo on 9000). Service `web.ns.svc` (`127.217.o+2.1:9000`) selects both. Each web
/// workload: 1 connection per hour (`max`); the intruder is denied by an
/// AuthorizationPolicy; `dr` is the service's DestinationRule traffic policy.
fn mesh(o: u8, max: u32, dr: &str) -> String {
    let (w, v) = (o + 1, o + 2);
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.217.{o}.1, serviceListeners: true, workloads: [ns/client, ns/intruder]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.217.{o}.2, workloads: [ns/web, ns/web2]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.217.{w}.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder, namespace: ns}}
spec: {{address: 127.217.{w}.11, serviceAccount: intruder}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: ns}}
spec: {{address: 127.217.{w}.21, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web2, namespace: ns}}
spec: {{address: 127.217.{w}.22, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns}}
spec:
  hosts: [web.ns.svc]
  addresses: [127.217.{v}.1]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: ns}}
spec:
  host: web.ns.svc
  trafficPolicy: {dr}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-intruder, namespace: ns}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: DENY
  rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns/sa/intruder]}}}}]}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: conn-limit, namespace: ns}}
spec:
  workloadSelector: {{labels: {{app: web}}}}
  configPatches:
  - applyTo: NETWORK_FILTER
    match:
      context: SIDECAR_INBOUND
      listener: {{filterChain: {{filter: {{name: envoy.filters.network.tcp_proxy}}}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: tcp_local_rate_limiter
          token_bucket: {{max_tokens: {max}, tokens_per_fill: {max}, fill_interval: 3600s}}
"#
    )
}

fn addr(o: u8, host: u8) -> IpAddr {
    format!("127.217.{}.{host}", o + 1).parse().unwrap()
}

/// Whether one connection from `src` to the service echoes (else it was closed).
async fn served(o: u8, src: IpAddr) -> bool {
    let vip: SocketAddr = format!("127.217.{}.1:9000", o + 2).parse().unwrap();
    let mut s = connect_from(src, vip).await.unwrap();
    let _ = s.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf)).await;
    matches!(r, Ok(Ok(_))) && &buf == b"ping"
}

async fn start(o: u8, max: u32, dr: &str) -> InprocMesh {
    let mut mesh = InprocMesh::new(&mesh(o, max, dr));
    for host in [21, 22] {
        echo_server(SocketAddr::new(addr(o, host), 9000)).await;
    }
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;
    mesh
}

/// Attacker (review finding 6): a peer the destination's AuthorizationPolicy denies opens
/// connections in a loop. Envoy runs `envoy.filters.network.rbac` before the network
/// `local_ratelimit` in Istio's inbound chain (the RBAC filter is inserted first; Istio's
/// rate-limit task inserts the limiter INSERT_BEFORE tcp_proxy, i.e. after RBAC), so a denied
/// connection never takes a token: the authorized client still gets its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_peers_do_not_drain_the_connection_bucket() {
    let o = 10;
    let mesh = start(o, 1, "{}").await;
    for _ in 0..6 {
        assert!(!served(o, addr(o, 11)).await, "the intruder is denied");
    }
    // One token per web workload: both of the client's first two connections may land on
    // either, so count what the client gets over four attempts: two (one per workload).
    let mut got = 0;
    for _ in 0..4 {
        got += usize::from(served(o, addr(o, 10)).await);
    }
    let b = mesh.logs("b");
    assert_eq!(got, 2, "{b}");
    assert_eq!(
        b.matches("connection refused by authorization policy")
            .count(),
        6
    );
    mesh.expect_log("b", "connection rate limit exceeded");
}

/// Review finding 6, caller side: a CONNECT answered 429 is a policy refusal (as 401):
/// Envoy's tcp_proxy does not retry a refused connection that the peer closed by policy, and
/// Istio's outlier detection counts only connect failures at L4 (`consecutive5xxErrors`
/// "for TCP: connect timeouts and connection errors/failures"), so a rate-limited connection
/// is one attempt, never retried on another endpoint, and ejects nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_connection_is_one_attempt_and_ejects_nothing() {
    let o = 20;
    let dr = "{outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100, baseEjectionTime: 60s}}";
    let mesh = start(o, 1, dr).await;
    let mut refused = 0;
    for _ in 0..6 {
        refused += usize::from(!served(o, addr(o, 10)).await);
    }
    assert_eq!(refused, 4, "one token per workload, two workloads");
    let a = mesh.logs("a");
    assert_eq!(
        a.matches("outlier detection: endpoint ejected").count(),
        0,
        "{a}"
    );
    assert_eq!(a.matches("retrying on another endpoint").count(), 0, "{a}");
    assert_eq!(a.matches("outbound HBONE failed").count(), refused, "{a}");
    // Log lines may land just after the client saw its connection closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let count = || {
        mesh.logs("b")
            .matches("connection rate limit exceeded")
            .count()
    };
    while count() != refused && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(), refused, "{}", mesh.logs("b"));
    let m = mesh.proxy("a").metrics_text();
    assert!(m.contains("response_flags=\"RL\""), "{m}");
    assert!(!m.contains("response_flags=\"UF\""), "{m}");
}
