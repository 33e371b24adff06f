//! The measurement of one topology: latency, throughput, churn and idle-tunnel phases against
//! its proxies.

use std::io::Write;
use std::time::Duration;

use super::args::BenchArgs;
use super::report::{Percentiles, ProxyShare, TopoResult};
use super::topology::{self, ProxyOpts, RunningPath, Topology};
use super::{load, pods};
use crate::out::say;

fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Sets `topo` up, runs every phase against it and stops its proxies.
pub(super) fn measure(
    topo: Topology,
    dir: &std::path::Path,
    opts: &ProxyOpts,
    args: &BenchArgs,
) -> anyhow::Result<TopoResult> {
    let mut path = topology::setup(topo, dir, opts)?;
    // The capture topologies' load runs inside pod A (threads inherit the namespace).
    let netns = path.client_netns.clone();
    let r = pods::run_in(netns.as_deref(), || -> anyhow::Result<TopoResult> {
        let path = &path;
        let mut r = TopoResult {
            topology: topo.name().into(),
            ..Default::default()
        };
        cold_first_byte(path, &mut r);
        latency_phase(path, args, &mut r);
        // Idle tunnels before the bulk phases: an allocator that keeps freed memory (jemalloc)
        // would otherwise serve the tunnels from what throughput left behind and show no growth.
        if !path.procs.is_empty() {
            idle_phase(path, args, &mut r)?;
        }
        throughput_phase(path, args, &mut r)?;
        churn_phase(path, args, &mut r);
        if !path.procs.is_empty() {
            r.rss_peak_mb = Some(mb(topology::total_stat(&path.procs).hwm));
        }
        Ok(r)
    })??;
    for p in &mut path.procs {
        p.stop();
    }
    Ok(r)
}

/// The first connection after start-up, before any warm-up.
fn cold_first_byte(path: &RunningPath, r: &mut TopoResult) {
    match load::first_response(path.client, path.http) {
        Ok((_, took)) => r.first_byte_cold_ms = Some(took.as_secs_f64() * 1e3),
        Err(e) => say!("   first connection failed: {e:#}"),
    }
}

/// A warm-up, then the open-loop latency phase with the proxies' CPU and memory.
fn latency_phase(path: &RunningPath, args: &BenchArgs, r: &mut TopoResult) {
    let client = path.client;
    let proxied = !path.procs.is_empty();
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
    let each_before: Vec<_> = path
        .procs
        .iter()
        .map(|p| topology::proc_stat(p.pid()))
        .collect();
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
        let thousands = lat.ok as f64 / 1000.0;
        r.per_proxy = path
            .procs
            .iter()
            .zip(each_before)
            .map(|(p, b)| {
                let a = topology::proc_stat(p.pid());
                ProxyShare {
                    name: p.name.clone(),
                    cpu_s_per_1000_requests: (a.cpu_s - b.cpu_s) / thousands,
                    rss_mb: mb(a.rss),
                }
            })
            .collect();
    }
}

/// Throughput of one and eight TCP streams.
fn throughput_phase(
    path: &RunningPath,
    args: &BenchArgs,
    r: &mut TopoResult,
) -> anyhow::Result<()> {
    say!(
        "   throughput: 1 and 8 streams × {:?}",
        args.throughput_duration
    );
    let before = topology::total_stat(&path.procs);
    let (gbps, bytes) = load::throughput(path.client, path.tcp, 1, args.throughput_duration)?;
    let after = topology::total_stat(&path.procs);
    r.throughput_1_stream_gbps = gbps;
    if !path.procs.is_empty() && bytes > 0 {
        r.cpu_s_per_gb = Some((after.cpu_s - before.cpu_s) / (bytes as f64 / 1e9));
    }
    (r.throughput_8_streams_gbps, _) =
        load::throughput(path.client, path.tcp, 8, args.throughput_duration)?;
    if !path.procs.is_empty() {
        r.rss_after_throughput_mb = Some(mb(topology::total_stat(&path.procs).rss));
    }
    Ok(())
}

/// One request per new connection, with the proxies' CPU.
fn churn_phase(path: &RunningPath, args: &BenchArgs, r: &mut TopoResult) {
    let proxied = !path.procs.is_empty();
    say!(
        "   churn: new connection per request × {:?}",
        args.churn_duration
    );
    let before = topology::total_stat(&path.procs);
    let (ok, failed, first_failure) = load::churn(path.client, path.http, 4, args.churn_duration);
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
}

/// Private memory per open idle connection, and each new connection's first response.
fn idle_phase(path: &RunningPath, args: &BenchArgs, r: &mut TopoResult) -> anyhow::Result<()> {
    say!("   idle tunnels: {}", args.idle_tunnels);
    // Let the latency phase's connections finish closing so they do not count.
    std::thread::sleep(Duration::from_millis(500));
    let before = topology::total_stat(&path.procs);
    let (conns, mut took_us) = load::open_idle(path.client, path.http, args.idle_tunnels)?;
    r.first_byte_new_conn_ms = Some(Percentiles::of(&mut took_us));
    std::thread::sleep(Duration::from_millis(500));
    let after = topology::total_stat(&path.procs);
    // Private memory: the binary's file pages do not grow with tunnels.
    r.idle_tunnel_kib =
        Some(after.anon.saturating_sub(before.anon) as f64 / 1024.0 / args.idle_tunnels as f64);
    drop(conns);
    Ok(())
}
