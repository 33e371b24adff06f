//! What the Kubernetes source is made of: its client and settings, and the L7 source enum a
//! proxy beside istiod follows. A leaf module of `proxy::k8s`.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::k8s::{KubeLimits, KubeScope};

/// How long the API server keeps one watch open before the watcher starts the next (from
/// the last resourceVersion, without a list).
pub(crate) const WATCH_TIMEOUT: Duration = Duration::from_secs(290);

/// Where a proxy beside istiod takes its L7 resources from.
#[derive(Debug, Default)]
pub enum L7Source {
    /// None: istiod's services only.
    #[default]
    None,
    /// A local file, polled at an interval (`--config`).
    File(PathBuf, Duration),
    /// The Kubernetes API (`--kube`).
    Kube(KubeSource),
}

/// The Kubernetes source: a client and its settings.
pub struct KubeSource {
    /// The API client (see [`kube_client`]).
    pub client: kube::Client,
    /// What to watch and how much to hold.
    pub settings: KubeSettings,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What the Kubernetes source watches and how much it holds.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Which namespaces concern the proxy.
    pub scope: KubeScope,
    /// Caps on the objects held.
    pub limits: KubeLimits,
    /// Changes within this window make one rebuild.
    pub debounce: Duration,
}
