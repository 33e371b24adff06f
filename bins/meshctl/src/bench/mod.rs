//! `meshctl bench`: latency, throughput, CPU and memory of every proxy path against the direct
//! baseline, on loopback, with the real proxy processes; plus an instruction-count mode.
//!
//! Method (after Istio's published one): HTTP/1.1 echo of a 1 KB payload at a fixed rate over
//! 4 keep-alive connections, open-loop; added latency is a path's percentile minus the direct
//! path's, measured in the same run. Throughput: one and eight TCP streams pushing data. Cost:
//! proxy CPU seconds (user+sys, /proc) per 1000 requests and RSS. Idle tunnels: RSS growth per
//! open idle connection. Churn: one request per new connection.

mod args;
mod callgrind;
mod control;
mod istio;
mod load;
mod measure;
mod pods;
mod procs;
mod ratios;
mod report;
mod resilience;
mod scenarios;
mod servers;
mod topology;
mod xds;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

pub(crate) use self::args::BenchArgs;
use self::report::{ControlReport, Report, TopoResult};
pub(crate) use self::servers::{RelayArgs, relay_main, start_servers};
use self::topology::{ProxyOpts, SERVER, Topology};
use crate::out::say;

pub(crate) fn main(mut args: BenchArgs) -> ExitCode {
    if args.quick {
        args.duration = args.duration.min(Duration::from_secs(3));
        args.throughput_duration = args.throughput_duration.min(Duration::from_secs(1));
        args.churn_duration = args.churn_duration.min(Duration::from_secs(1));
        args.idle_tunnels = args.idle_tunnels.min(100);
        args.authz_decisions = args.authz_decisions.min(20_000);
    }
    if args.bad_endpoint {
        return match run_bad_endpoint(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => crate::out::fail(format!("{e:#}")),
        };
    }
    if args.authz || args.config_apply || args.xds_apply {
        return match run_control(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => crate::out::fail(format!("{e:#}")),
        };
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::out::fail(format!("{e:#}")),
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
        let r = xds::xds_apply(w, s, p, args.xds_deltas.max(1))?;
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

fn run_bad_endpoint(args: &BenchArgs) -> anyhow::Result<()> {
    mesh_dataplane::process::raise_fd_limit();
    let dir = tempfile::tempdir()?;
    let opts = ProxyOpts {
        workers: args.workers,
        log: args.proxy_log.clone(),
        wrapper: Vec::new(),
        istio_ztunnel: None,
    };
    let rows = resilience::bad_endpoint(dir.path(), &opts, args)?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("write {}", path.display()))?;
        say!("figures written to {}", path.display());
    }
    Ok(())
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
                Topology::DirectPods
                    | Topology::SidecarPair
                    | Topology::ZtunnelPairCapture
                    | Topology::IstioZtunnelPair
            )
        });
    if loopback {
        rt.block_on(start_servers(SERVER))?;
    }
    let opts = ProxyOpts {
        workers: args.workers,
        log: args.proxy_log.clone(),
        wrapper: Vec::new(),
        istio_ztunnel: args.istio_ztunnel.clone(),
    };
    let topologies: Vec<Topology> = args
        .topologies
        .iter()
        .copied()
        .filter(|t| {
            let skip = *t == Topology::IstioZtunnelPair && args.istio_ztunnel.is_none();
            if skip {
                say!(
                    "== istio-ztunnel-pair: skipped — give Istio's ztunnel binary with --istio-ztunnel PATH (or ISTIO_ZTUNNEL); ../shared/PEER-ZTUNNEL.md says how to build it"
                );
            }
            !skip
        })
        .collect();
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let mut results = Vec::new();
        for topo in &topologies {
            say!(
                "== {}: setting up (round {round} of {})",
                topo.name(),
                args.rounds
            );
            let r = measure::measure(*topo, dir.path(), &opts, args)
                .with_context(|| format!("topology {}", topo.name()))?;
            results.push(r);
        }
        added_latency(&mut results);
        rounds.push(results);
    }
    let results = ratios::medians(&rounds)?;
    let ratios = ratios::against_istio(&results);
    let instructions = match args.callgrind {
        Some(n) => instructions(dir.path(), args, n)?,
        None => Vec::new(),
    };
    let instructions_per_request = instructions.first().map(|i| i.total);
    let report = Report {
        date_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: report::cpu_model(),
        rate: args.rate,
        connections: args.connections,
        payload: args.payload,
        duration_s: args.duration.as_secs_f64(),
        workers: args.workers,
        rounds: args.rounds,
        results,
        ratios,
        instructions_per_request,
        instructions,
    };
    report::print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
        say!("figures written to {}", path.display());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Added latency: against `direct` on loopback, or `direct-pods` (the veth between the pods)
/// for the capture topologies.
fn added_latency(results: &mut [TopoResult]) {
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
        let capture = matches!(
            r.topology.as_str(),
            "sidecar-pair" | "ztunnel-pair-capture" | "istio-ztunnel-pair"
        );
        if let Some(base) = if capture { pods } else { direct } {
            r.added_latency_ms = Some(r.latency_ms.minus(&base));
        }
    }
}

/// Instruction counts with `n` requests: the ztunnel pair, then the waypoint and sidecar-pair
/// topologies when listed; with Istio's ztunnel given and `istio-ztunnel-pair` listed, our
/// in-pod pair and Istio's in the same pods (the instruction ratio is then printed).
fn instructions(
    dir: &std::path::Path,
    args: &BenchArgs,
    n: u64,
) -> anyhow::Result<Vec<callgrind::Instructions>> {
    let against_istio =
        args.istio_ztunnel.is_some() && args.topologies.contains(&Topology::IstioZtunnelPair);
    let mut instructions = Vec::new();
    for topo in [
        Topology::ZtunnelPair,
        Topology::Waypoint,
        Topology::WaypointFull,
        Topology::SidecarPair,
        Topology::ZtunnelPairCapture,
        Topology::IstioZtunnelPair,
    ] {
        let capture_pair = matches!(
            topo,
            Topology::ZtunnelPairCapture | Topology::IstioZtunnelPair
        );
        let listed = match topo {
            Topology::ZtunnelPair => true,
            _ if capture_pair => against_istio,
            _ => args.topologies.contains(&topo),
        };
        if listed {
            instructions.push(callgrind::callgrind(dir, args, n, topo)?);
        }
    }
    Ok(instructions)
}
