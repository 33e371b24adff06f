//! Endpoint choice at the waypoint (L7), in process: `consistentHash` keeps a key on its
//! endpoint across 1000 requests, a hash cookie is generated and then honoured, many distinct
//! keys spread over the endpoints (an attacker cannot pin more than hashing allows).
//! Block 127.212.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::BufReader;

/// Node a: `ns/client` (127.212.t.10); node b: `ns/web1..3` (127.212.t.21-23), apps on 8080,
/// behind service `web.ns.svc` (VIP 127.212.t.100:80) and waypoint `ns/wp` (127.212.t.3);
/// `lb` is the DestinationRule's `loadBalancer`.
fn mesh_yaml(t: u8, lb: &str) -> String {
    // `lb` may carry more of the trafficPolicy after the loadBalancer: `{…}, outlierDetection: …`.
    let mut y = format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: 127.212.{t}.1, serviceListeners: true, workloads: [ns/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: 127.212.{t}.2, workloads: [ns/web1, ns/web2, ns/web3]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: ns}}
spec: {{address: 127.212.{t}.10, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: ns, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  hosts: [web.ns.svc]
  addresses: [127.212.{t}.100]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: ns}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: 127.212.{t}.3}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: ns}}
spec:
  host: web.ns.svc
  trafficPolicy: {{loadBalancer: {lb}}}
"#
    );
    for i in 1..=3 {
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web{i}, namespace: ns}}\nspec: {{address: 127.212.{t}.2{i}, serviceAccount: web, labels: {{app: web}}, locality: us-east/a/{i}}}\n"
        ));
    }
    y
}

async fn start(t: u8, lb: &str) -> InprocMesh {
    start_with(t, lb, &["web1", "web2", "web3"], "").await
}

/// As [`start`] with only the `up` backends listening and `extra` documents in the config.
async fn start_with(t: u8, lb: &str, up: &[&'static str], extra: &str) -> InprocMesh {
    for (i, name) in ["web1", "web2", "web3"].into_iter().enumerate() {
        if up.contains(&name) {
            let addr: SocketAddr = format!("127.212.{t}.2{}:8080", i + 1).parse().unwrap();
            http_app(addr, name).await;
        }
    }
    let mut mesh = InprocMesh::new(&(mesh_yaml(t, lb) + extra));
    mesh.ztunnel("b", &[]).await;
    mesh.waypoint("wp", "ns/wp", &[]).await;
    mesh.ztunnel("a", &[]).await;
    mesh
}

/// A keep-alive connection from the client to the service VIP.
async fn client(t: u8) -> BufReader<tokio::net::TcpStream> {
    let src = format!("127.212.{t}.10").parse().unwrap();
    let vip: SocketAddr = format!("127.212.{t}.100:80").parse().unwrap();
    BufReader::new(connect_from(src, vip).await.unwrap())
}

/// One GET with `headers`: (status, response headers, the backend that answered).
async fn get(
    s: &mut BufReader<tokio::net::TcpStream>,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let (status, h, body) = tokio::time::timeout(
        Duration::from_secs(10),
        http_request(s, "GET", path, "web.ns.svc", headers),
    )
    .await
    .unwrap();
    let backend = body
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    (status, h, backend)
}

/// Istio consistentHash.httpHeaderName (Envoy ring hash): every request of a key goes to the
/// same endpoint, over 1000 requests on 20 keys; the keys use more than one endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_hash_keeps_affinity_over_1000_requests() {
    const T: u8 = 1;
    let _mesh = start(T, "{consistentHash: {httpHeaderName: x-user}}").await;
    let mut s = client(T).await;
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for n in 0..1000 {
        let user = format!("user-{}", n % 20);
        let (status, _, backend) = get(&mut s, "/", &[("x-user", &user)]).await;
        assert_eq!(status, 200);
        seen.entry(user).or_default().insert(backend);
    }
    assert!(seen.values().all(|b| b.len() == 1), "{seen:?}");
    let used: HashSet<&String> = seen.values().flatten().collect();
    assert!(used.len() >= 2, "{seen:?}");
}

/// Istio consistentHash.maglev with httpQueryParameterName; an attacker sending many distinct
/// keys gets them spread over all endpoints as hashing does (each between 15% and 55%).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_keys_spread_over_endpoints() {
    const T: u8 = 2;
    let _mesh = start(
        T,
        "{consistentHash: {httpQueryParameterName: u, maglev: {tableSize: 65537}}}",
    )
    .await;
    let mut s = client(T).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for n in 0..300 {
        let (status, _, backend) = get(&mut s, &format!("/?u=k{n}"), &[]).await;
        assert_eq!(status, 200);
        *counts.entry(backend).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|c| (45..=165).contains(c)),
        "{counts:?}"
    );
    // The same key: always the same endpoint.
    let first = get(&mut s, "/?u=pinned", &[]).await.2;
    for _ in 0..50 {
        assert_eq!(get(&mut s, "/x?a=1&u=pinned", &[]).await.2, first);
    }
}

/// Istio consistentHash.httpCookie with a ttl (Envoy: a missing cookie is generated and set on
/// the response, quoted, HttpOnly); requests carrying it stay on one endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_cookie_is_generated_then_sticks() {
    const T: u8 = 3;
    let _mesh = start(
        T,
        "{consistentHash: {httpCookie: {name: sticky, path: /, ttl: 60s}}}",
    )
    .await;
    let mut s = client(T).await;
    let (status, headers, first) = get(&mut s, "/", &[]).await;
    assert_eq!(status, 200);
    let set = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.clone())
        .expect("a generated cookie");
    assert!(set.starts_with("sticky=\""), "{set}");
    assert!(set.ends_with("; Max-Age=60; Path=/; HttpOnly"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    for _ in 0..100 {
        let (status, h, backend) = get(&mut s, "/", &[("cookie", &cookie)]).await;
        assert_eq!(status, 200);
        assert_eq!(backend, first, "the cookie's endpoint");
        assert!(h.iter().all(|(k, _)| k != "set-cookie"), "set only once");
    }
}

/// The waypoint's own workload (its pod, at its address) in us-east/a/2.
fn waypoint_pod(t: u8) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: wp-pod, namespace: ns}}\nspec: {{address: 127.212.{t}.3, locality: us-east/a/2}}\n"
    )
}

/// Istio locality failover (with outlierDetection; docs/tasks/traffic-management/
/// locality-load-balancing/failover): the waypoint sends everything to the endpoint in its
/// own subzone while it is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_prefers_the_waypoints_subzone() {
    const T: u8 = 4;
    let lb = "{simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100}";
    let _mesh = start_with(T, lb, &["web1", "web2", "web3"], &waypoint_pod(T)).await;
    let mut s = client(T).await;
    for _ in 0..30 {
        let (status, _, backend) = get(&mut s, "/", &[]).await;
        assert_eq!((status, backend.as_str()), (200, "web2"));
    }
}

/// The same with the local endpoint down: once it is ejected, traffic fails over to the next
/// tier (the other subzones of the zone), never back while ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_fails_over_when_the_local_endpoint_is_ejected() {
    const T: u8 = 5;
    let lb = "{simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100}";
    let _mesh = start_with(T, lb, &["web1", "web3"], &waypoint_pod(T)).await;
    let mut served = HashMap::new();
    for _ in 0..30 {
        // A new connection each time: a failed request may close it.
        let mut s = client(T).await;
        let (status, _, backend) = get(&mut s, "/", &[("connection", "close")]).await;
        *served.entry((status, backend)).or_insert(0) += 1;
    }
    let ok: usize = served
        .iter()
        .filter(|((st, b), _)| *st == 200 && (b == "web1" || b == "web3"))
        .map(|(_, n)| n)
        .sum();
    // At most the first request (or none, if a retry avoided web2) fails.
    assert!(ok >= 29, "{served:?}");
}

/// Envoy ring hash: when an endpoint leaves (a new config without it), only its keys move;
/// the others stay where they were (the fraction moved is its share, ~1/N).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leaving_endpoints_keys_move() {
    const T: u8 = 6;
    let lb = "{consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 1024}}}";
    let mesh = start(T, lb).await;
    let keys = 300;
    let mut before = Vec::new();
    let mut s = client(T).await;
    for n in 0..keys {
        before.push(get(&mut s, "/", &[("x-user", &format!("k{n}"))]).await.2);
    }
    // web3 leaves the service (its workload no longer selected).
    let yaml = mesh_yaml(T, lb).replace(
        "address: 127.212.6.23, serviceAccount: web, labels: {app: web}",
        "address: 127.212.6.23, serviceAccount: web, labels: {app: gone}",
    );
    assert_ne!(yaml, mesh_yaml(T, lb));
    mesh.proxy("wp").apply_yaml(&yaml).await.unwrap();
    let mut s = client(T).await;
    let mut moved = 0;
    for (n, was) in before.iter().enumerate() {
        let now = get(&mut s, "/", &[("x-user", &format!("k{n}"))]).await.2;
        assert_ne!(now, "web3");
        if now != *was {
            assert_eq!(was, "web3", "k{n} moved from {was} to {now}");
            moved += 1;
        }
    }
    let on3 = before.iter().filter(|b| *b == "web3").count();
    assert_eq!(moved, on3);
    assert!((40..=170).contains(&on3), "about a third: {on3} of {keys}");
}
