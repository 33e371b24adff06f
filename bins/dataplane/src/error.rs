//! The core's error type.

use std::net::SocketAddr;

use crate::config::ConfigError;

/// Errors starting or running a proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The mesh config was rejected.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The config has no `Node` with the requested name.
    #[error("the mesh config has no Node named {0:?}")]
    UnknownNode(String),
    /// The config has no waypoint `Gateway` with the requested `namespace/name`.
    #[error("the mesh config has no waypoint Gateway {0:?} (gatewayClassName: istio-waypoint)")]
    UnknownWaypoint(String),
    /// The sidecar's workload is not a sidecar workload of the config.
    #[error("no WorkloadEntry {0:?} labelled sidecar.istio.io/inject: \"true\" in the mesh config")]
    UnknownSidecar(String),
    /// A workload's network namespace (in-pod mode) could not be entered.
    #[error("cannot enter network namespace {}: {source}", path.display())]
    Netns {
        /// Its path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificates or TLS configuration.
    #[error("identity: {0}")]
    Identity(#[from] mesh_identity::Error),
    /// The admin endpoint must be bound to a loopback address.
    #[error(
        "admin address {0} is not a loopback address: the admin endpoint (config dump, log level) is served on localhost only"
    )]
    AdminNotLoopback(SocketAddr),
    /// The access log could not be opened.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    /// A command-line combination that cannot work.
    #[error("{0}")]
    Usage(&'static str),
    /// The Kubernetes source (`--kube`) could not start.
    #[error("{0}")]
    Kube(#[from] KubeError),
    /// The async runtime or another OS facility failed.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// `--kubeconfig` could not be read or used.
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// The cause.
        source: kube::config::KubeconfigError,
    },
    /// No `--kubeconfig` and no in-cluster service account.
    #[error(
        "in-cluster Kubernetes config (KUBERNETES_SERVICE_HOST and the pod's service-account token): {0}; outside a cluster give --kubeconfig FILE"
    )]
    InCluster(#[from] kube::config::InClusterError),
    /// The client could not be built (TLS settings).
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}
