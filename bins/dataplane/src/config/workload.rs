//! The workloads, services, waypoints and nodes of the compiled mesh state: a leaf module,
//! shared by the state ([`super::state`], which re-exports them) and the endpoint sets.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_identity::SpiffeId;
use mesh_telemetry::metrics::{PeerLabels, ServiceLabels, Str};

/// A workload (`WorkloadEntry`).
#[derive(Debug)]
pub struct Workload {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// IP address.
    pub address: IpAddr,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
    /// SPIFFE identity.
    pub identity: SpiffeId,
    /// Named port overrides.
    pub ports: BTreeMap<String, u16>,
    /// The node running it, if any (a workload on no node is outside the mesh: plaintext).
    pub node: Option<String>,
    /// Where its node's ztunnel accepts HBONE for it (`address:hbonePort`), if on a node.
    pub hbone_addr: Option<SocketAddr>,
    /// Its network namespace, when its node's ztunnel serves it in-pod (listeners opened
    /// inside that namespace, connections made from it).
    pub netns: Option<std::path::PathBuf>,
    /// Its metric labels, built once here so a connection only clones `Arc`s.
    pub telemetry: PeerLabels,
    /// The waypoint traffic addressed to this workload directly goes through
    /// (`istio.io/use-waypoint`, for a waypoint serving workloads).
    pub waypoint: Option<Arc<Waypoint>>,
    /// Where it runs (`region/zone/subzone`), for locality-aware balancing.
    pub locality: Option<mesh_l7::balance::locality::Locality>,
    /// Its application tunnel (workload API `application_tunnel: PROXY`): delivered
    /// connections start with a PROXY v2 header.
    pub application_tunnel: Option<super::app_tunnel::AppTunnel>,
}

/// What a waypoint serves (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaypointFor {
    /// Traffic addressed to services (Istio's default).
    Service,
    /// Traffic addressed to workloads directly.
    Workload,
    /// Both.
    All,
    /// Neither.
    None,
}

/// A waypoint: a shared L7 proxy (`Gateway` with `gatewayClassName: istio-waypoint`).
#[derive(Debug)]
pub struct Waypoint {
    /// Gateway name.
    pub name: String,
    /// Gateway namespace.
    pub namespace: String,
    /// Where its proxy runs.
    pub address: IpAddr,
    /// Its HBONE port.
    pub port: u16,
    /// Its identity (the service account named after the Gateway, as Istio).
    pub identity: SpiffeId,
    /// What it serves.
    pub waypoint_for: WaypointFor,
    /// `Gateway/<namespace>/<name>`: the key of the `targetRefs` resources attached to it
    /// (`waypoint_policies`, `waypoint_authn`), built once.
    pub target_key: String,
}

impl Waypoint {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its HBONE address.
    pub fn hbone_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

impl Workload {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Istio's canonical service: `service.istio.io/canonical-name`, else
    /// `app.kubernetes.io/name`, else `app`, else the workload name.
    pub fn canonical_service(&self) -> &str {
        canonical_service(&self.labels, &self.name)
    }

    /// Istio's canonical revision: `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub fn canonical_revision(&self) -> &str {
        canonical_revision(&self.labels)
    }
}

fn canonical_service<'a>(labels: &'a BTreeMap<String, String>, name: &'a str) -> &'a str {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .map_or(name, String::as_str)
}

fn canonical_revision(labels: &BTreeMap<String, String>) -> &str {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .map_or("latest", String::as_str)
}

/// Istio's metric labels for a workload. As Istio's ztunnel, `app`/`version` are the canonical
/// service and revision.
pub(crate) fn peer_labels(
    name: &str,
    namespace: &str,
    identity: &SpiffeId,
    labels: &BTreeMap<String, String>,
    cluster: &str,
    locality: Option<&mesh_l7::balance::locality::Locality>,
) -> PeerLabels {
    // Istio's metrics show an empty region or zone as `unknown`.
    let part = |f: fn(&mesh_l7::balance::locality::Locality) -> &str| {
        locality
            .map(f)
            .filter(|v| !v.is_empty())
            .map_or_else(|| Str::from(mesh_telemetry::metrics::UNKNOWN), Str::from)
    };
    let service = Str::from(canonical_service(labels, name));
    let revision = Str::from(canonical_revision(labels));
    PeerLabels {
        workload: Str::from(name),
        namespace: Str::from(namespace),
        principal: Str::from(identity.as_str()),
        app: service.clone(),
        version: revision.clone(),
        canonical_service: service,
        canonical_revision: revision,
        cluster: Str::from(cluster),
        region: part(|l| l.region.as_str()),
        zone: part(|l| l.zone.as_str()),
    }
}

/// A service (`ServiceEntry`).
#[derive(Debug)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Host names.
    pub hosts: Vec<String>,
    /// VIPs.
    pub vips: Vec<IpAddr>,
    /// Its metric labels.
    pub telemetry: ServiceLabels,
    /// The waypoint traffic to this service goes through (`istio.io/use-waypoint`).
    pub waypoint: Option<Arc<Waypoint>>,
    /// `Service/<namespace>/<name>`: the key of the `targetRefs` resources attached to it,
    /// built once.
    pub target_key: String,
    /// Its routing preference (workload API `load_balancing`, Kubernetes
    /// `trafficDistribution`), for locality-aware balancing at L4 and L7.
    pub load_balancing: Option<mesh_l7::balance::locality::Placement>,
    /// Its weighted waypoints (workload API `weighted_waypoints`), when one has a weight: a
    /// new connection goes through one of them, chosen in proportion to the weights
    /// ([`Service::waypoint_for_connection`]); `waypoint` is then the primary.
    pub weighted_waypoints: Option<Arc<super::weighted::Weighted<Arc<Waypoint>>>>,
    /// Who may see it (workload API `visibility`): a `Namespace` service is hidden from clients
    /// in other namespaces in VIP lookup and DNS. `Public` for file-defined services.
    pub visibility: super::visibility::Visibility,
    /// Preferred among services sharing a host name or VIP when none is in the client's
    /// namespace (workload API `canonical`).
    pub canonical: bool,
}

/// A ztunnel node.
#[derive(Debug)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Its own address.
    pub address: IpAddr,
    /// HBONE port on each local workload address.
    pub hbone_port: u16,
    /// Whether it binds service VIP listeners.
    pub service_listeners: bool,
    /// Its workloads.
    pub workloads: Vec<Arc<Workload>>,
}
