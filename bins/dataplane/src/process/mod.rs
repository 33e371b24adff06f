//! A proxy process around the core: logging, the runtime, the open-file limit, the certificate
//! source, start-up, config-file watch, and the stop on SIGINT, SIGTERM or `POST
//! /quitquitquit`. Each role (`crate::roles`) builds its [`ProxyConfig`] and calls in here.

mod args;
pub(crate) mod istiod;
mod k8s;

use std::process::ExitCode;
use std::time::Duration;

use mesh_telemetry::logging::LogControl;
use tracing::{error, info};

use crate::Error;
use crate::proxy::{Proxy, ProxyConfig};

pub use crate::duration::parse_duration;
pub use args::ProxyArgs;
pub(crate) use args::{CaFor, listen_addr, loopback_or};
pub use k8s::KubeArgs;

/// Installs the stderr log subscriber with a filter changeable at run time. Safe to call
/// once per process.
pub fn init_logging(filter: &str) -> mesh_telemetry::logging::LogControl {
    mesh_telemetry::logging::LogControl::init(filter)
}

/// Logging, fd limit and runtime around a proxy's `run`.
pub(crate) fn process_main<F, Fut>(role: &str, common: &ProxyArgs, run: F) -> ExitCode
where
    F: FnOnce(LogControl) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let log = init_logging(&common.log);
    raise_fd_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common.worker_threads.max(1))
        .thread_name(format!("{role}-worker"))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Config(e)) => {
            error!("invalid mesh config:\n{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            error!(error = %e, "{role} failed");
            ExitCode::FAILURE
        }
    }
}

/// A node proxy holds two sockets per proxied connection: raise the soft open-file limit to
/// the hard limit, as Istio's ztunnel does, so a busy node does not hit EMFILE at 1024.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
            }
        }
        _ => {}
    }
}

/// Starts the proxy, watches the config file, and stops on SIGINT/SIGTERM.
pub(crate) async fn serve(
    c: &ProxyArgs,
    cfg: ProxyConfig,
    state: crate::config::MeshState,
    whom: CaFor,
) -> Result<(), Error> {
    let (ca, bundle) = c.cert_provider(whom)?;
    let proxy = Proxy::start(cfg, state, ca, bundle).await?;
    proxy.watch_config(
        c.config_file()?.to_owned(),
        c.config_poll_interval.max(Duration::from_millis(50)),
    );
    run_until_stopped(proxy).await
}

pub(crate) async fn run_until_stopped(proxy: Proxy) -> Result<(), Error> {
    tokio::select! {
        r = shutdown_signal() => r?,
        () = proxy.quit_requested() => {}
    }
    info!("shutting down");
    proxy.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Runtime)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
