//! The ztunnel: a node's L4 proxy. It serves every workload of its `Node`: an inbound HBONE
//! listener per workload address (or inside the workload's network namespace, in-pod),
//! SOCKS5, plaintext and captured outbound listeners when configured, and the service VIPs
//! when the node asks for them. No HTTP layer.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use mesh_telemetry::logging::LogControl;
use tracing::info;

use crate::Error;
use crate::process::istiod::{follow, xds_store};
use crate::process::{
    CaFor, ProxyArgs, listen_addr, loopback_or, process_main, run_until_stopped, serve,
};
use crate::proxy::{Layers, Proxy, ProxyConfig, Role, serves};

/// A ztunnel serving node `node` of the mesh config.
pub fn ztunnel(node: &str) -> Role {
    Role::new("ztunnel", serves::node(node), Layers::default())
}

/// ztunnel settings. Every port and address can be set so several ztunnels share one host.
/// A ztunnel takes everything from istiod or everything from a file: `--config` and
/// `--xds-address` conflict (a usage error, exit code 2).
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("ztunnel_source").args(["config", "xds_address"]).multiple(false)))]
pub struct ZtunnelArgs {
    /// Name of the `Node` in the config that this ztunnel is. Its workloads get their
    /// identities here; its address hosts the SOCKS5 port.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// This ztunnel's own address (Istio's `INSTANCE_IP`), needed with `--xds-address`
    /// (a config file gives it in the Node).
    #[arg(long, value_name = "IP")]
    pub address: Option<std::net::IpAddr>,
    /// This ztunnel's pod name and namespace, sent to the control plane in its node id.
    #[arg(long, default_value = "ztunnel", value_name = "NAME")]
    pub pod_name: String,
    /// See `--pod-name`.
    #[arg(long, default_value = crate::config::DEFAULT_ROOT_NAMESPACE, value_name = "NAMESPACE")]
    pub pod_namespace: String,
    /// With `--xds-address`: listen on every service VIP:port (what a file's Node sets with
    /// `serviceListeners: true`), for hosts without traffic capture.
    #[arg(long, requires = "address")]
    pub service_listeners: bool,
    /// SOCKS5 port on the node address when it is loopback, else on 127.0.0.1; 0 disables
    /// SOCKS5.
    #[arg(long, default_value_t = 15080, value_name = "PORT")]
    pub socks5_port: u16,
    /// SOCKS5 listen address, overriding `<node address>:<socks5-port>`.
    #[arg(long, value_name = "IP:PORT")]
    pub socks5_addr: Option<SocketAddr>,
    /// Plaintext inbound port (Istio's 15006) on the node address, for connections that
    /// capture rules redirect here; 0 disables it.
    #[arg(long, default_value_t = 15006, value_name = "PORT")]
    pub plaintext_port: u16,
    /// Plaintext inbound listen address, overriding `<node address>:<plaintext-port>`.
    #[arg(long, value_name = "IP:PORT")]
    pub plaintext_addr: Option<SocketAddr>,
    /// The istio-cni agent's ZDS socket (Istio's `INPOD_UDS`; its chart's path is
    /// `/var/run/ztunnel/ztunnel.sock`): the agent hands this node's pods over and each is served
    /// in-pod (listeners inside its network namespace); a workload of this node waits, without
    /// listeners, until its pod is handed over.
    #[arg(long, env = "INPOD_UDS", value_name = "PATH")]
    pub zds_socket: Option<std::path::PathBuf>,
    /// Settings shared with the other proxies.
    #[command(flatten)]
    pub common: ProxyArgs,
    /// Extra node metadata for the control plane (Istio's `ISTIO_META_*` variables, read by
    /// [`super::ztunnel_env`]).
    #[arg(skip)]
    pub node_metadata: std::collections::BTreeMap<String, String>,
}

/// Runs a ztunnel until SIGINT or SIGTERM. Exit code 0 on a clean stop, 2 on a bad config,
/// 1 on other start-up failures.
pub fn main(args: ZtunnelArgs) -> ExitCode {
    let common = args.common.clone();
    process_main("ztunnel", &common, move |log| run(args, log))
}

/// The core's settings for a ztunnel whose node address is `address`: its role, SOCKS5 on
/// loopback and the plaintext inbound on the node address.
pub fn proxy_config(args: &ZtunnelArgs, address: IpAddr, log: LogControl) -> ProxyConfig {
    let mut cfg = args.common.proxy_config(address, log);
    cfg.role = ztunnel(&args.node);
    cfg.socks5_addr = listen_addr(args.socks5_addr, loopback_or(address), args.socks5_port);
    cfg.plaintext_addr = listen_addr(args.plaintext_addr, address, args.plaintext_port);
    cfg.zds_pods = args.zds_socket.is_some();
    cfg.dns = args.common.dns.ztunnel_settings(address);
    cfg
}

pub(crate) async fn run(args: ZtunnelArgs, log: LogControl) -> Result<(), Error> {
    let c = &args.common;
    if let Some(xds) = &c.xds_address {
        // (`--config` with it is refused by the command line: `ZtunnelArgs`.)
        return run_xds(&args, xds, log).await;
    }
    let state = crate::config::load_file(c.config_file()?)?;
    let node = state
        .node(&args.node)
        .cloned()
        .ok_or_else(|| Error::UnknownNode(args.node.clone()))?;
    let cfg = proxy_config(&args, node.address, log);
    if let Some(path) = &args.zds_socket {
        let (ca, bundle) = c.cert_provider(CaFor::Workloads)?;
        let proxy = Proxy::start(cfg, state, ca, bundle).await?;
        let poll = c
            .config_poll_interval
            .max(std::time::Duration::from_millis(50));
        proxy.watch_config(c.config_file()?.to_owned(), poll);
        proxy.follow_cni_agent(path.clone());
        return run_until_stopped(proxy).await;
    }
    serve(c, cfg, state, CaFor::Workloads).await
}

/// A ztunnel following istiod: starts on an empty mesh holding only its own node, then
/// applies every workload-API update.
async fn run_xds(args: &ZtunnelArgs, xds: &str, log: LogControl) -> Result<(), Error> {
    let c = &args.common;
    let address = args.address.ok_or(Error::Usage(
        "--address (this ztunnel's own IP) is required with --xds-address",
    ))?;
    let store = xds_store(c, &args.node, address, args.service_listeners);
    let cfg = proxy_config(args, address, log);
    let (ca, bundle) = c.cert_provider(CaFor::Workloads)?;
    let proxy = Proxy::start(cfg, store.build(), ca, bundle).await?;
    if let Some(path) = &args.zds_socket {
        proxy.follow_cni_agent(path.clone());
    }
    let mut node = mesh_xds::NodeInfo::ztunnel(
        &address.to_string(),
        &args.pod_name,
        &args.pod_namespace,
        &args.node,
        &c.cluster_id,
    );
    node.metadata.extend(args.node_metadata.clone());
    info!(address = %xds, node = %args.node, "following the control plane");
    let _follower = follow(c, &proxy, xds, store, node, Default::default())?;
    run_until_stopped(proxy).await
}
