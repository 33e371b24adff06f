//! The Kubernetes API client of the L7 source: from `--kubeconfig FILE`, else in-cluster
//! (the pod's service-account token and CA, `KUBERNETES_SERVICE_HOST`), every response capped
//! ([`super::body::Capped`]). kube-rs over rustls with aws-lc-rs; it only reads (list, watch),
//! never writes status.

use std::path::Path;
use std::time::Duration;

use kube::client::ClientBuilder;

use super::body::Capped;
use crate::error::KubeError;

/// A client for the API server of `kubeconfig` (its current context), or of the cluster this
/// pod runs in; responses larger than `max_response_bytes` fail.
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    max_response_bytes: usize,
) -> Result<kube::Client, KubeError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            let options = kube::config::KubeConfigOptions::default();
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(err)?
        }
        None => kube::Config::incluster()?,
    };
    config.connect_timeout = Some(Duration::from_secs(10));
    // A watch asks the server to end it after WATCH_TIMEOUT; a connection silent for longer
    // than this is dead.
    config.read_timeout = Some(super::settings::WATCH_TIMEOUT + Duration::from_secs(30));
    let cap = max_response_bytes;
    let layer =
        tower::util::MapResponseLayer::new(move |r: http::Response<Box<kube::client::DynBody>>| {
            r.map(|b| Capped::new(b, cap))
        });
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}
