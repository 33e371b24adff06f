//! `meshctl demo`: a whole mesh on loopback, from the embedded default config.
//!
//! Creates (or reuses) a local CA in the state directory, writes the default mesh config there
//! unless one is given, starts one ztunnel process per `Node` (`meshctl ztunnel …`), starts an
//! HTTP echo server on every service endpoint and a client that calls the first service VIP
//! every interval from a workload address of the node that binds service listeners. Runs until
//! Ctrl-C (or `--duration`), then stops the ztunnels with SIGTERM and waits for them.

mod banner;
mod proxies;
mod workloads;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use mesh_dataplane::config::load_file;
use mesh_dataplane::process::parse_duration;
use mesh_identity::LocalCa;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::proxies::{Launch, proxy_names, start_proxy, stop_nodes, wait_ready};
use self::workloads::{client_loop, client_plan, start_workloads};
use crate::out::say;

/// The embedded default mesh (also `examples/mesh.yaml`).
const DEFAULT_MESH: &str = include_str!("../../../../examples/mesh.yaml");

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DemoArgs {
    /// State directory: the CA (`ca/`), the mesh config (`mesh.yaml`).
    #[arg(long, default_value = ".meshctl/demo", value_name = "DIR")]
    state_dir: PathBuf,
    /// Use this mesh config instead of the embedded default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stop after this long instead of waiting for Ctrl-C (e.g. `10s`).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,
    /// Interval between the demo client's requests.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    interval: Duration,
    /// Log filter passed to the ztunnels.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
}

pub(crate) fn main(args: DemoArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::out::fail(e),
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::out::fail(format!("{e:#}")),
    }
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (ca_dir, config) = prepare(&args)?;
    let state = load_file(&config)?;

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    // Application workloads first, so the mesh has somewhere to deliver.
    start_workloads(&state, &tasks, &stop).await?;

    let exe = std::env::current_exe().context("locate meshctl")?;
    let names = proxy_names(&state);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<String>(names.len().max(1));
    let mut nodes = Vec::new();
    for (name, role, flag) in &names {
        let launch = Launch {
            exe: &exe,
            config: &config,
            ca_dir: &ca_dir,
            log: &args.log,
        };
        nodes.push(start_proxy(&launch, name, role, flag, &tasks, &ready_tx)?);
    }
    drop(ready_tx);
    if wait_ready(&mut ready_rx, nodes.len()).await < nodes.len() {
        stop_nodes(&mut nodes).await;
        bail!("proxies did not become ready (see their logs above)");
    }
    banner::print_banner(&state, &ca_dir, &config, &nodes);

    let ok = Arc::new(AtomicU64::new(0));
    if let Some((src, vip, host)) = client_plan(&state) {
        tasks.spawn(client_loop(
            src,
            vip,
            host,
            args.interval,
            ok.clone(),
            stop.clone(),
        ));
    }

    wait_for_stop(args.duration).await?;
    stop.cancel();
    stop_nodes(&mut nodes).await;
    tasks.close();
    tasks.wait().await;
    let n = ok.load(Ordering::Relaxed);
    say!("demo stopped cleanly; {n} requests succeeded through the mesh");
    if args.duration.is_some() && client_plan(&state).is_some() && n == 0 {
        bail!("no request succeeded through the mesh");
    }
    Ok(())
}

/// The state directory with its CA, and the mesh config to use (the given one, or the
/// embedded default written there): the CA directory and the config path.
fn prepare(args: &DemoArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    let state_dir = args.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let ca_dir = state_dir.join("ca");
    let (_, created) = LocalCa::load_or_create(&ca_dir)?;
    say!(
        "local CA: {} {}",
        if created { "created" } else { "reused" },
        ca_dir.display()
    );
    let config = match &args.config {
        Some(c) => c.clone(),
        None => {
            let path = state_dir.join("mesh.yaml");
            if !path.exists() {
                std::fs::write(&path, DEFAULT_MESH)
                    .with_context(|| format!("write {}", path.display()))?;
                say!(
                    "mesh config: wrote the embedded default to {}",
                    path.display()
                );
            } else {
                say!(
                    "mesh config: using {} (delete it to get the default back)",
                    path.display()
                );
            }
            path
        }
    };
    Ok((ca_dir, config))
}

/// Waits for Ctrl-C, SIGTERM or the end of `duration`, and says which.
async fn wait_for_stop(duration: Option<Duration>) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let until = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => say!("\nstopping (Ctrl-C)"),
        _ = term.recv() => say!("stopping (SIGTERM)"),
        () = until => say!("stopping (--duration elapsed)"),
    }
    Ok(())
}
