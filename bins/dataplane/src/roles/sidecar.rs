//! The sidecar: the proxy beside one workload. It serves a `Node` of one workload
//! (`sidecar/<namespace>/<name>`) with the ztunnel's listeners, and turns on the HTTP layers:
//! client-side L7 on captured outbound, server-side L7 (the workload's JWT and HTTP policies)
//! on inbound; with TPROXY capture, transparent inbound.

use std::net::SocketAddr;
use std::process::ExitCode;

use mesh_telemetry::logging::LogControl;
use tracing::info;

use crate::Error;
use crate::config::xds::Local;
use crate::process::istiod::{follow, load_l7, node_info, split_key, xds_store};
use crate::process::{CaFor, ProxyArgs, listen_addr, process_main, run_until_stopped, serve};
use crate::proxy::{Layers, Proxy, ProxyConfig, Role, serves};

/// A sidecar serving node `node` (`sidecar/<namespace>/<name>`); `transparent` when capture
/// uses TPROXY for inbound (`meshctl capture install --tproxy`).
pub fn sidecar(node: &str, transparent: bool) -> Role {
    Role::new(
        "sidecar",
        serves::node(node),
        Layers {
            outbound_http: true,
            inbound_http: true,
            transparent_inbound: transparent,
        },
    )
}

/// sidecar settings: the proxy beside one workload, in the workload's network namespace (or
/// on its host), with the workload's identity only.
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarArgs {
    /// The workload this sidecar serves, as `namespace/name` of a `WorkloadEntry` labelled
    /// `sidecar.istio.io/inject: "true"`. HBONE listens on its address, port 15008.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub workload: String,
    /// Captured outbound port (Istio's 15001) on 127.0.0.1, where `meshctl capture` redirects
    /// the workload's outbound TCP; 0 disables it.
    #[arg(long, default_value_t = 15001, value_name = "PORT")]
    pub outbound_port: u16,
    /// Captured outbound listen address, overriding `127.0.0.1:<outbound-port>`.
    #[arg(long, value_name = "IP:PORT")]
    pub outbound_addr: Option<SocketAddr>,
    /// Plaintext inbound port (Istio's 15006) on the workload address, where capture
    /// redirects inbound TCP; 0 disables it.
    #[arg(long, default_value_t = 15006, value_name = "PORT")]
    pub plaintext_port: u16,
    /// Plaintext inbound listen address, overriding `<workload address>:<plaintext-port>`.
    #[arg(long, value_name = "IP:PORT")]
    pub plaintext_addr: Option<SocketAddr>,
    /// Inbound capture is TPROXY (`meshctl capture install --tproxy`): the plaintext
    /// listener is transparent and the app sees each client's own address.
    #[arg(long)]
    pub tproxy: bool,
    /// The workload's own address (Istio's `INSTANCE_IP`), needed with `--xds-address` (a
    /// config file gives it in the WorkloadEntry).
    #[arg(long, value_name = "IP")]
    pub address: Option<std::net::IpAddr>,
    /// The Kubernetes source of L7 resources (`--kube`).
    #[command(flatten)]
    pub kube: crate::process::KubeArgs,
    /// Settings shared with the other proxies.
    #[command(flatten)]
    pub common: ProxyArgs,
}

/// Runs a sidecar until SIGINT, SIGTERM or `POST /quitquitquit`. Exit code 0 on a clean
/// stop, 2 on a bad config, 1 on other start-up failures.
pub fn main(args: SidecarArgs) -> ExitCode {
    let common = args.common.clone();
    process_main("sidecar", &common, move |log| run(args, log))
}

async fn run(args: SidecarArgs, log: LogControl) -> Result<(), Error> {
    let c = &args.common;
    let (ns, name) = split_key(&args.workload);
    let node_name = crate::config::sidecar_node_name(ns, name);
    if let Some(xds) = &c.xds_address {
        return run_xds(&args, xds, &node_name, log).await;
    }
    let state = crate::config::load_file(c.config_file()?)?;
    let node = state
        .node(&node_name)
        .cloned()
        .ok_or_else(|| Error::UnknownSidecar(args.workload.clone()))?;
    let cfg = proxy_config(&args, node.address, &node_name, log);
    serve(c, cfg, state, CaFor::Own(None)).await
}

/// The core's settings for the sidecar of node `node_name` at workload address `address`:
/// its role, socket mark (Istio's 1337 by default), captured outbound on loopback (and IPv6
/// loopback when the namespace has it), plaintext inbound on the workload address.
pub fn proxy_config(
    args: &SidecarArgs,
    address: std::net::IpAddr,
    node_name: &str,
    log: LogControl,
) -> ProxyConfig {
    let c = &args.common;
    let mut cfg = c.proxy_config(address, log);
    cfg.role = sidecar(node_name, args.tproxy);
    cfg.socket_mark = match c.socket_mark {
        None => Some(crate::sockets::DEFAULT_SOCKET_MARK),
        Some(0) => None,
        m => m,
    };
    cfg.outbound_addr = listen_addr(
        args.outbound_addr,
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        args.outbound_port,
    );
    // IPv6 capture redirects to [::1]; listened on when this namespace has IPv6 loopback.
    if args.outbound_addr.is_none()
        && args.outbound_port != 0
        && std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_ok()
    {
        cfg.outbound_addr_v6 = Some(SocketAddr::new(
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            args.outbound_port,
        ));
    }
    cfg.plaintext_addr = listen_addr(args.plaintext_addr, address, args.plaintext_port);
    cfg
}

/// A sidecar following istiod: its workload (`--workload`) and the mesh from the workload
/// API, its L7 resources from `--config`; certificates for its workload's identity only.
async fn run_xds(
    args: &SidecarArgs,
    xds: &str,
    node_name: &str,
    log: LogControl,
) -> Result<(), Error> {
    let c = &args.common;
    let address = args.address.ok_or(Error::Usage(
        "--address (the workload's own IP) is required with --xds-address",
    ))?;
    let (ns, name) = split_key(&args.workload);
    let mut store = xds_store(c, node_name, address, false).serving(Local::OneWorkload {
        workload: format!("{ns}/{name}"),
    });
    let l7 = load_l7(c, &args.kube, &mut store, ns, address).await?;
    let cfg = proxy_config(args, address, node_name, log);
    let (ca, bundle) = c.cert_provider(CaFor::Own(None))?;
    let proxy = Proxy::start(cfg, store.build(), ca, bundle).await?;
    let node = node_info("sidecar", address, name, ns, &c.cluster_id);
    info!(address = %xds, workload = %args.workload, "following the control plane");
    let _follower = follow(c, &proxy, xds, store, node, l7)?;
    run_until_stopped(proxy).await
}
