//! Control-plane-side micro-benchmarks, in process:
//!
//! - **authz**: one L4 authorization decision with 1, 100 and 1000 policies in the mesh,
//!   timed one by one (the figure includes ~20-30 ns of clock reads). Two layouts: *spread*
//!   (policies over 100 namespaces and apps, 5% mesh-wide DENYs evaluated for every
//!   connection, as a real mesh) and *worst* (every policy applies to the destination and
//!   none matches until the last, so the decision walks all of them).
//! - **config**: a generated mesh of 10k workloads, 1k services and 1k policies, written as
//!   YAML and loaded the way a ztunnel does it on a file change: parse and validate the whole
//!   file, compile indexes, and swap it into a running proxy ([`Proxy::apply`]); with the
//!   process's RSS growth for holding it.

// Blocking measurement needs std's monotonic clock; tokio's Instant is for async code.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use mesh_authz::{Connection, Policy, PolicyIndex, WorkloadRef};
use mesh_dataplane::proxy::{Proxy, ProxyConfig};
use mesh_telemetry::process::ProcessStats;
use serde::Serialize;

/// One authz figure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuthzResult {
    pub(crate) layout: &'static str,
    pub(crate) policies: usize,
    /// Policies that apply to the destination workload.
    pub(crate) applicable: usize,
    pub(crate) decisions: usize,
    pub(crate) p50_ns: f64,
    pub(crate) p99_ns: f64,
    pub(crate) mean_ns: f64,
    pub(crate) allowed_share: f64,
}

fn spec(json: serde_json::Value, ns: &str, name: &str) -> anyhow::Result<Policy> {
    let s: mesh_authz::istio::AuthorizationPolicySpec = serde_json::from_value(json)?;
    s.to_policy(ns, name, "istio-system")
        .map_err(|e| anyhow::anyhow!("generated policy {ns}/{name}: {e:?}"))
}

/// `n` policies in the *spread* or *worst* layout.
fn policies(n: usize, worst: bool) -> anyhow::Result<Vec<Policy>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let p = if worst {
            // All select the destination; ALLOW from a principal nobody has, except the last.
            let who = if i + 1 == n {
                "cluster.local/ns/ns-0/sa/*".to_owned()
            } else {
                format!("cluster.local/ns/ghost-{i}/sa/x")
            };
            spec(
                serde_json::json!({
                    "selector": {"matchLabels": {"app": "app-0"}},
                    "rules": [{"from": [{"source": {"principals": [who], "ipBlocks": ["10.0.0.0/8"]}}],
                               "to": [{"operation": {"ports": ["80", "443", "8080"]}}]}]
                }),
                "ns-0",
                &format!("p{i}"),
            )?
        } else if i % 20 == 19 {
            // 5%: mesh-wide DENYs, evaluated for every workload.
            spec(
                serde_json::json!({
                    "action": "DENY",
                    "rules": [{"from": [{"source": {"principals": [format!("cluster.local/ns/evil-{i}/sa/*")]}}]},
                              {"from": [{"source": {"ipBlocks": [format!("192.168.{}.0/24", i % 250)]}}]}]
                }),
                "istio-system",
                &format!("deny-{i}"),
            )?
        } else {
            let ns = format!("ns-{}", i % 100);
            spec(
                serde_json::json!({
                    "selector": {"matchLabels": {"app": format!("app-{}", (i / 100) % 10)}},
                    "rules": [{"from": [{"source": {"principals": [format!("cluster.local/ns/{ns}/sa/client-{}", i % 7)]}},
                                        {"source": {"namespaces": ["ops", "monitoring"]}}],
                               "to": [{"operation": {"ports": ["80", "443"]}}]}]
                }),
                &ns,
                &format!("p{i}"),
            )?
        };
        v.push(p);
    }
    Ok(v)
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64
}

/// The authz micro-benchmark.
pub(crate) fn authz(decisions: usize) -> anyhow::Result<Vec<AuthzResult>> {
    let labels: BTreeMap<String, String> = [("app".to_owned(), "app-0".to_owned())].into();
    let dst = WorkloadRef {
        key: "ns-0/dst",
        namespace: "ns-0",
        labels: &labels,
    };
    // A pool of sources: principals of several namespaces, addresses in 10/8.
    let principals: Vec<String> = (0..64)
        .map(|i| format!("cluster.local/ns/ns-{}/sa/client-{}", i % 4, i % 7))
        .collect();
    let namespaces: Vec<String> = (0..64).map(|i| format!("ns-{}", i % 4)).collect();
    let mut out = Vec::new();
    for (layout, worst) in [("spread", false), ("worst", true)] {
        for n in [1usize, 100, 1000] {
            let ps = policies(n, worst)?;
            let index = PolicyIndex::build(&ps, [dst], "istio-system");
            let applicable = index.applied(dst.key).len();
            let mut samples = Vec::with_capacity(decisions);
            let mut allowed = 0usize;
            for i in 0..decisions {
                let k = i % principals.len();
                let c = Connection {
                    source_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                        10,
                        1,
                        (k % 250) as u8,
                        7,
                    )),
                    remote_ip: None,
                    source_principal: Some(&principals[k]),
                    source_namespace: Some(&namespaces[k]),
                    destination_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 2, 0, 1)),
                    destination_port: [80u16, 443, 8080][i % 3],
                };
                let t = Instant::now();
                let d = black_box(index.evaluate(black_box(dst.key), black_box(&c)));
                let ns = t.elapsed().as_nanos() as u64;
                if d.is_allowed() {
                    allowed += 1;
                }
                samples.push(ns);
            }
            let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
            samples.sort_unstable();
            out.push(AuthzResult {
                layout,
                policies: n,
                applicable,
                decisions,
                p50_ns: percentile(&samples, 0.5),
                p99_ns: percentile(&samples, 0.99),
                mean_ns: mean,
                allowed_share: allowed as f64 / decisions.max(1) as f64,
            });
        }
    }
    Ok(out)
}

/// The config-apply figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConfigResult {
    pub(crate) workloads: usize,
    pub(crate) services: usize,
    pub(crate) policies: usize,
    pub(crate) yaml_mb: f64,
    /// Parse, validate and compile the whole file.
    pub(crate) parse_ms: f64,
    /// Swap the compiled state into a running proxy (certificates and listeners for changed
    /// local workloads, re-authorization of live connections).
    pub(crate) apply_ms: f64,
    pub(crate) total_ms: f64,
    /// RSS growth of this process from before the first load to holding the applied state.
    pub(crate) rss_mb: f64,
    pub(crate) rss_peak_mb: f64,
}

/// A mesh of `w` workloads (20 of them local to node `bench`), `s` services of `w / s`
/// endpoints each and `p` policies, as one YAML file.
fn mesh_yaml(w: usize, s: usize, p: usize, salt: &str) -> String {
    let mut y = String::with_capacity(w * 300 + s * 400 + p * 400);
    let per = (w / s.max(1)).max(1);
    // A workload lives in its service's namespace (a ServiceEntry selects in its own).
    let ns_of = |i: usize| (i / per) % 100;
    let local: Vec<String> = (0..20).map(|i| format!("ns-{}/w{i}", ns_of(i))).collect();
    let _ = write!(
        y,
        "apiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {{name: bench}}\nspec: {{address: 127.70.0.1, workloads: [{}]}}\n",
        local.join(", ")
    );
    let remote: Vec<String> = (20..w).map(|i| format!("ns-{}/w{i}", ns_of(i))).collect();
    let _ = write!(
        y,
        "---\napiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {{name: remote}}\nspec: {{address: 127.70.0.2, workloads: [{}]}}\n",
        remote.join(", ")
    );
    for i in 0..w {
        let svc = i / per;
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w{i}, namespace: ns-{}}}\nspec: {{address: 127.71.{}.{}, serviceAccount: sa-{}, labels: {{app: svc-{svc}, version: v{}{salt}}}}}\n",
            ns_of(i),
            i / 250,
            i % 250 + 1,
            i % 13,
            i % 3
        );
    }
    for j in 0..s {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{j}, namespace: ns-{}}}\nspec:\n  hosts: [svc-{j}.example.internal]\n  addresses: [127.72.{}.{}]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}, {{number: 9090, name: grpc, protocol: GRPC}}]\n  workloadSelector: {{labels: {{app: svc-{j}}}}}\n",
            j % 100,
            j / 250,
            j % 250 + 1
        );
    }
    for k in 0..p {
        let ns = (k % s.max(1)) % 100;
        let _ = write!(
            y,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{k}, namespace: ns-{ns}}}\nspec:\n  selector: {{matchLabels: {{app: svc-{}}}}}\n  action: {}\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/ns-{ns}/sa/sa-{}], ipBlocks: [10.0.0.0/8]}}}}]\n    to: [{{operation: {{ports: [\"8080\"]}}}}]\n",
            k % s.max(1),
            if k.is_multiple_of(10) {
                "DENY"
            } else {
                "ALLOW"
            },
            k % 13
        );
    }
    y
}

/// The config-apply benchmark: `w` workloads, `s` services, `p` policies.
pub(crate) fn config_apply(w: usize, s: usize, p: usize) -> anyhow::Result<ConfigResult> {
    let dir = tempfile::tempdir()?;
    let yaml = mesh_yaml(w, s, p, "");
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, &yaml)?;
    let (ca, _) = mesh_identity::LocalCa::load_or_create(dir.path().join("ca"))?;
    let bundle = ca.trust_bundle()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rss0 = ProcessStats::read().map_or(0, |s| s.resident_bytes);
    // Start-up: the proxy serving the full mesh.
    let state = mesh_dataplane::config::parse(&path, &yaml).context("generated config")?;
    let cfg = ProxyConfig {
        role: mesh_dataplane::roles::ztunnel("bench"),
        ..ProxyConfig::default()
    };
    let proxy = rt.block_on(Proxy::start(cfg, state, Arc::new(ca), bundle))?;
    // A changed file (every workload's labels change): the whole reload path, timed.
    let changed = mesh_yaml(w, s, p, "-b");
    let t = Instant::now();
    let state = mesh_dataplane::config::parse(&path, &changed).context("changed config")?;
    let parsed = t.elapsed();
    let report = rt.block_on(proxy.apply(state))?;
    let total = t.elapsed();
    anyhow::ensure!(report.generation == 2, "apply did not take: {report:?}");
    anyhow::ensure!(
        proxy.state().workloads.len() == w,
        "applied state has {} workloads",
        proxy.state().workloads.len()
    );
    let stats = ProcessStats::read().unwrap_or_default();
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        })
        .unwrap_or(0)
        * 1024;
    let result = ConfigResult {
        workloads: w,
        services: s,
        policies: p,
        yaml_mb: yaml.len() as f64 / 1e6,
        parse_ms: parsed.as_secs_f64() * 1e3,
        apply_ms: (total - parsed).as_secs_f64() * 1e3,
        total_ms: total.as_secs_f64() * 1e3,
        rss_mb: stats.resident_bytes.saturating_sub(rss0) as f64 / (1024.0 * 1024.0),
        rss_peak_mb: peak as f64 / (1024.0 * 1024.0),
    };
    rt.block_on(proxy.shutdown());
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(result)
}
