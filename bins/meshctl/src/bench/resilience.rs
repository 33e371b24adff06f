//! `--bad-endpoint`: one of three endpoints
//! misbehaves (slow, or failing) and the waypoint path's success rate and latency are measured
//! with routing only and with each resilience mechanism.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use super::args::BenchArgs;
use super::load;
use super::report::Percentiles;
use super::scenarios::{NO_RETRIES, OUTLIER, RETRIES};
use super::servers::{Behaviour, HTTP_PORT, start_servers_as};
use super::topology::{self, CLIENT, ProxyOpts, ip};
use crate::out::say;

/// The servers of `--bad-endpoint`: three endpoints of the bench service, the last one bad.
const ENDPOINTS: [u8; 3] = [20, 21, 22];

/// How late the slow endpoint answers.
const SLOW: Duration = Duration::from_millis(50);

/// A configuration of the bench service: its name and the YAML added to the mesh.
struct Scenario {
    name: &'static str,
    yaml: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "routing only",
        yaml: NO_RETRIES,
    },
    Scenario {
        name: "retries",
        yaml: RETRIES,
    },
];

/// Composite scenarios: (name, parts).
const COMPOSED: &[(&str, &[&str])] = &[
    ("outlier detection", &[NO_RETRIES, OUTLIER]),
    ("retries + outlier detection", &[RETRIES, OUTLIER]),
];

/// One row of the `--bad-endpoint` table.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct BadRow {
    bad: Behaviour,
    scenario: String,
    ok: u64,
    failed: u64,
    success_rate: f64,
    latency_ms: Percentiles,
}

/// The mesh of the bench with three server endpoints on node b.
fn three_endpoints() -> String {
    let mut c = topology::waypoint_config().replace(
        "workloads: [bench/server]",
        "workloads: [bench/server, bench/server-1, bench/server-2]",
    );
    for (i, last) in [(1, ENDPOINTS[1]), (2, ENDPOINTS[2])] {
        c.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: server-{i}, namespace: bench}}\nspec: {{address: {}, serviceAccount: server, labels: {{app: server}}}}\n",
            ip(1, last)
        ));
    }
    c
}

/// `meshctl bench --bad-endpoint`.
pub(super) fn bad_endpoint(
    dir: &std::path::Path,
    opts: &ProxyOpts,
    args: &BenchArgs,
) -> anyhow::Result<Vec<BadRow>> {
    let mut rows = Vec::new();
    for bad in [Behaviour::Slow(SLOW), Behaviour::Failing] {
        // Fresh servers per kind of misbehaviour; dropping the runtime closes them.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        for (i, last) in ENDPOINTS.into_iter().enumerate() {
            let how = if i == ENDPOINTS.len() - 1 {
                bad
            } else {
                Behaviour::Normal
            };
            rt.block_on(start_servers_as(ip(1, last), how))?;
        }
        let scenarios = SCENARIOS
            .iter()
            .map(|s| (s.name, s.yaml.to_owned()))
            .chain(COMPOSED.iter().map(|(n, parts)| (*n, parts.concat())));
        for (name, yaml) in scenarios {
            say!("== bad endpoint ({bad:?}): {name}");
            let config = three_endpoints() + &yaml;
            let mut path = topology::mesh_path(dir, &config, true, opts)?;
            let http = SocketAddr::new(path.http.ip(), HTTP_PORT);
            let warm = Duration::from_secs(1);
            let _ = load::latency(CLIENT, http, args.rate, args.connections, warm, 0);
            let mut run = load::latency(
                CLIENT,
                http,
                args.rate,
                args.connections,
                args.duration,
                args.payload,
            );
            for p in &mut path.procs {
                p.stop();
            }
            let total = (run.ok + run.errors).max(1);
            rows.push(BadRow {
                bad,
                scenario: name.to_owned(),
                ok: run.ok,
                failed: run.errors,
                success_rate: run.ok as f64 / total as f64,
                latency_ms: Percentiles::of(&mut run.samples_us),
            });
        }
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    print_rows(&rows, args);
    Ok(rows)
}

fn print_rows(rows: &[BadRow], args: &BenchArgs) {
    let mut out = format!(
        "\none of three endpoints bad; {} rps, {} connections, {} B, {:?} per scenario\n\n",
        args.rate, args.connections, args.payload, args.duration
    );
    out.push_str("| bad endpoint | scenario | success | p50 ms | p99 ms | p99.9 ms |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for r in rows {
        let bad = match r.bad {
            Behaviour::Slow(d) => format!("slow (+{} ms)", d.as_millis()),
            Behaviour::Failing => "failing (503)".to_owned(),
            Behaviour::Normal => "none".to_owned(),
        };
        out.push_str(&format!(
            "| {bad} | {} | {:.2} % ({} / {}) | {:.2} | {:.2} | {:.2} |\n",
            r.scenario,
            r.success_rate * 100.0,
            r.ok,
            r.ok + r.failed,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.latency_ms.p999,
        ));
    }
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}
