//! The kinds the Kubernetes source watches, its caps, and the key of one watch: a leaf module
//! of `config::k8s`.

/// One kind the Kubernetes source watches: its `kind`, API group, served version and plural
/// (the path segment of `/apis/<group>/<version>/namespaces/<ns>/<plural>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubeKind {
    /// `kind`, e.g. `VirtualService`.
    pub kind: &'static str,
    /// API group, e.g. `networking.istio.io`.
    pub group: &'static str,
    /// The version watched; the API server converts objects stored at other served versions.
    pub version: &'static str,
    /// Plural resource name, e.g. `virtualservices`.
    pub plural: &'static str,
}

impl KubeKind {
    /// `group/version`, the `apiVersion` of the objects watched.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

/// The kinds watched: those of [`super::L7_FILE_KINDS`] that are Kubernetes objects. Not
/// watched: `MeshConfig` (Istio keeps it in the `istio` ConfigMap, not a kind), `GRPCRoute`
/// (this data plane's L7 has no gRPC route table yet), `ServiceEntry` (istiod's workload API
/// carries services; the L7 file rejects it too).
pub const KUBE_KINDS: &[KubeKind] = &[
    KubeKind {
        kind: "VirtualService",
        group: "networking.istio.io",
        version: "v1",
        plural: "virtualservices",
    },
    KubeKind {
        kind: "DestinationRule",
        group: "networking.istio.io",
        version: "v1",
        plural: "destinationrules",
    },
    KubeKind {
        kind: "HTTPRoute",
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "httproutes",
    },
    KubeKind {
        kind: "AuthorizationPolicy",
        group: "security.istio.io",
        version: "v1",
        plural: "authorizationpolicies",
    },
    KubeKind {
        kind: "RequestAuthentication",
        group: "security.istio.io",
        version: "v1",
        plural: "requestauthentications",
    },
    KubeKind {
        kind: "EnvoyFilter",
        group: "networking.istio.io",
        version: "v1alpha3",
        plural: "envoyfilters",
    },
];

/// Caps on what the Kubernetes source holds, whatever the API server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeLimits {
    /// Objects held at most, over every kind and namespace (listed ones included); past it
    /// a new object is rejected by name.
    pub max_objects: usize,
    /// The largest object accepted, in bytes of JSON.
    pub max_object_bytes: usize,
}

impl Default for KubeLimits {
    fn default() -> Self {
        KubeLimits {
            max_objects: 10_000,
            max_object_bytes: 256 * 1024,
        }
    }
}

/// Which watch an event came from: a kind in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchKey {
    /// The kind.
    pub kind: KubeKind,
    /// The namespace watched.
    pub namespace: String,
}
