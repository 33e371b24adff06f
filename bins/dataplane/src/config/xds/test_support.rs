//! Builders shared by the unit tests of the xDS store and of the configuration built from it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{XdsSettings, XdsStore};

/// The settings of a ztunnel on node `n1` (10.0.0.1) of cluster `Kubernetes`, trust domain
/// `cluster.local`, root namespace `istio-system`, without service listeners.
pub(crate) fn settings() -> XdsSettings {
    XdsSettings {
        node: "n1".into(),
        node_address: "10.0.0.1".parse().unwrap(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        service_listeners: false,
    }
}

/// An empty store with [`settings`].
pub(crate) fn store() -> XdsStore {
    XdsStore::new(settings())
}
