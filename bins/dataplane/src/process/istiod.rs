//! Following istiod, for every role: the xDS store a proxy starts from, its node id, the
//! channel and the subscription; for the waypoint and the sidecar also the L7 resources the
//! workload API does not carry, from a local file beside it (`--config`, limited to
//! [`crate::config::L7_FILE_KINDS`], watched and merged in the one assembler) or from the
//! Kubernetes API (`--kube`, [`crate::proxy::k8s`]). Certificates
//! come from Istio's CA for the proxy's **own** identity, except the ztunnel's
//! (`ImpersonatedIdentity`, on behalf of its workloads).

use std::sync::Arc;
use std::time::Duration;

use super::{KubeArgs, ProxyArgs};
use crate::Error;
use crate::config::xds::{XdsSettings, XdsStore};
use crate::proxy::Proxy;
use crate::proxy::k8s::L7Source;

/// `namespace/name`, or `name` in `default`.
pub(crate) fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// An empty store for a proxy serving as `node` at `address`.
pub(crate) fn xds_store(
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
    .on_network(c.network.clone())
}

/// Loads the L7 file (`--config`, if given) into `store`, or makes the Kubernetes source
/// (`--kube`) of the proxy in `namespace` at `address`; without either the L7 indexes are
/// still built from istiod's services. Returns the source to follow.
pub(crate) async fn load_l7(
    c: &ProxyArgs,
    kube: &KubeArgs,
    store: &mut XdsStore,
    namespace: &str,
    address: std::net::IpAddr,
) -> Result<L7Source, Error> {
    store.set_l7(Arc::new(crate::config::Resources::default()));
    if let Some(src) = kube.source(namespace, address).await? {
        return Ok(L7Source::Kube(src));
    }
    let Some(path) = &c.config else {
        return Ok(L7Source::None);
    };
    store.set_l7(crate::config::load_l7_file(path)?);
    let interval = c.config_poll_interval.max(Duration::from_millis(50));
    Ok(L7Source::File(path.clone(), interval))
}

/// Istio's node id for a proxy of `kind` (Istio's node types `sidecar`, `waypoint`) in pod
/// `name.ns`.
pub(crate) fn node_info(
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
pub(crate) fn follow(
    c: &ProxyArgs,
    proxy: &Proxy,
    xds: &str,
    store: XdsStore,
    node: mesh_xds::NodeInfo,
    l7: L7Source,
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
