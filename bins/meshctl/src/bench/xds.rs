//! The xDS-apply micro-benchmark, in process: a workload-API snapshot of a generated mesh,
//! then single-workload deltas, decoded, validated, rebuilt and swapped into a running proxy.

// Blocking measurement needs std's monotonic clock; tokio's Instant is for async code.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Instant;

use mesh_dataplane::proxy::{Proxy, ProxyConfig};
use serde::Serialize;

/// The xDS-apply figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct XdsResult {
    pub(crate) workloads: usize,
    pub(crate) services: usize,
    pub(crate) policies: usize,
    /// Encoded size of the snapshot's resources.
    pub(crate) snapshot_mb: f64,
    /// Full snapshot: decode every resource, validate it into the store, build the state,
    /// swap it into a running proxy.
    pub(crate) snapshot_ms: f64,
    /// One changed workload: decode, validate, rebuild, swap. Median and worst of the runs.
    pub(crate) delta_p50_ms: f64,
    pub(crate) delta_max_ms: f64,
    pub(crate) delta_runs: usize,
}

/// Resources by name, encoded.
type Encoded = Vec<(String, Vec<u8>)>;

/// Workload-API resources of a mesh like `control::mesh_yaml`'s: `w` workloads (20 on node
/// `bench`), `s` services with `w / s` endpoints each, `p` policies (one in ten
/// namespace-wide, the rest listed by their service's workloads). Encoded, as on the wire.
fn xds_resources(w: usize, s: usize, p: usize, revision: &str) -> (Encoded, Encoded) {
    let per = (w / s.max(1)).max(1);
    let mut addresses = Vec::with_capacity(w + s);
    addresses.extend((0..w).map(|i| xds_workload(i, per, s, p, revision)));
    addresses.extend((0..s).map(xds_service));
    let policies = (0..p).map(|k| xds_policy(k, s)).collect();
    (addresses, policies)
}

/// The host of service `j` of the xDS mesh.
fn xds_host(j: usize) -> String {
    format!("svc-{j}.ns-{}.svc.cluster.local", j % 100)
}

/// Workload `i` of the xDS mesh (`per` workloads per service of `s`, `p` policies), encoded.
fn xds_workload(i: usize, per: usize, s: usize, p: usize, revision: &str) -> (String, Vec<u8>) {
    use mesh_xds::pb::workload as wl;
    use prost::Message as _;
    let svc = (i / per).min(s.saturating_sub(1));
    let ns = (i / per) % 100;
    let mut services = std::collections::HashMap::new();
    services.insert(
        format!("ns-{}/{}", svc % 100, xds_host(svc)),
        wl::PortList {
            ports: vec![
                wl::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                },
                wl::Port {
                    service_port: 9090,
                    target_port: 9090,
                    app_protocol: 0,
                },
            ],
        },
    );
    let listed = (0..p)
        .filter(|k| k % 10 != 0 && k % s.max(1) == svc)
        .map(|k| format!("ns-{}/p{k}", (k % s.max(1)) % 100))
        .collect();
    let uid = format!("Kubernetes//Pod/ns-{ns}/w{i}");
    let wk = wl::Workload {
        uid: uid.clone(),
        name: format!("w{i}"),
        namespace: format!("ns-{ns}"),
        addresses: vec![vec![127, 71, (i / 250) as u8, (i % 250 + 1) as u8]],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        service_account: format!("sa-{}", i % 13),
        node: if i < 20 { "bench" } else { "remote" }.into(),
        canonical_name: format!("svc-{svc}"),
        canonical_revision: revision.into(),
        services,
        authorization_policies: listed,
        ..Default::default()
    };
    let a = wl::Address {
        r#type: Some(wl::address::Type::Workload(wk)),
    };
    (uid, a.encode_to_vec())
}

/// Service `j` of the xDS mesh, encoded.
fn xds_service(j: usize) -> (String, Vec<u8>) {
    use mesh_xds::pb::workload as wl;
    use prost::Message as _;
    let sv = wl::Service {
        name: format!("svc-{j}"),
        namespace: format!("ns-{}", j % 100),
        hostname: xds_host(j),
        addresses: vec![wl::NetworkAddress {
            network: String::new(),
            address: vec![127, 72, (j / 250) as u8, (j % 250 + 1) as u8],
            length: None,
        }],
        ports: vec![
            wl::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: wl::AppProtocol::Http11 as i32,
            },
            wl::Port {
                service_port: 9090,
                target_port: 0,
                app_protocol: wl::AppProtocol::Grpc as i32,
            },
        ],
        ..Default::default()
    };
    let a = wl::Address {
        r#type: Some(wl::address::Type::Service(sv)),
    };
    (format!("ns-{}/{}", j % 100, xds_host(j)), a.encode_to_vec())
}

/// Policy `k` of the xDS mesh (of `s` services), encoded.
fn xds_policy(k: usize, s: usize) -> (String, Vec<u8>) {
    use mesh_xds::pb::security as sec;
    use prost::Message as _;
    let ns = (k % s.max(1)) % 100;
    let m = sec::Match {
        principals: vec![sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Exact(format!(
                "cluster.local/ns/ns-{ns}/sa/sa-{}",
                k % 13
            ))),
        }],
        source_ips: vec![sec::Address {
            address: vec![10, 0, 0, 0],
            length: 8,
        }],
        ..Default::default()
    };
    let ports = sec::Match {
        destination_ports: vec![8080],
        ..Default::default()
    };
    let a = sec::Authorization {
        name: format!("p{k}"),
        namespace: format!("ns-{ns}"),
        scope: if k.is_multiple_of(10) {
            sec::Scope::Namespace
        } else {
            sec::Scope::WorkloadSelector
        } as i32,
        action: if k.is_multiple_of(10) {
            sec::Action::Deny
        } else {
            sec::Action::Allow
        } as i32,
        rules: vec![sec::Rule {
            clauses: vec![
                sec::Clause { matches: vec![m] },
                sec::Clause {
                    matches: vec![ports],
                },
            ],
        }],
        ..Default::default()
    };
    (format!("ns-{ns}/p{k}"), a.encode_to_vec())
}

fn decode<M: prost::Message + Default>(
    items: &[(String, Vec<u8>)],
) -> anyhow::Result<Vec<(String, M)>> {
    items
        .iter()
        .map(|(n, b)| Ok((n.clone(), M::decode(b.as_slice())?)))
        .collect()
}

/// The xDS-apply benchmark: a full workload-API snapshot, then single-workload deltas, each
/// decoded, validated, rebuilt into the state and swapped into a running proxy.
pub(crate) fn xds_apply(w: usize, s: usize, p: usize, runs: usize) -> anyhow::Result<XdsResult> {
    use mesh_dataplane::config::xds::{XdsSettings, XdsStore};
    let dir = tempfile::tempdir()?;
    let (ca, _) = mesh_identity::LocalCa::load_or_create(dir.path().join("ca"))?;
    let bundle = ca.trust_bundle()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut store = XdsStore::new(XdsSettings {
        node: "bench".into(),
        node_address: "127.70.0.1".parse()?,
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse()?,
        service_listeners: false,
    });
    let cfg = ProxyConfig {
        role: mesh_dataplane::roles::ztunnel("bench"),
        ..ProxyConfig::default()
    };
    let proxy = rt.block_on(Proxy::start(cfg, store.build(), Arc::new(ca), bundle))?;
    let (addresses, policies) = xds_resources(w, s, p, "v1");
    let snapshot_mb = addresses
        .iter()
        .chain(&policies)
        .map(|(_, b)| b.len())
        .sum::<usize>() as f64
        / 1e6;
    let t = Instant::now();
    let rejected = store.apply_addresses(decode(&addresses)?, Vec::new());
    anyhow::ensure!(rejected.is_empty(), "rejected: {:?}", &rejected[..1]);
    let rejected = store.apply_authorizations(decode(&policies)?, Vec::new());
    anyhow::ensure!(rejected.is_empty(), "rejected: {:?}", &rejected[..1]);
    rt.block_on(proxy.apply(store.build()))?;
    let snapshot = t.elapsed();
    anyhow::ensure!(
        proxy.state().workloads.len() == w,
        "applied state has {} workloads",
        proxy.state().workloads.len()
    );
    let mut deltas = Vec::with_capacity(runs);
    for r in 0..runs {
        // A remote workload's revision changes (a rollout): one resource in the update.
        let (changed, _) = xds_resources(w, s, 0, &format!("v{}", r + 2));
        let one = vec![changed[20 + r % (w - 20).max(1)].clone()];
        let t = Instant::now();
        let rejected = store.apply_addresses(decode(&one)?, Vec::new());
        anyhow::ensure!(rejected.is_empty(), "rejected: {rejected:?}");
        rt.block_on(proxy.apply(store.build()))?;
        deltas.push(t.elapsed().as_secs_f64() * 1e3);
    }
    deltas.sort_by(f64::total_cmp);
    let result = XdsResult {
        workloads: w,
        services: s,
        policies: p,
        snapshot_mb,
        snapshot_ms: snapshot.as_secs_f64() * 1e3,
        delta_p50_ms: deltas.get(deltas.len() / 2).copied().unwrap_or(0.0),
        delta_max_ms: deltas.last().copied().unwrap_or(0.0),
        delta_runs: deltas.len(),
    };
    rt.block_on(proxy.shutdown());
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(result)
}
