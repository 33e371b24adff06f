//! The waypoint: a shared L7 proxy for the services and workloads that name it. One HBONE
//! listener at the waypoint `Gateway`'s address; every stream goes through the waypoint's
//! HTTP stack (its targets' JWT and L7 policies, routing) or, when not HTTP, its L4 policies.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use mesh_telemetry::logging::LogControl;
use tracing::info;

use crate::Error;
use crate::config::xds::Local;
use crate::process::istiod::{follow, load_l7, node_info, split_key, xds_store};
use crate::process::{CaFor, ProxyArgs, parse_duration, process_main, run_until_stopped, serve};
use crate::proxy::{Layers, Proxy, ProxyConfig, Role, serves};

/// A waypoint serving the `Gateway` `gateway` (`namespace/name`) of the mesh config.
pub fn waypoint(gateway: &str) -> Role {
    Role::new("waypoint", serves::gateway(gateway), Layers::default())
}

/// waypoint settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WaypointArgs {
    /// The waypoint `Gateway` (`gatewayClassName: istio-waypoint`) this proxy is, as
    /// `namespace/name`. It listens on the Gateway's address and presents its identity.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub gateway: String,
    /// How often remote JWKS (`jwksUri`, OpenID discovery) are refetched; a token with an
    /// unknown key id triggers a refetch sooner.
    #[arg(long, default_value = "20m", value_parser = parse_duration, value_name = "DURATION")]
    pub jwks_refresh: Duration,
    /// This waypoint's own address (Istio's `INSTANCE_IP`), needed with `--xds-address` (a
    /// config file gives it in the Gateway). Its identity is the service account named after
    /// the Gateway, as Istio deploys waypoints.
    #[arg(long, value_name = "IP")]
    pub address: Option<std::net::IpAddr>,
    /// The Kubernetes source of L7 resources (`--kube`).
    #[command(flatten)]
    pub kube: crate::process::KubeArgs,
    /// Settings shared with the other proxies.
    #[command(flatten)]
    pub common: ProxyArgs,
}

/// Runs a waypoint until SIGINT or SIGTERM. Exit code 0 on a clean stop, 2 on a bad config,
/// 1 on other start-up failures.
pub fn main(args: WaypointArgs) -> ExitCode {
    let common = args.common.clone();
    process_main("waypoint", &common, move |log| run(args, log))
}

/// The core's settings for the waypoint at `address`: its role and JWKS refresh.
pub fn proxy_config(args: &WaypointArgs, address: IpAddr, log: LogControl) -> ProxyConfig {
    let mut cfg = args.common.proxy_config(address, log);
    cfg.role = waypoint(&args.gateway);
    cfg.jwks_refresh = args.jwks_refresh;
    cfg
}

async fn run(args: WaypointArgs, log: LogControl) -> Result<(), Error> {
    let c = &args.common;
    if let Some(xds) = &c.xds_address {
        return run_xds(&args, xds, log).await;
    }
    let state = crate::config::load_file(c.config_file()?)?;
    let wp = state
        .waypoints
        .get(&args.gateway)
        .cloned()
        .ok_or_else(|| Error::UnknownWaypoint(args.gateway.clone()))?;
    let cfg = proxy_config(&args, wp.address, log);
    let own = CaFor::Own(Some(wp.identity.clone()));
    serve(c, cfg, state, own).await
}

/// A waypoint following istiod: workloads, services and L4 policy from the workload API, its
/// L7 resources from `--config`; always its own waypoint in the state, at `--address`.
async fn run_xds(args: &WaypointArgs, xds: &str, log: LogControl) -> Result<(), Error> {
    let c = &args.common;
    let address = args.address.ok_or(Error::Usage(
        "--address (this waypoint's own IP) is required with --xds-address",
    ))?;
    let (ns, name) = split_key(&args.gateway);
    // Istio runs a waypoint as the service account named after its Gateway.
    let identity = mesh_identity::SpiffeId::new(&crate::config::default_trust_domain(), ns, name)
        .map_err(|_| Error::Usage("--gateway NAMESPACE/NAME must form a SPIFFE id"))?;
    let mut store = xds_store(c, &args.gateway, address, false).serving(Local::Gateway {
        key: args.gateway.clone(),
        identity: identity.clone(),
    });
    let l7 = load_l7(c, &args.kube, &mut store, ns, address).await?;
    let cfg = proxy_config(args, address, log);
    let (ca, bundle) = c.cert_provider(CaFor::Own(Some(identity)))?;
    let proxy = Proxy::start(cfg, store.build(), ca, bundle).await?;
    let node = node_info("waypoint", address, name, ns, &c.cluster_id);
    info!(address = %xds, waypoint = %args.gateway, "following the control plane");
    let _follower = follow(c, &proxy, xds, store, node, l7)?;
    run_until_stopped(proxy).await
}
