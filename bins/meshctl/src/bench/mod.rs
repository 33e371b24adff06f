//! `meshctl bench`: latency, throughput, CPU and memory of every proxy path against the direct
//! baseline, on loopback, with the real proxy processes; plus an instruction-count mode.
//!
//! Method (after Istio's published one): HTTP/1.1 echo of a 1 KB payload at a fixed rate over
//! 4 keep-alive connections, open-loop; added latency is a path's percentile minus the direct
//! path's, measured in the same run. Throughput: one and eight TCP streams pushing data. Cost:
//! proxy CPU seconds (user+sys, /proc) per 1000 requests and RSS. Idle tunnels: RSS growth per
//! open idle connection. Churn: one request per new connection.

mod control;
mod load;
mod pods;
mod topology;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_dataplane::process::parse_duration;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use self::topology::{HTTP_PORT, ProxyOpts, SERVER, TCP_PORT, Topology};
use crate::say;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Topologies to measure, in order (direct is the baseline for added latency).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,relay-pair,ztunnel-pair,waypoint"
    )]
    topologies: Vec<Topology>,
    /// A smoke run: short phases and few idle tunnels.
    #[arg(long)]
    quick: bool,
    /// Length of the latency phase.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Requests per second in the latency phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Client connections in the latency phase.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Request and response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Length of each throughput phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    throughput_duration: Duration,
    /// Length of the connection-churn phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    churn_duration: Duration,
    /// Idle tunnels opened for the memory-per-tunnel figure.
    #[arg(long, default_value_t = 1000)]
    idle_tunnels: usize,
    /// Worker threads of each proxy.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Log filter of the proxies (as shipped: info, with one access log line per connection).
    #[arg(long, default_value = "info")]
    proxy_log: String,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Instruction-count mode: run the ztunnel pair (and the waypoint and sidecar-pair
    /// topologies when listed; sidecar-pair needs root) under callgrind and report
    /// instructions per request (from runs of N and 2N requests, so start-up cancels out).
    /// Needs valgrind.
    #[arg(long, value_name = "N")]
    callgrind: Option<u64>,
    /// Keep the callgrind output files here (for `callgrind_annotate`), instead of a temp dir.
    #[arg(long, value_name = "DIR")]
    callgrind_dir: Option<PathBuf>,
    /// Run the authorization micro-benchmark (1, 100, 1000 policies) instead of the
    /// topologies (combine with --config-apply for both).
    #[arg(long)]
    authz: bool,
    /// Decisions timed per authz case.
    #[arg(long, default_value_t = 200_000)]
    authz_decisions: usize,
    /// Run the config-apply benchmark (load and swap a large mesh) instead of the topologies.
    #[arg(long)]
    config_apply: bool,
    /// Run the xDS-apply benchmark (a workload-API snapshot of --config-size, then
    /// single-workload deltas, into a running proxy) instead of the topologies.
    #[arg(long)]
    xds_apply: bool,
    /// Single-workload deltas timed by --xds-apply.
    #[arg(long, default_value_t = 20)]
    xds_deltas: usize,
    /// Workloads, services and policies of the config-apply mesh.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,1000,1000",
        value_name = "W,S,P"
    )]
    config_size: Vec<usize>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
}

impl Percentiles {
    fn of(samples: &mut [f64]) -> Percentiles {
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

    fn minus(&self, o: &Percentiles) -> Percentiles {
        Percentiles {
            p50: self.p50 - o.p50,
            p90: self.p90 - o.p90,
            p99: self.p99 - o.p99,
            p999: self.p999 - o.p999,
        }
    }
}

/// The figures of one topology.
#[derive(Debug, Clone, Default, Serialize)]
struct TopoResult {
    topology: String,
    requests_ok: u64,
    requests_failed: u64,
    latency_ms: Percentiles,
    added_latency_ms: Option<Percentiles>,
    throughput_1_stream_gbps: f64,
    throughput_8_streams_gbps: f64,
    /// Proxy CPU seconds per 1000 requests, all proxies of the path together.
    cpu_s_per_1000_requests: Option<f64>,
    /// vCPU used by the proxies at the latency phase's rate.
    vcpu_at_rate: Option<f64>,
    rss_steady_mb: Option<f64>,
    /// Private (anonymous) part of the steady RSS; the rest is the binary's shared file pages.
    anon_steady_mb: Option<f64>,
    rss_peak_mb: Option<f64>,
    idle_tunnel_kib: Option<f64>,
    churn_connections_per_s: f64,
    churn_failed: u64,
    /// Why the first failed churn connection failed.
    churn_first_failure: Option<String>,
    churn_cpu_s_per_1000_connections: Option<f64>,
}

/// Figures of the in-process micro-benchmarks.
#[derive(Debug, Clone, Serialize)]
struct ControlReport {
    authz: Option<Vec<control::AuthzResult>>,
    config_apply: Option<control::ConfigResult>,
    xds_apply: Option<control::XdsResult>,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    date_unix: u64,
    cpus: usize,
    cpu_model: String,
    rate: u64,
    connections: usize,
    payload: usize,
    duration_s: f64,
    workers: usize,
    results: Vec<TopoResult>,
    instructions_per_request: Option<f64>,
    /// Callgrind per topology (ztunnel-pair, waypoint when selected): instructions per request
    /// of each proxy of the path.
    instructions: Vec<Instructions>,
}

pub(crate) fn main(mut args: BenchArgs) -> ExitCode {
    if args.quick {
        args.duration = args.duration.min(Duration::from_secs(3));
        args.throughput_duration = args.throughput_duration.min(Duration::from_secs(1));
        args.churn_duration = args.churn_duration.min(Duration::from_secs(1));
        args.idle_tunnels = args.idle_tunnels.min(100);
        args.authz_decisions = args.authz_decisions.min(20_000);
    }
    if args.authz || args.config_apply || args.xds_apply {
        return match run_control(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => crate::fail(format!("{e:#}")),
        };
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(format!("{e:#}")),
    }
}

fn run_control(args: &BenchArgs) -> anyhow::Result<()> {
    let mut report = ControlReport {
        authz: None,
        config_apply: None,
        xds_apply: None,
    };
    if args.authz {
        say!("== authz: {} decisions per case", args.authz_decisions);
        let r = control::authz(args.authz_decisions)?;
        say!("");
        say!("layout  policies  applicable  p50 ns  p99 ns  mean ns  allowed");
        for x in &r {
            say!(
                "{:<6}  {:>8}  {:>10}  {:>6.0}  {:>6.0}  {:>7.0}  {:>6.0}%",
                x.layout,
                x.policies,
                x.applicable,
                x.p50_ns,
                x.p99_ns,
                x.mean_ns,
                x.allowed_share * 100.0
            );
        }
        report.authz = Some(r);
    }
    if args.config_apply {
        let (w, s, p) = match args.config_size[..] {
            [w, s, p] => (w, s.max(1), p),
            _ => bail!("--config-size takes W,S,P (e.g. 10000,1000,1000)"),
        };
        say!("== config apply: {w} workloads, {s} services, {p} policies");
        let r = control::config_apply(w, s, p)?;
        say!("");
        say!(
            "yaml {:.1} MB: parse+validate+compile {:.0} ms, apply (swap) {:.0} ms, total {:.0} ms; RSS +{:.1} MB (peak {:.1} MB)",
            r.yaml_mb,
            r.parse_ms,
            r.apply_ms,
            r.total_ms,
            r.rss_mb,
            r.rss_peak_mb
        );
        report.config_apply = Some(r);
    }
    if args.xds_apply {
        let (w, s, p) = match args.config_size[..] {
            [w, s, p] => (w.max(21), s.max(1), p),
            _ => bail!("--config-size takes W,S,P (e.g. 10000,1000,1000)"),
        };
        say!("== xDS apply: {w} workloads, {s} services, {p} policies");
        let r = control::xds_apply(w, s, p, args.xds_deltas.max(1))?;
        say!("");
        say!(
            "snapshot {:.1} MB: decode+validate+build+swap {:.0} ms; one changed workload: p50 {:.1} ms, max {:.1} ms ({} runs)",
            r.snapshot_mb,
            r.snapshot_ms,
            r.delta_p50_ms,
            r.delta_max_ms,
            r.delta_runs
        );
        report.xds_apply = Some(r);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
        say!("figures written to {}", path.display());
    }
    Ok(())
}

fn cpu_model() -> String {
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

fn run(args: &BenchArgs) -> anyhow::Result<()> {
    mesh_dataplane::process::raise_fd_limit();
    let dir = tempfile::tempdir()?;
    // The server workload: an HTTP echo and a TCP sink, on their own runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The capture topologies run their own servers in their pods.
    let loopback = args.callgrind.is_some()
        || args.topologies.iter().any(|t| {
            !matches!(
                t,
                Topology::DirectPods | Topology::SidecarPair | Topology::ZtunnelPairCapture
            )
        });
    if loopback {
        rt.block_on(start_servers(SERVER))?;
    }
    let opts = ProxyOpts {
        workers: args.workers,
        log: args.proxy_log.clone(),
        wrapper: Vec::new(),
    };
    let mut results = Vec::new();
    for topo in &args.topologies {
        say!("== {}: setting up", topo.name());
        let r = measure(*topo, dir.path(), &opts, args)
            .with_context(|| format!("topology {}", topo.name()))?;
        results.push(r);
    }
    // Added latency: against `direct` on loopback, or `direct-pods` (the veth between the
    // pods) for the capture topologies.
    let base_of = |name: &str| {
        results
            .iter()
            .find(|r| r.topology == name)
            .map(|r| r.latency_ms)
    };
    let (direct, pods) = (base_of("direct"), base_of("direct-pods"));
    for r in results
        .iter_mut()
        .filter(|r| !r.topology.starts_with("direct"))
    {
        let capture = matches!(r.topology.as_str(), "sidecar-pair" | "ztunnel-pair-capture");
        if let Some(base) = if capture { pods } else { direct } {
            r.added_latency_ms = Some(r.latency_ms.minus(&base));
        }
    }
    let mut instructions = Vec::new();
    if let Some(n) = args.callgrind {
        for topo in [
            Topology::ZtunnelPair,
            Topology::Waypoint,
            Topology::SidecarPair,
        ] {
            if topo == Topology::ZtunnelPair || args.topologies.contains(&topo) {
                instructions.push(callgrind(dir.path(), args, n, topo)?);
            }
        }
    }
    let instructions_per_request = instructions.first().map(|i| i.total);
    let report = Report {
        date_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(),
        rate: args.rate,
        connections: args.connections,
        payload: args.payload,
        duration_s: args.duration.as_secs_f64(),
        workers: args.workers,
        results,
        instructions_per_request,
        instructions,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
        say!("figures written to {}", path.display());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn measure(
    topo: Topology,
    dir: &std::path::Path,
    opts: &ProxyOpts,
    args: &BenchArgs,
) -> anyhow::Result<TopoResult> {
    let mut path = topology::setup(topo, dir, opts)?;
    let client = path.client;
    // The capture topologies' load runs inside pod A (threads inherit the namespace).
    let netns = path.client_netns.clone();
    let r = pods::run_in(netns.as_deref(), || -> anyhow::Result<TopoResult> {
        let path = &path;
        let proxied = !path.procs.is_empty();
        let mut r = TopoResult {
            topology: topo.name().into(),
            ..Default::default()
        };
        // Warm-up: connections, pools, caches.
        let _ = load::latency(
            client,
            path.http,
            args.rate,
            args.connections,
            Duration::from_secs(1),
            args.payload,
        );

        say!("   latency: {} rps × {:?}", args.rate, args.duration);
        let before = topology::total_stat(&path.procs);
        let mut lat = load::latency(
            client,
            path.http,
            args.rate,
            args.connections,
            args.duration,
            args.payload,
        );
        let after = topology::total_stat(&path.procs);
        r.requests_ok = lat.ok;
        r.requests_failed = lat.errors;
        r.latency_ms = Percentiles::of(&mut lat.samples_us);
        if proxied && lat.ok > 0 {
            let cpu = after.cpu_s - before.cpu_s;
            r.cpu_s_per_1000_requests = Some(cpu / (lat.ok as f64 / 1000.0));
            r.vcpu_at_rate = Some(cpu / args.duration.as_secs_f64());
            r.rss_steady_mb = Some(mb(after.rss));
            r.anon_steady_mb = Some(mb(after.anon));
        }

        say!(
            "   throughput: 1 and 8 streams × {:?}",
            args.throughput_duration
        );
        r.throughput_1_stream_gbps =
            load::throughput(client, path.tcp, 1, args.throughput_duration)?;
        r.throughput_8_streams_gbps =
            load::throughput(client, path.tcp, 8, args.throughput_duration)?;

        say!(
            "   churn: new connection per request × {:?}",
            args.churn_duration
        );
        let before = topology::total_stat(&path.procs);
        let (ok, failed, first_failure) = load::churn(client, path.http, 4, args.churn_duration);
        if let Some(f) = &first_failure {
            say!("   churn: {failed} failed; first: {f}");
        }
        r.churn_first_failure = first_failure;
        let after = topology::total_stat(&path.procs);
        r.churn_connections_per_s = ok as f64 / args.churn_duration.as_secs_f64();
        r.churn_failed = failed;
        if proxied && ok > 0 {
            r.churn_cpu_s_per_1000_connections =
                Some((after.cpu_s - before.cpu_s) / (ok as f64 / 1000.0));
        }

        if proxied {
            say!("   idle tunnels: {}", args.idle_tunnels);
            // Let churned connections finish closing so they do not count.
            std::thread::sleep(Duration::from_millis(500));
            let before = topology::total_stat(&path.procs);
            let conns = load::open_idle(client, path.http, args.idle_tunnels)?;
            std::thread::sleep(Duration::from_millis(500));
            let after = topology::total_stat(&path.procs);
            // Private memory: the binary's file pages do not grow with tunnels.
            r.idle_tunnel_kib = Some(
                after.anon.saturating_sub(before.anon) as f64 / 1024.0 / args.idle_tunnels as f64,
            );
            drop(conns);
            r.rss_peak_mb = Some(mb(topology::total_stat(&path.procs).hwm));
        }
        Ok(r)
    })??;
    for p in &mut path.procs {
        p.stop();
    }
    Ok(r)
}

/// Instructions per request through a path, per proxy.
#[derive(Debug, Clone, serde::Serialize)]
struct Instructions {
    topology: &'static str,
    /// All proxies of the path.
    total: f64,
    /// (proxy, instructions per request).
    per_proxy: Vec<(String, f64)>,
}

/// Instructions per request through `topo`: callgrind totals of its proxies for 2N requests
/// minus those for N, over N.
fn callgrind(
    dir: &std::path::Path,
    args: &BenchArgs,
    n: u64,
    topo: Topology,
) -> anyhow::Result<Instructions> {
    let mut totals: Vec<Vec<(String, u64)>> = Vec::new();
    for (i, count) in [n, 2 * n].into_iter().enumerate() {
        let out = args
            .callgrind_dir
            .clone()
            .unwrap_or_else(|| dir.to_owned())
            .join(format!("{}-{i}", topo.name()));
        std::fs::create_dir_all(&out)?;
        let opts = ProxyOpts {
            workers: args.workers,
            log: args.proxy_log.clone(),
            wrapper: vec![
                "valgrind".into(),
                "--tool=callgrind".into(),
                format!(
                    "--callgrind-out-file={}/callgrind.{{node}}.out",
                    out.display()
                ),
            ],
        };
        say!("== callgrind: {count} requests through {}", topo.name());
        let mut path = topology::setup(topo, dir, &opts)?;
        // The capture topologies' client runs inside pod A.
        let (client, http) = (path.client, path.http);
        pods::run_in(path.client_netns.as_deref(), || {
            load::sequential(client, http, count, args.payload)
        })??;
        for p in &mut path.procs {
            p.stop();
        }
        let mut per = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&out)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "out"))
            .collect();
        files.sort();
        for f in files {
            let node = f
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix("callgrind."))
                .unwrap_or("?")
                .to_owned();
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?;
            let v = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .with_context(|| format!("no totals in {}", f.display()))?;
            per.push((node, v));
        }
        totals.push(per);
    }
    let mut per_proxy = Vec::new();
    for ((node, small), (_, big)) in totals[0].iter().zip(&totals[1]) {
        if big <= small {
            bail!("callgrind totals did not grow with the request count: {totals:?}");
        }
        per_proxy.push((node.clone(), (big - small) as f64 / n as f64));
    }
    Ok(Instructions {
        topology: topo.name(),
        total: per_proxy.iter().map(|(_, v)| v).sum(),
        per_proxy,
    })
}

fn print_table(r: &Report) {
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
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
    type Row<'a> = (&'a str, Box<dyn Fn(&TopoResult) -> String>);
    let rows: Vec<Row> = vec![
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
    ];
    for (name, f) in rows {
        out.push_str(&format!("| {name} |"));
        for c in &cols {
            out.push_str(&format!(" {} |", f(c)));
        }
        out.push('\n');
    }
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
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
}

/// The server workload on `ip`: an HTTP echo and a TCP sink.
pub(crate) async fn start_servers(ip: std::net::IpAddr) -> anyhow::Result<()> {
    let http = TcpListener::bind(SocketAddr::new(ip, HTTP_PORT))
        .await
        .with_context(|| format!("bind {ip}:{HTTP_PORT}"))?;
    let tcp = TcpListener::bind(SocketAddr::new(ip, TCP_PORT))
        .await
        .with_context(|| format!("bind {ip}:{TCP_PORT}"))?;
    tokio::spawn(async move {
        while let Ok((s, _)) = http.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = if req.method() == hyper::Method::POST {
                        req.into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default()
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(total.to_string().as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(())
}

/// `meshctl bench-relay`: a plain TCP forwarder for the relay-pair floor topology.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RelayArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    to: SocketAddr,
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

pub(crate) fn relay_main(args: RelayArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::fail(e),
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        let l = TcpListener::bind(args.listen).await?;
        say!("ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (mut down, _) = tokio::select! {
                _ = term.recv() => return Ok(()),
                r = l.accept() => r?,
            };
            let to = args.to;
            tokio::spawn(async move {
                let _ = down.set_nodelay(true);
                if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                    let _ = up.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(e),
    }
}
