//! The waypoint and the sidecar following istiod, as the ztunnel does: workloads, services,
//! endpoints and L4 `Authorization`s from the workload API (Delta ADS); the L7 resources the
//! workload API does not carry from a local file beside it (`--config`, limited to
//! [`crate::config::L7_FILE_KINDS`], watched and merged in the one assembler); certificates
//! from Istio's CA for the proxy's **own** identity with its own token, never on behalf of
//! another (`ImpersonatedIdentity` is the ztunnel's).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::{CaFor, ProxyArgs, SidecarArgs, WaypointArgs, run_until_stopped, sidecar_config};
use crate::Error;
use crate::config::xds::{XdsRole, XdsSettings, XdsStore};
use crate::proxy::Proxy;
use mesh_telemetry::logging::LogControl;

/// A waypoint following istiod: workloads, services and L4 policy from the workload API, its
/// L7 resources from `--config`; always its own waypoint in the state, at `--address`.
pub(super) async fn run_waypoint_xds(
    args: &WaypointArgs,
    xds: &str,
    log: LogControl,
) -> Result<(), Error> {
    let c = &args.common;
    let address = args.address.ok_or(Error::Usage(
        "--address (this waypoint's own IP) is required with --xds-address",
    ))?;
    let (ns, name) = split_key(&args.gateway);
    // Istio runs a waypoint as the service account named after its Gateway.
    let identity = mesh_identity::SpiffeId::new(&crate::config::default_trust_domain(), ns, name)
        .map_err(|_| Error::Usage("--gateway NAMESPACE/NAME must form a SPIFFE id"))?;
    let mut store = xds_store(c, &args.gateway, address, false).with_role(XdsRole::Waypoint {
        key: args.gateway.clone(),
        identity: identity.clone(),
    });
    let l7 = load_l7(c, &mut store)?;
    let mut cfg = c.proxy_config(address, log);
    cfg.role = crate::roles::waypoint(&args.gateway);
    cfg.jwks_refresh = args.jwks_refresh;
    let (ca, bundle) = c.cert_provider(CaFor::Own(Some(identity)))?;
    let proxy = Proxy::start(cfg, store.build(), ca, bundle).await?;
    let node = node_info("waypoint", address, name, ns, &c.cluster_id);
    info!(address = %xds, waypoint = %args.gateway, "following the control plane");
    let _follower = follow(c, &proxy, xds, store, node, l7)?;
    run_until_stopped(proxy).await
}

/// A sidecar following istiod: its workload (`--workload`) and the mesh from the workload
/// API, its L7 resources from `--config`; certificates for its workload's identity only.
pub(super) async fn run_sidecar_xds(
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
    let mut store = xds_store(c, node_name, address, false).with_role(XdsRole::Sidecar {
        workload: format!("{ns}/{name}"),
    });
    let l7 = load_l7(c, &mut store)?;
    let cfg = sidecar_config(args, address, node_name, log);
    let (ca, bundle) = c.cert_provider(CaFor::Own(None))?;
    let proxy = Proxy::start(cfg, store.build(), ca, bundle).await?;
    let node = node_info("sidecar", address, name, ns, &c.cluster_id);
    info!(address = %xds, workload = %args.workload, "following the control plane");
    let _follower = follow(c, &proxy, xds, store, node, l7)?;
    run_until_stopped(proxy).await
}

/// `namespace/name`, or `name` in `default`.
pub(super) fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// An empty store for a proxy serving as `node` at `address`.
pub(super) fn xds_store(
    c: &ProxyArgs,
    node: &str,
    address: std::net::IpAddr,
    listeners: bool,
) -> XdsStore {
    XdsStore::new(XdsSettings {
        node: node.to_owned(),
        node_address: address,
        cluster_id: c.cluster_id.clone(),
        root_namespace: crate::config::DEFAULT_ROOT_NAMESPACE.to_owned(),
        trust_domain: crate::config::default_trust_domain(),
        service_listeners: listeners,
    })
}

/// Loads the L7 file (`--config`, if given) into `store`; without one the L7 indexes are
/// still built from istiod's services. Returns the file to watch.
fn load_l7(c: &ProxyArgs, store: &mut XdsStore) -> Result<Option<(PathBuf, Duration)>, Error> {
    let Some(path) = &c.config else {
        store.set_l7(Arc::new(crate::config::Resources::default()));
        return Ok(None);
    };
    store.set_l7(crate::config::load_l7_file(path)?);
    let interval = c.config_poll_interval.max(Duration::from_millis(50));
    Ok(Some((path.clone(), interval)))
}

/// Istio's node id for a proxy of `kind` (Istio's node types `sidecar`, `waypoint`) in pod
/// `name.ns`.
pub(super) fn node_info(
    kind: &str,
    address: std::net::IpAddr,
    name: &str,
    ns: &str,
    cluster: &str,
) -> mesh_xds::NodeInfo {
    let metadata = [("NAMESPACE", ns), ("CLUSTER_ID", cluster)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    mesh_xds::NodeInfo {
        id: format!("{kind}~{address}~{name}.{ns}~{ns}.svc.cluster.local"),
        cluster: cluster.to_owned(),
        metadata,
    }
}

/// Subscribes `proxy` to istiod at `xds`: the channel (TLS with the mesh roots, HTTP/2
/// keepalive; it reconnects by itself) and the stream's settings.
pub(super) fn follow(
    c: &ProxyArgs,
    proxy: &Proxy,
    xds: &str,
    store: XdsStore,
    node: mesh_xds::NodeInfo,
    l7: Option<(PathBuf, Duration)>,
) -> Result<crate::proxy::XdsFollower, Error> {
    let mut control_plane = mesh_identity::grpc::ControlPlane::new(xds);
    control_plane.ca_pem = c.root_pem()?;
    control_plane.server_name = c.xds_server_name.clone();
    control_plane.keepalive_interval = Some(c.xds_keepalive_interval);
    control_plane.keepalive_timeout = c.xds_keepalive_timeout;
    let channel = control_plane.lazy_channel()?;
    let mut config = mesh_xds::Config::new(xds, node);
    config.token_file = c.xds_token.clone();
    Ok(proxy.follow_istiod(store, channel, config, l7))
}
