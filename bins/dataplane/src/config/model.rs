//! The YAML resources of the local mesh file, with Istio's apiVersion, kind and field names.
//!
//! Every struct denies unknown fields: a typo or an Istio field this mesh does not support is an
//! error naming the field, never silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// API group of the few kinds that Istio has no equivalent for.
pub const LOCAL_GROUP: &str = "dataplane.mesh.dev";
/// apiVersion of those kinds.
pub const LOCAL_API_VERSION: &str = "dataplane.mesh.dev/v1alpha1";
/// Istio networking apiVersions accepted for WorkloadEntry and ServiceEntry.
pub const NETWORKING_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// Kubernetes object metadata (the subset a mesh file needs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Object name.
    pub name: String,
    /// Namespace; `default` when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Object labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Object annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// One document: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Doc<S> {
    /// apiVersion as written.
    pub api_version: String,
    /// kind as written.
    pub kind: String,
    /// metadata.
    pub metadata: Metadata,
    /// spec.
    pub spec: S,
}

/// `networking.istio.io/v1` `WorkloadEntry` spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// The workload's IP address.
    pub address: String,
    /// Named ports overriding a service port's target (by port name).
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Workload labels, matched by `ServiceEntry.workloadSelector`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Service account: the identity is `spiffe://<td>/ns/<namespace>/sa/<serviceAccount>`.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Where it runs: `region/zone/subzone`.
    #[serde(default)]
    pub locality: Option<String>,
}

/// `networking.istio.io/v1` `ServiceEntry` spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// Host names of the service.
    pub hosts: Vec<String>,
    /// Virtual IPs of the service.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Service ports.
    pub ports: Vec<ServicePortSpec>,
    /// `MESH_INTERNAL` (the only supported value).
    #[serde(default)]
    pub location: Option<String>,
    /// `STATIC` (the only supported value).
    #[serde(default)]
    pub resolution: Option<String>,
    /// Selects the `WorkloadEntry`s that back this service.
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
}

/// A `ServiceEntry` port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortSpec {
    /// The service port.
    pub number: u32,
    /// Protocol: HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, MONGO, MYSQL, REDIS (default TCP).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Port name (required, as in Istio).
    pub name: String,
    /// Port on the endpoints (default: `number`).
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// `workloadSelector`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must all carry.
    pub labels: BTreeMap<String, String>,
}

/// `dataplane.mesh.dev/v1alpha1` `Node`: a ztunnel "node" and the workloads it runs.
/// Istio has no kind for this (Kubernetes knows which node runs a pod).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// The node's own address: the ztunnel binds its SOCKS5 (and later admin) ports there.
    pub address: String,
    /// Port of the HBONE listener the node's ztunnel opens on each local workload's address.
    #[serde(default)]
    pub hbone_port: Option<u32>,
    /// Workloads on this node: `namespace/name` (or `name` in `default`) of `WorkloadEntry`s.
    #[serde(default)]
    pub workloads: Vec<String>,
    /// Bind every service VIP:port on this node so unprivileged local clients can connect to
    /// services directly. At most one node per host can do this.
    #[serde(default)]
    pub service_listeners: bool,
    /// In-pod mode: workload (`namespace/name`, one of `workloads`) → its network namespace
    /// (`/var/run/netns/NAME` or `/proc/PID/ns/net`). The ztunnel opens that workload's
    /// listeners (HBONE 15008, captured outbound 15001, plaintext 15006) inside it and makes the
    /// workload's connections from it, as Istio's ztunnel does with the CNI's namespaces.
    #[serde(default)]
    pub netns: BTreeMap<String, String>,
}

/// `dataplane.mesh.dev/v1alpha1` `MeshConfig`: mesh-wide settings (Istio keeps these in its
/// `MeshConfig`, a ConfigMap rather than a resource kind).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// The SPIFFE trust domain (default `cluster.local`).
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// The root namespace: policies here without a selector apply mesh-wide (default
    /// `istio-system`, as Istio).
    #[serde(default)]
    pub root_namespace: Option<String>,
    /// The cluster name reported in metrics (default `Kubernetes`, as Istio).
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// How request paths are normalized before L7 policy and routing (Istio's
    /// `meshConfig.pathNormalization`; default `DECODE_AND_MERGE_SLASHES`).
    #[serde(default)]
    pub path_normalization: Option<PathNormalizationSpec>,
    /// External authorizers `CUSTOM` policies name (Istio's `meshConfig.extensionProviders`;
    /// `envoyExtAuthzGrpc` only, see [`super::ext_authz`]).
    #[serde(default)]
    pub extension_providers: Vec<super::ext_authz::ExtensionProviderSpec>,
    /// The retry policy of routes without `retries` (Istio's
    /// `meshConfig.defaultHttpRetryPolicy`; default: Istio's 2 retries).
    #[serde(default)]
    pub default_http_retry_policy: Option<mesh_l7::resilience::retry::RetrySpec>,
}

/// `pathNormalization`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathNormalizationSpec {
    /// `NONE`, `BASE`, `MERGE_SLASHES` or `DECODE_AND_MERGE_SLASHES`.
    pub normalization: String,
}

/// apiVersions accepted for Gateway API resources.
pub const GATEWAY_VERSIONS: &[&str] = &[
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1beta1",
];

/// The `gatewayClassName` of a waypoint (Istio).
pub const WAYPOINT_CLASS: &str = "istio-waypoint";

/// Label attaching a namespace, service or workload to a waypoint (Istio).
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Label naming the namespace of the waypoint in `istio.io/use-waypoint` (Istio).
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// Label of a waypoint `Gateway` saying what traffic it serves (Istio).
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";

/// `gateway.networking.k8s.io/v1` `Gateway` spec (a waypoint: `gatewayClassName:
/// istio-waypoint`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Must be `istio-waypoint`.
    pub gateway_class_name: String,
    /// Listeners; a waypoint has one HBONE listener (Istio: `{name: mesh, port: 15008,
    /// protocol: HBONE}`).
    #[serde(default)]
    pub listeners: Vec<GatewayListener>,
    /// The waypoint's address (in Kubernetes, assigned; here, where it runs).
    #[serde(default)]
    pub addresses: Vec<GatewayAddress>,
}

/// `listeners[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayListener {
    /// Name.
    pub name: String,
    /// Port.
    pub port: u32,
    /// Protocol: `HBONE`.
    pub protocol: String,
}

/// `addresses[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayAddress {
    /// `IPAddress` (the default).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The IP.
    pub value: String,
}

/// A Kubernetes `Namespace` (`v1`): only its labels matter here (`istio.io/use-waypoint`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceDoc {
    /// `v1`.
    pub api_version: String,
    /// `Namespace`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
}

/// apiVersions accepted for security resources.
pub const SECURITY_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Istio and Gateway API kinds that a later release will accept; rejected by name until then.
pub const NOT_YET_SUPPORTED_KINDS: &[&str] =
    &["Sidecar", "EnvoyFilter", "Telemetry", "WorkloadGroup"];
