//! The config's defaults and naming conventions (Istio's): ports, namespaces, the cluster and
//! trust domain, sidecar labels and node names. A leaf module of `config`.

use mesh_identity::TrustDomain;

/// Default HBONE port.
pub const DEFAULT_HBONE_PORT: u16 = 15008;
/// Default root namespace (Istio's).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Cluster name reported in metrics when `MeshConfig.clusterId` is not set (Istio's default).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The label (Istio's pod label) that gives a workload its own sidecar.
pub const SIDECAR_LABEL: &str = "sidecar.istio.io/inject";

/// The node name of a sidecar workload's proxy: `sidecar/<namespace>/<name>`.
pub fn sidecar_node_name(namespace: &str, name: &str) -> String {
    format!("sidecar/{namespace}/{name}")
}

/// The default trust domain, [`DEFAULT_TRUST_DOMAIN`], parsed.
pub(crate) fn default_trust_domain() -> TrustDomain {
    #[allow(clippy::expect_used)]
    // DEFAULT_TRUST_DOMAIN is a constant valid trust domain (checked by the unit tests).
    DEFAULT_TRUST_DOMAIN
        .parse()
        .expect("default trust domain is valid")
}
