//! The flags of `meshctl bench`.

use std::path::PathBuf;
use std::time::Duration;

use mesh_dataplane::process::parse_duration;

use super::topology::Topology;

/// `meshctl bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Topologies to measure, in order (direct is the baseline for added latency).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,relay-pair,ztunnel-pair,waypoint"
    )]
    pub(super) topologies: Vec<Topology>,
    /// Istio's ztunnel binary, for the `istio-ztunnel-pair` topology (built outside this
    /// project: `../shared/PEER-ZTUNNEL.md`). Without it that topology is skipped.
    #[arg(long, env = "ISTIO_ZTUNNEL", value_name = "PATH")]
    pub(super) istio_ztunnel: Option<PathBuf>,
    /// Measure the topologies this many times, alternating, and report each figure's median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub(super) rounds: u32,
    /// A smoke run: short phases and few idle tunnels.
    #[arg(long)]
    pub(super) quick: bool,
    /// Length of the latency phase.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(super) duration: Duration,
    /// Requests per second in the latency phase.
    #[arg(long, default_value_t = 1000)]
    pub(super) rate: u64,
    /// Client connections in the latency phase.
    #[arg(long, default_value_t = 4)]
    pub(super) connections: usize,
    /// Request and response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub(super) payload: usize,
    /// Length of each throughput phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(super) throughput_duration: Duration,
    /// Length of the connection-churn phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(super) churn_duration: Duration,
    /// Idle tunnels opened for the memory-per-tunnel figure.
    #[arg(long, default_value_t = 1000)]
    pub(super) idle_tunnels: usize,
    /// Worker threads of each proxy.
    #[arg(long, default_value_t = 2)]
    pub(super) workers: usize,
    /// Log filter of the proxies (as shipped: info, with one access log line per connection).
    #[arg(long, default_value = "info")]
    pub(super) proxy_log: String,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(super) json: Option<PathBuf>,
    /// Instruction-count mode: run the ztunnel pair (and the waypoint and sidecar-pair
    /// topologies when listed; sidecar-pair needs root) under callgrind and report
    /// instructions per request (from runs of N and 2N requests, so start-up cancels out).
    /// With `istio-ztunnel-pair` listed and Istio's binary given, our in-pod pair and Istio's
    /// too, and their ratio (root). Needs valgrind.
    #[arg(long, value_name = "N")]
    pub(super) callgrind: Option<u64>,
    /// Keep the callgrind output files here (for `callgrind_annotate`), instead of a temp dir.
    #[arg(long, value_name = "DIR")]
    pub(super) callgrind_dir: Option<PathBuf>,
    /// Run the bad-endpoint scenarios instead of the topologies: the waypoint path to a
    /// service of three endpoints, one slow or failing, with routing only and with retries,
    /// outlier detection and the latency-aware balancer (success rate and latency of each).
    #[arg(long)]
    pub(super) bad_endpoint: bool,
    /// Run the authorization micro-benchmark (1, 100, 1000 policies) instead of the
    /// topologies (combine with --config-apply for both).
    #[arg(long)]
    pub(super) authz: bool,
    /// Decisions timed per authz case.
    #[arg(long, default_value_t = 200_000)]
    pub(super) authz_decisions: usize,
    /// Run the config-apply benchmark (load and swap a large mesh) instead of the topologies.
    #[arg(long)]
    pub(super) config_apply: bool,
    /// Run the xDS-apply benchmark (a workload-API snapshot of --config-size, then
    /// single-workload deltas, into a running proxy) instead of the topologies.
    #[arg(long)]
    pub(super) xds_apply: bool,
    /// Single-workload deltas timed by --xds-apply.
    #[arg(long, default_value_t = 20)]
    pub(super) xds_deltas: usize,
    /// Workloads, services and policies of the config-apply mesh.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,1000,1000",
        value_name = "W,S,P"
    )]
    pub(super) config_size: Vec<usize>,
}
