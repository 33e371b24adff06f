//! Medians over rounds, and our in-pod ztunnel pair against Istio's (`istio-ztunnel-pair`),
//! figure by figure, with the targets of the performance issue.

use serde_json::Value;

use super::report::{Ratio, TopoResult};

/// Each topology's figures, the median of every number over the rounds (the first round's
/// order and texts).
pub(super) fn medians(rounds: &[Vec<TopoResult>]) -> anyhow::Result<Vec<TopoResult>> {
    let Some(first) = rounds.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, r) in first.iter().enumerate() {
        let runs: Vec<Value> = rounds
            .iter()
            .filter_map(|round| round.get(i))
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        let mut merged = serde_json::to_value(r)?;
        median_into(&mut merged, &runs);
        out.push(serde_json::from_value(merged)?);
    }
    Ok(out)
}

/// Replaces every number of `v` by the median of the same place in `runs`.
fn median_into(v: &mut Value, runs: &[Value]) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let at: Vec<Value> = runs.iter().map(|r| r[k.as_str()].clone()).collect();
                median_into(child, &at);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                let at: Vec<Value> = runs.iter().map(|r| r[i].clone()).collect();
                median_into(child, &at);
            }
        }
        Value::Number(_) => {
            let mut xs: Vec<f64> = runs.iter().filter_map(Value::as_f64).collect();
            if xs.is_empty() {
                return;
            }
            xs.sort_by(f64::total_cmp);
            let m = if xs.len() % 2 == 1 {
                xs[xs.len() / 2]
            } else {
                (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0
            };
            if let Some(n) = serde_json::Number::from_f64(m) {
                // Counts stay integers (the median of an even number of counts is rounded).
                *v = if v.is_f64() {
                    Value::Number(n)
                } else {
                    Value::from(m.round() as u64)
                };
            }
        }
        _ => {}
    }
}

/// A figure of a topology's results.
type Figure = fn(&TopoResult) -> Option<f64>;
/// Whether a figure meets its target, given (ours, ours / Istio's).
type Meets = Option<fn(f64, f64) -> bool>;

/// The compared figures: name, how to read it, target (text, and whether ours/istio meets it).
fn figures() -> Vec<(&'static str, Figure, &'static str, Meets)> {
    vec![
        (
            "throughput, 1 stream",
            |r| Some(r.throughput_1_stream_gbps),
            "≥ 1.2×",
            Some(|_, x| x >= 1.2),
        ),
        (
            "throughput, 8 streams",
            |r| Some(r.throughput_8_streams_gbps),
            "",
            None,
        ),
        (
            "proxy CPU per 1000 requests",
            |r| r.cpu_s_per_1000_requests,
            "≤ 0.7×",
            Some(|_, x| x <= 0.7),
        ),
        (
            "proxy CPU per GB (1 stream)",
            |r| r.cpu_s_per_gb,
            "≤ 0.8×",
            Some(|_, x| x <= 0.8),
        ),
        (
            "RSS of the pair, steady",
            |r| r.rss_steady_mb,
            "≤ 0.7×",
            Some(|_, x| x <= 0.7),
        ),
        (
            "RSS of the pair, after throughput",
            |r| r.rss_after_throughput_mb,
            "≤ 0.7×",
            Some(|_, x| x <= 0.7),
        ),
        (
            "added latency p50",
            |r| r.added_latency_ms.map(|l| l.p50),
            "≤ 1.0×",
            Some(|_, x| x <= 1.0),
        ),
        (
            "added latency p90",
            |r| r.added_latency_ms.map(|l| l.p90),
            "",
            None,
        ),
        (
            "added latency p99",
            |r| r.added_latency_ms.map(|l| l.p99),
            "",
            None,
        ),
        (
            "round-trip p99",
            |r| Some(r.latency_ms.p99),
            "≤ 1.0×",
            Some(|_, x| x <= 1.0),
        ),
        (
            "new connections per second",
            |r| Some(r.churn_connections_per_s),
            "≥ 1.2×",
            Some(|_, x| x >= 1.2),
        ),
        (
            "first byte, new connection p50",
            |r| r.first_byte_new_conn_ms.map(|p| p.p50),
            "≤ 1.0×",
            Some(|_, x| x <= 1.0),
        ),
        (
            "first byte, first connection (cold)",
            |r| r.first_byte_cold_ms,
            "≤ 1.0×",
            Some(|_, x| x <= 1.0),
        ),
        (
            "memory per idle tunnel",
            |r| r.idle_tunnel_kib,
            "ours ≤ 8 KiB",
            Some(|ours, _| ours <= 8.0),
        ),
    ]
}

/// `ztunnel-pair-capture` against `istio-ztunnel-pair`, when both are in `results`.
pub(super) fn against_istio(results: &[TopoResult]) -> Vec<Ratio> {
    let find = |name: &str| results.iter().find(|r| r.topology == name);
    let (Some(ours), Some(istio)) = (find("ztunnel-pair-capture"), find("istio-ztunnel-pair"))
    else {
        return Vec::new();
    };
    figures()
        .into_iter()
        .filter_map(|(figure, read, target, meets)| {
            let (o, i) = (read(ours)?, read(istio)?);
            let ratio = if i != 0.0 { o / i } else { f64::NAN };
            let met = meets.map(|m| m(o, ratio));
            Some(Ratio {
                figure,
                ours: o,
                istio: i,
                ratio,
                target,
                met,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, gbps: f64, ok: u64) -> TopoResult {
        TopoResult {
            topology: name.into(),
            throughput_1_stream_gbps: gbps,
            requests_ok: ok,
            idle_tunnel_kib: Some(gbps),
            per_proxy: vec![super::super::report::ProxyShare {
                name: "p".into(),
                cpu_s_per_1000_requests: gbps * 2.0,
                rss_mb: 1.0,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn medians_take_the_middle_of_each_number_and_keep_names_and_counts_integral() {
        let rounds = vec![
            vec![result("a", 1.0, 10), result("b", 7.0, 1)],
            vec![result("a", 9.0, 30), result("b", 5.0, 2)],
            vec![result("a", 3.0, 20), result("b", 6.0, 4)],
            vec![result("a", 4.0, 21), result("b", 6.5, 3)],
        ];
        let m = medians(&rounds).unwrap();
        assert_eq!(m[0].topology, "a");
        assert_eq!(m[0].throughput_1_stream_gbps, 3.5);
        assert_eq!(m[0].idle_tunnel_kib, Some(3.5));
        assert_eq!(m[0].per_proxy[0].cpu_s_per_1000_requests, 7.0);
        assert_eq!(m[0].per_proxy[0].name, "p");
        assert_eq!(m[0].requests_ok, 21); // (20 + 21) / 2 rounded
        assert_eq!(m[1].throughput_1_stream_gbps, 6.25);
        assert_eq!(m[1].requests_ok, 3); // (2 + 3) / 2 = 2.5, rounded up
    }

    #[test]
    fn ratios_compare_ours_with_istio_and_judge_each_target() {
        let ours = TopoResult {
            cpu_s_per_1000_requests: Some(0.06),
            idle_tunnel_kib: Some(9.0),
            ..result("ztunnel-pair-capture", 8.0, 1)
        };
        let istio = TopoResult {
            cpu_s_per_1000_requests: Some(0.1),
            idle_tunnel_kib: Some(20.0),
            ..result("istio-ztunnel-pair", 10.0, 1)
        };
        let r = against_istio(&[ours, istio]);
        let get = |f: &str| r.iter().find(|x| x.figure == f).unwrap().clone();
        let t = get("throughput, 1 stream");
        assert_eq!((t.ratio, t.met), (0.8, Some(false)));
        let c = get("proxy CPU per 1000 requests");
        assert!((c.ratio - 0.6).abs() < 1e-9 && c.met == Some(true));
        // The idle tunnel target is absolute: 9 KiB misses 8 KiB whatever Istio's is.
        assert_eq!(get("memory per idle tunnel").met, Some(false));
        // Figures either side lacks are left out, not reported as 0.
        assert!(r.iter().all(|x| x.figure != "added latency p50"));
        assert!(against_istio(&[result("ztunnel-pair-capture", 1.0, 1)]).is_empty());
    }
}
