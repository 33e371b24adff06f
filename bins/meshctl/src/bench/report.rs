//! The figures of `meshctl bench` (also written as JSON) and the table it prints.

use std::io::Write;

use serde::Serialize;

use super::callgrind::Instructions;
use super::control;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub(super) struct Percentiles {
    pub(super) p50: f64,
    pub(super) p90: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
}

impl Percentiles {
    pub(super) fn of(samples: &mut [f64]) -> Percentiles {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i] / 1000.0
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
        }
    }

    pub(super) fn minus(&self, o: &Percentiles) -> Percentiles {
        Percentiles {
            p50: self.p50 - o.p50,
            p90: self.p90 - o.p90,
            p99: self.p99 - o.p99,
            p999: self.p999 - o.p999,
        }
    }
}

/// The figures of one topology.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub(super) struct TopoResult {
    pub(super) topology: String,
    pub(super) requests_ok: u64,
    pub(super) requests_failed: u64,
    pub(super) latency_ms: Percentiles,
    pub(super) added_latency_ms: Option<Percentiles>,
    pub(super) throughput_1_stream_gbps: f64,
    pub(super) throughput_8_streams_gbps: f64,
    /// Proxy CPU seconds per 1000 requests, all proxies of the path together.
    pub(super) cpu_s_per_1000_requests: Option<f64>,
    /// vCPU used by the proxies at the latency phase's rate.
    pub(super) vcpu_at_rate: Option<f64>,
    pub(super) rss_steady_mb: Option<f64>,
    /// Private (anonymous) part of the steady RSS; the rest is the binary's shared file pages.
    pub(super) anon_steady_mb: Option<f64>,
    pub(super) rss_peak_mb: Option<f64>,
    pub(super) idle_tunnel_kib: Option<f64>,
    pub(super) churn_connections_per_s: f64,
    pub(super) churn_failed: u64,
    /// Why the first failed churn connection failed.
    pub(super) churn_first_failure: Option<String>,
    pub(super) churn_cpu_s_per_1000_connections: Option<f64>,
    /// Each proxy's share of the latency phase: CPU seconds per 1000 requests and steady RSS.
    pub(super) per_proxy: Vec<ProxyShare>,
    /// Proxy CPU seconds per GB carried in the single-stream throughput phase.
    pub(super) cpu_s_per_gb: Option<f64>,
    /// RSS of the proxies right after the 8-stream throughput phase.
    pub(super) rss_after_throughput_mb: Option<f64>,
    /// The first connection after the proxies started: connect to whole response (ms), the
    /// proxies' first tunnel (TLS and HTTP/2 handshakes, certificates) included.
    pub(super) first_byte_cold_ms: Option<f64>,
    /// New connections one after another (the idle phase's): connect to whole response (ms).
    pub(super) first_byte_new_conn_ms: Option<Percentiles>,
}

/// One proxy's cost in the latency phase.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub(super) struct ProxyShare {
    pub(super) name: String,
    pub(super) cpu_s_per_1000_requests: f64,
    pub(super) rss_mb: f64,
}

/// Figures of the in-process micro-benchmarks.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ControlReport {
    pub(super) authz: Option<Vec<control::AuthzResult>>,
    pub(super) config_apply: Option<control::ConfigResult>,
    pub(super) xds_apply: Option<super::xds::XdsResult>,
}

/// The figures of a run of the topologies.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Report {
    pub(super) date_unix: u64,
    pub(super) cpus: usize,
    pub(super) cpu_model: String,
    pub(super) rate: u64,
    pub(super) connections: usize,
    pub(super) payload: usize,
    pub(super) duration_s: f64,
    pub(super) workers: usize,
    /// Runs of every topology; each figure is the median over them.
    pub(super) rounds: u32,
    pub(super) results: Vec<TopoResult>,
    /// Our ztunnel pair against Istio's, when both were measured.
    pub(super) ratios: Vec<Ratio>,
    pub(super) instructions_per_request: Option<f64>,
    /// Callgrind per topology (ztunnel-pair, waypoint when selected): instructions per request
    /// of each proxy of the path.
    pub(super) instructions: Vec<Instructions>,
}

/// One figure of our pair against Istio's, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Ratio {
    pub(super) figure: &'static str,
    pub(super) ours: f64,
    pub(super) istio: f64,
    /// ours / istio.
    pub(super) ratio: f64,
    /// The target, e.g. `≥ 1.2×`; empty when the figure has none.
    pub(super) target: &'static str,
    /// Whether the target is met (`None`: no target).
    pub(super) met: Option<bool>,
}

/// Appends the ratio table (markdown) to `out`.
fn print_ratios(ratios: &[Ratio], out: &mut String) {
    if ratios.is_empty() {
        return;
    }
    out.push_str(
        "\nztunnel-pair-capture (ours) against istio-ztunnel-pair (Istio's), same run:\n\n",
    );
    out.push_str("| figure | ours | Istio's | ratio | target | |\n|---|---|---|---|---|---|\n");
    for r in ratios {
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.2}× | {} | {} |\n",
            r.figure, r.ours, r.istio, r.ratio, r.target, met
        ));
    }
}

/// The CPU's model name, from /proc/cpuinfo.
pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Prints the report as a markdown table, then the instruction counts.
pub(super) fn print_table(r: &Report) {
    let cols: Vec<&TopoResult> = r.results.iter().collect();
    let mut out = String::new();
    out.push_str(&format!(
        "\n{} rps, {} connections, {} B payload, {:.0} s, proxies with {} workers; {} × {}\n\n",
        r.rate, r.connections, r.payload, r.duration_s, r.workers, r.cpus, r.cpu_model
    ));
    out.push_str("| metric |");
    for c in &cols {
        out.push_str(&format!(" {} |", c.topology));
    }
    out.push_str("\n|---|");
    for _ in &cols {
        out.push_str("---|");
    }
    out.push('\n');
    for (name, f) in rows() {
        out.push_str(&format!("| {name} |"));
        for c in &cols {
            out.push_str(&format!(" {} |", f(c)));
        }
        out.push('\n');
    }
    for c in &cols {
        for p in &c.per_proxy {
            out.push_str(&format!(
                "\n{}: {} CPU s / 1000 req {:.4}, RSS {:.1} MB",
                c.topology, p.name, p.cpu_s_per_1000_requests, p.rss_mb
            ));
        }
    }
    out.push('\n');
    print_ratios(&r.ratios, &mut out);
    for i in &r.instructions {
        let per: Vec<String> = i
            .per_proxy
            .iter()
            .map(|(n, v)| format!("{n} {v:.0}"))
            .collect();
        out.push_str(&format!(
            "\ninstructions per request ({}, callgrind): {:.0} ({})\n",
            i.topology,
            i.total,
            per.join(", ")
        ));
    }
    let total_of = |name: &str| {
        r.instructions
            .iter()
            .find(|i| i.topology == name)
            .map(|i| i.total)
    };
    if let (Some(ours), Some(istio)) = (
        total_of("ztunnel-pair-capture"),
        total_of("istio-ztunnel-pair"),
    ) {
        out.push_str(&format!(
            "instructions per request, ours / Istio's ztunnel pair: {:.2}×\n",
            ours / istio
        ));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
}

/// A table row: its name and how to format a topology's cell.
type Row = (&'static str, Box<dyn Fn(&TopoResult) -> String>);

/// An optional figure with `prec` decimals, `-` when absent.
fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.prec$}"))
}

/// The rows of the table, in order.
fn rows() -> Vec<Row> {
    vec![
        (
            "requests ok / failed",
            Box::new(|c| format!("{} / {}", c.requests_ok, c.requests_failed)),
        ),
        (
            "latency p50 / p90 / p99 / p99.9 (ms)",
            Box::new(|c| {
                let l = c.latency_ms;
                format!("{:.3} / {:.3} / {:.3} / {:.3}", l.p50, l.p90, l.p99, l.p999)
            }),
        ),
        (
            "added p50 / p90 / p99 / p99.9 (ms)",
            Box::new(|c| match c.added_latency_ms {
                Some(l) => format!("{:.3} / {:.3} / {:.3} / {:.3}", l.p50, l.p90, l.p99, l.p999),
                None => "-".into(),
            }),
        ),
        (
            "throughput 1 stream (Gb/s)",
            Box::new(|c| format!("{:.2}", c.throughput_1_stream_gbps)),
        ),
        (
            "throughput 8 streams (Gb/s)",
            Box::new(|c| format!("{:.2}", c.throughput_8_streams_gbps)),
        ),
        (
            "proxy CPU s / 1000 req",
            Box::new(move |c| opt(c.cpu_s_per_1000_requests, 4)),
        ),
        (
            "proxy vCPU at rate",
            Box::new(move |c| opt(c.vcpu_at_rate, 3)),
        ),
        (
            "proxy RSS steady / peak (MB)",
            Box::new(move |c| format!("{} / {}", opt(c.rss_steady_mb, 1), opt(c.rss_peak_mb, 1))),
        ),
        (
            "proxy private (anon) RSS steady (MB)",
            Box::new(move |c| opt(c.anon_steady_mb, 1)),
        ),
        (
            "memory per idle tunnel (KiB)",
            Box::new(move |c| opt(c.idle_tunnel_kib, 2)),
        ),
        (
            "churn (conn/s, failed)",
            Box::new(|c| format!("{:.0} ({})", c.churn_connections_per_s, c.churn_failed)),
        ),
        (
            "churn proxy CPU s / 1000 conn",
            Box::new(move |c| opt(c.churn_cpu_s_per_1000_connections, 3)),
        ),
        (
            "proxy CPU s / GB (1 stream)",
            Box::new(move |c| opt(c.cpu_s_per_gb, 3)),
        ),
        (
            "proxy RSS after throughput (MB)",
            Box::new(move |c| opt(c.rss_after_throughput_mb, 1)),
        ),
        (
            "first byte: cold / new conn p50 / p99 (ms)",
            Box::new(move |c| {
                let (p50, p99) = c.first_byte_new_conn_ms.map(|p| (p.p50, p.p99)).unzip();
                format!(
                    "{} / {} / {}",
                    opt(c.first_byte_cold_ms, 3),
                    opt(p50, 3),
                    opt(p99, 3)
                )
            }),
        ),
    ]
}
