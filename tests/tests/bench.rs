//! `meshctl bench --quick` runs every topology and reports complete, sane figures. Performance
//! targets are not asserted here (machines are noisy); they live in BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_tests::*;

#[test]
fn bench_quick_reports_every_topology() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let (ok, out, err) = meshctl(
        &[
            "bench",
            "--quick",
            "--duration",
            "1s",
            "--rate",
            "200",
            "--idle-tunnels",
            "20",
            "--json",
            json.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(ok, "bench failed:\n{out}\n{err}");
    assert!(
        out.contains("| metric | direct | relay-pair | ztunnel-pair | waypoint |"),
        "{out}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["topology"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["direct", "relay-pair", "ztunnel-pair", "waypoint"]);
    for r in results {
        let name = r["topology"].as_str().unwrap();
        assert_eq!(
            r["requests_failed"], 0,
            "{name}: every request answered 200"
        );
        assert!(r["requests_ok"].as_u64().unwrap() >= 150, "{name}: {r}");
        for p in ["p50", "p90", "p99", "p999"] {
            assert!(r["latency_ms"][p].as_f64().unwrap() > 0.0, "{name} {p}");
        }
        assert!(
            r["throughput_1_stream_gbps"].as_f64().unwrap() > 0.0,
            "{name}"
        );
        assert!(
            r["throughput_8_streams_gbps"].as_f64().unwrap() > 0.0,
            "{name}"
        );
        assert!(
            r["churn_connections_per_s"].as_f64().unwrap() > 0.0,
            "{name}"
        );
        assert_eq!(
            r["churn_failed"], 0,
            "{name}: first failure {}",
            r["churn_first_failure"]
        );
    }
    let pair = &results[2];
    assert!(pair["added_latency_ms"]["p50"].is_f64());
    assert!(pair["cpu_s_per_1000_requests"].as_f64().unwrap() >= 0.0);
    assert!(pair["rss_steady_mb"].as_f64().unwrap() > 1.0);
    assert!(pair["idle_tunnel_kib"].as_f64().is_some());
}

#[test]
fn bench_authz_and_config_apply_report_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("control.json");
    let (ok, out, err) = meshctl(
        &[
            "bench",
            "--authz",
            "--authz-decisions",
            "2000",
            "--config-apply",
            "--xds-apply",
            "--xds-deltas",
            "3",
            "--config-size",
            "2000,200,200",
            "--json",
            json.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(ok, "bench failed:\n{out}\n{err}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let authz = r["authz"].as_array().unwrap();
    let cases: Vec<(String, u64, u64)> = authz
        .iter()
        .map(|a| {
            (
                a["layout"].as_str().unwrap().to_owned(),
                a["policies"].as_u64().unwrap(),
                a["applicable"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cases,
        [
            ("spread".into(), 1, 1),
            ("spread".into(), 100, 6),
            ("spread".into(), 1000, 51),
            ("worst".into(), 1, 1),
            ("worst".into(), 100, 100),
            ("worst".into(), 1000, 1000),
        ],
        "the index picks exactly the policies that apply"
    );
    for a in authz {
        assert_eq!(a["decisions"], 2000);
        assert!(a["p99_ns"].as_f64().unwrap() >= a["p50_ns"].as_f64().unwrap());
        // The worst layout's last policy admits ns-0 principals: some allowed, some not.
        let share = a["allowed_share"].as_f64().unwrap();
        assert!(share > 0.0 && share < 1.0, "{a}");
    }
    let c = &r["config_apply"];
    assert_eq!(c["workloads"], 2000);
    assert_eq!(c["services"], 200);
    assert_eq!(c["policies"], 200);
    assert!(c["parse_ms"].as_f64().unwrap() > 0.0);
    assert!(c["apply_ms"].as_f64().unwrap() > 0.0);
    assert!(c["rss_mb"].as_f64().unwrap() > 0.0);
    // The same mesh over the workload API: applied whole (the bench checks every workload
    // arrived), then three single-workload deltas.
    let x = &r["xds_apply"];
    assert_eq!(x["workloads"], 2000);
    assert_eq!(x["delta_runs"], 3);
    assert!(x["snapshot_mb"].as_f64().unwrap() > 0.1);
    assert!(x["snapshot_ms"].as_f64().unwrap() > 0.0);
    assert!(x["delta_max_ms"].as_f64().unwrap() >= x["delta_p50_ms"].as_f64().unwrap());
}
