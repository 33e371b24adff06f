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
        out.contains("| metric | direct | relay-pair | ztunnel-pair |"),
        "{out}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["topology"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["direct", "relay-pair", "ztunnel-pair"]);
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
        assert_eq!(r["churn_failed"], 0, "{name}");
    }
    let pair = &results[2];
    assert!(pair["added_latency_ms"]["p50"].is_f64());
    assert!(pair["cpu_s_per_1000_requests"].as_f64().unwrap() >= 0.0);
    assert!(pair["rss_steady_mb"].as_f64().unwrap() > 1.0);
    assert!(pair["idle_tunnel_kib"].as_f64().is_some());
}
