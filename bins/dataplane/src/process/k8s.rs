//! The flags of the Kubernetes L7 source (`--kube`), shared by the waypoint and the sidecar,
//! and the source they make.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::parse_duration;
use crate::Error;
use crate::config::k8s::{KubeLimits, KubeScope};
use crate::proxy::k8s::{KubeSettings, KubeSource, kube_client};

/// Taking the L7 resources from the Kubernetes API instead of a file.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// With `--xds-address`: watch the L7 kinds (VirtualService, DestinationRule, HTTPRoute,
    /// AuthorizationPolicy, RequestAuthentication, EnvoyFilter) in the Kubernetes API, in the
    /// namespaces that concern this proxy, with its service account (in-cluster) or
    /// `--kubeconfig`. Exclusive with `--config`. Read only.
    #[arg(long, requires = "xds_address", conflicts_with = "config")]
    pub kube: bool,
    /// A kubeconfig file (its current context) instead of the in-cluster service account.
    #[arg(long, value_name = "FILE", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces watched at most (own and root namespace included); more are left out and
    /// logged.
    #[arg(long, default_value_t = 32, value_name = "N", requires = "kube")]
    pub kube_max_namespaces: usize,
    /// Kubernetes objects held at most; more are rejected by name.
    #[arg(long, default_value_t = 10_000, value_name = "N", requires = "kube")]
    pub kube_max_objects: usize,
    /// The largest Kubernetes object accepted, in bytes of JSON.
    #[arg(long, default_value_t = 256 * 1024, value_name = "BYTES", requires = "kube")]
    pub kube_max_object_bytes: usize,
    /// The largest response read from the API server (a list page, or one watch connection's
    /// whole stream, which then resumes from its last resourceVersion).
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES", requires = "kube")]
    pub kube_max_response_bytes: usize,
    /// Changes within this window make one rebuild.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION", requires = "kube")]
    pub kube_debounce: Duration,
}

impl KubeArgs {
    /// The Kubernetes source of a proxy in namespace `namespace` at `address`, or `None`
    /// without `--kube`. Fails on a kubeconfig that cannot be used, or without one outside a
    /// cluster.
    pub async fn source(
        &self,
        namespace: &str,
        address: IpAddr,
    ) -> Result<Option<KubeSource>, Error> {
        if !self.kube {
            return Ok(None);
        }
        let client = kube_client(self.kubeconfig.as_deref(), self.kube_max_response_bytes).await?;
        let settings = KubeSettings {
            scope: KubeScope {
                own_namespace: namespace.to_owned(),
                own_address: address,
                every_service: false,
                max_namespaces: self.kube_max_namespaces,
            },
            limits: KubeLimits {
                max_objects: self.kube_max_objects,
                max_object_bytes: self.kube_max_object_bytes,
            },
            debounce: self.kube_debounce.max(Duration::from_millis(1)),
        };
        Ok(Some(KubeSource { client, settings }))
    }
}
