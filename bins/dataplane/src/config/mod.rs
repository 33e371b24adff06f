//! The local mesh config: a multi-document YAML file of Istio resources (plus two small kinds of
//! our own), validated whole into an immutable [`MeshState`].
//!
//! Every problem found is reported, each naming the file, the document, the field and the
//! reason: `mesh.yaml: document 3 (WorkloadEntry demo/echo): spec.address: "1.2.3" is not an IP
//! address`. Nothing is applied unless the whole file is valid.

mod attach;
mod fail_closed;
pub mod model;
mod state;
pub mod xds;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_identity::{SpiffeId, TrustDomain};
use serde::de::DeserializeOwned;

pub use self::model::*;
pub use self::state::{
    Endpoint, MeshState, Node, Service, ServicePort, Waypoint, WaypointFor, Workload,
};

/// Default HBONE port.
pub const DEFAULT_HBONE_PORT: u16 = 15008;
/// Default root namespace (Istio's).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Cluster name reported in metrics when `MeshConfig.clusterId` is not set (Istio's default).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Which document, e.g. `document 2 (WorkloadEntry demo/echo)`.
    pub location: String,
    /// The field path, e.g. `spec.ports[0].number`.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

/// A rejected config file: every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The problems.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.file.display(), issue.location)?;
            if !issue.field.is_empty() {
                write!(f, ": {}", issue.field)?;
            }
            write!(f, ": {}", issue.reason)?;
        }
        Ok(())
    }
}

/// Reads and validates a mesh config file.
pub fn load_file(path: &Path) -> Result<MeshState, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        issues: vec![ConfigIssue {
            location: "file".into(),
            field: String::new(),
            reason: format!("cannot read: {e}"),
        }],
    })?;
    parse(path, &text)
}

/// Validates mesh config text; `file` is used in error messages.
pub fn parse(file: &Path, text: &str) -> Result<MeshState, ConfigError> {
    let mut v = Validator::default();
    // YAML 1.2 booleans only: `n`, `no`, `on` stay strings (a Node named `n` is not `false`).
    // Budgets sized for meshes of tens of thousands of resources (the defaults stop at 1024
    // documents). Alias expansion is bounded by the text's size, not by the defaults (1M
    // events): with those, a 300-byte alias bomb cost 0.35–0.7 s and 200 MB (found by
    // `tests/fuzz_config.rs`); this way parsing stays linear in the input.
    let alias_work = text.len() + 16 * 1024;
    let options = serde_saphyr::options! {
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_documents: 200_000,
            max_nodes: 4_000_000,
            max_events: 16_000_000,
            max_recorded_anchor_events: alias_work,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: alias_work,
        },
    };
    let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple_with_options(text, options)
    {
        Ok(d) => d,
        Err(e) => {
            return Err(ConfigError {
                file: file.to_owned(),
                issues: vec![ConfigIssue {
                    location: "YAML".into(),
                    field: String::new(),
                    reason: e.to_string(),
                }],
            });
        }
    };
    let mut raw = Raw::default();
    for (i, doc) in docs.into_iter().enumerate() {
        raw.add(&mut v, i + 1, doc);
    }
    let state = compile(&mut v, raw);
    if v.issues.is_empty() {
        Ok(state)
    } else {
        Err(ConfigError {
            file: file.to_owned(),
            issues: v.issues,
        })
    }
}

#[derive(Default)]
struct Validator {
    issues: Vec<ConfigIssue>,
}

impl Validator {
    fn err(&mut self, location: &str, field: impl Into<String>, reason: impl Into<String>) {
        self.issues.push(ConfigIssue {
            location: location.to_owned(),
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// The label (Istio's pod label) that gives a workload its own sidecar.
pub const SIDECAR_LABEL: &str = "sidecar.istio.io/inject";

/// The node name of a sidecar workload's proxy: `sidecar/<namespace>/<name>`.
pub fn sidecar_node_name(namespace: &str, name: &str) -> String {
    format!("sidecar/{namespace}/{name}")
}

struct Named<S> {
    location: String,
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    spec: S,
}

#[derive(Default)]
struct Raw {
    workloads: Vec<Named<WorkloadEntrySpec>>,
    services: Vec<Named<ServiceEntrySpec>>,
    nodes: Vec<Named<NodeSpec>>,
    mesh: Option<Named<MeshConfigSpec>>,
    policies: Vec<Named<mesh_authz::istio::AuthorizationPolicySpec>>,
    peer_authns: Vec<Named<mesh_authz::peer::PeerAuthenticationSpec>>,
    request_authns: Vec<Named<mesh_authz::jwt::RequestAuthenticationSpec>>,
    gateways: Vec<Named<GatewaySpec>>,
    virtual_services: Vec<Named<mesh_l7::istio::VirtualServiceSpec>>,
    destination_rules: Vec<Named<mesh_l7::istio::DestinationRuleSpec>>,
    http_routes: Vec<Named<mesh_l7::gateway::HttpRouteSpec>>,
    /// Namespace name → labels (`v1` `Namespace` documents).
    namespaces: Vec<(String, String, BTreeMap<String, String>)>,
}

// Istio fields of the supported kinds that this mesh does not implement yet; named in errors.
const UNSUPPORTED_FIELDS: &[(&str, &str)] = &[
    ("weight", "WorkloadEntry weights are not supported yet"),
    ("locality", "locality is not supported yet"),
    ("network", "multiple networks are not supported yet"),
    (
        "endpoints",
        "inline endpoints are not supported; declare WorkloadEntry resources and a workloadSelector",
    ),
    (
        "exportTo",
        "exportTo is not supported; every service is visible mesh-wide",
    ),
    ("subjectAltNames", "subjectAltNames is not supported yet"),
];

fn explain_serde(e: &str) -> String {
    for (field, why) in UNSUPPORTED_FIELDS {
        if e.contains(&format!("unknown field `{field}`")) {
            return format!("unsupported Istio field `{field}`: {why}");
        }
    }
    e.to_owned()
}

fn typed<S: DeserializeOwned>(
    v: &mut Validator,
    location: &str,
    doc: serde_json::Value,
) -> Option<Doc<S>> {
    typed_as(v, location, doc)
}

fn typed_as<T: DeserializeOwned>(
    v: &mut Validator,
    location: &str,
    doc: serde_json::Value,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(doc) {
        Ok(d) => Some(d),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            v.err(location, field, explain_serde(&e.into_inner().to_string()));
            None
        }
    }
}

fn str_field<'a>(doc: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = doc;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

impl Raw {
    fn add(&mut self, v: &mut Validator, index: usize, doc: serde_json::Value) {
        if doc.is_null() {
            return;
        }
        let kind = str_field(&doc, &["kind"]).unwrap_or("").to_owned();
        let api = str_field(&doc, &["apiVersion"]).unwrap_or("").to_owned();
        let ns = str_field(&doc, &["metadata", "namespace"]).unwrap_or("default");
        let name = str_field(&doc, &["metadata", "name"]).unwrap_or("?");
        let location = format!("document {index} ({kind} {ns}/{name})");
        if !doc.is_object() {
            v.err(
                &location,
                "",
                "a document must be a mapping with apiVersion, kind, metadata, spec",
            );
            return;
        }
        if kind.is_empty() {
            v.err(&location, "kind", "missing");
            return;
        }
        let want_api: &[&str] = match kind.as_str() {
            "WorkloadEntry" | "ServiceEntry" | "VirtualService" | "DestinationRule" => {
                NETWORKING_VERSIONS
            }
            "Node" | "MeshConfig" => &[LOCAL_API_VERSION],
            "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication" => {
                SECURITY_VERSIONS
            }
            "Gateway" | "HTTPRoute" => GATEWAY_VERSIONS,
            "Namespace" => &["v1"],
            k if NOT_YET_SUPPORTED_KINDS.contains(&k) => {
                v.err(
                    &location,
                    "kind",
                    format!("{k} is not supported yet by this data plane"),
                );
                return;
            }
            k => {
                v.err(
                    &location,
                    "kind",
                    format!(
                        "unknown kind {k:?} (expected WorkloadEntry, ServiceEntry, VirtualService, DestinationRule, HTTPRoute, AuthorizationPolicy, PeerAuthentication, RequestAuthentication, Gateway, Namespace, or {LOCAL_GROUP} Node / MeshConfig)"
                    ),
                );
                return;
            }
        };
        if !want_api.contains(&api.as_str()) {
            v.err(
                &location,
                "apiVersion",
                format!("{api:?} is not valid for {kind} (expected one of {want_api:?})"),
            );
            return;
        }
        match kind.as_str() {
            "WorkloadEntry" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.workloads.push(named(v, &location, d));
                }
            }
            "ServiceEntry" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.services.push(named(v, &location, d));
                }
            }
            "AuthorizationPolicy" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.policies.push(named(v, &location, d));
                }
            }
            "PeerAuthentication" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.peer_authns.push(named(v, &location, d));
                }
            }
            "RequestAuthentication" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.request_authns.push(named(v, &location, d));
                }
            }
            "Gateway" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.gateways.push(named(v, &location, d));
                }
            }
            "VirtualService" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.virtual_services.push(named(v, &location, d));
                }
            }
            "DestinationRule" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.destination_rules.push(named(v, &location, d));
                }
            }
            "HTTPRoute" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.http_routes.push(named(v, &location, d));
                }
            }
            "Namespace" => {
                if let Some(d) = typed_as::<NamespaceDoc>(v, &location, doc) {
                    if !is_dns_label(&d.metadata.name) {
                        v.err(
                            &location,
                            "metadata.name",
                            format!("{:?} is not a valid namespace", d.metadata.name),
                        );
                    }
                    if d.metadata.namespace.is_some() {
                        v.err(
                            &location,
                            "metadata.namespace",
                            "a Namespace has no namespace",
                        );
                    }
                    self.namespaces
                        .push((location.clone(), d.metadata.name, d.metadata.labels));
                }
            }
            "Node" => {
                if let Some(d) = typed(v, &location, doc) {
                    self.nodes.push(named(v, &location, d));
                }
            }
            _ => {
                if let Some(d) = typed::<MeshConfigSpec>(v, &location, doc) {
                    if self.mesh.is_some() {
                        v.err(&location, "kind", "only one MeshConfig is allowed");
                    } else {
                        self.mesh = Some(named(v, &location, d));
                    }
                }
            }
        }
    }
}

fn named<S>(v: &mut Validator, location: &str, d: Doc<S>) -> Named<S> {
    let namespace = d.metadata.namespace.unwrap_or_else(|| "default".into());
    if !is_dns_subdomain(&d.metadata.name) {
        v.err(
            location,
            "metadata.name",
            format!(
                "{:?} is not a valid name (lowercase letters, digits, '-', '.')",
                d.metadata.name
            ),
        );
    }
    if !is_dns_label(&namespace) {
        v.err(
            location,
            "metadata.namespace",
            format!("{namespace:?} is not a valid namespace (lowercase letters, digits, '-', at most 63)"),
        );
    }
    Named {
        location: location.to_owned(),
        name: d.metadata.name,
        namespace,
        labels: d.metadata.labels,
        spec: d.spec,
    }
}

/// RFC 1123 label: what Kubernetes requires of a namespace.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what Kubernetes requires of most names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn parse_port(v: &mut Validator, location: &str, field: &str, n: u32) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            v.err(location, field, format!("{n} is not a port (1-65535)"));
            None
        }
    }
}

fn parse_ip(v: &mut Validator, location: &str, field: &str, s: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            v.err(location, field, format!("{s:?} is the unspecified address"));
            None
        }
        Ok(ip) => Some(ip),
        Err(_) => {
            v.err(
                location,
                field,
                format!("{s:?} is not an IP address (host names are not supported here)"),
            );
            None
        }
    }
}

const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TLS", "TCP", "MONGO", "MYSQL", "REDIS",
];

fn compile(v: &mut Validator, raw: Raw) -> MeshState {
    let trust_domain = match raw.mesh.as_ref().and_then(|m| m.spec.trust_domain.clone()) {
        None => default_trust_domain(),
        Some(td) => match td.parse::<TrustDomain>() {
            Ok(td) => td,
            Err(e) => {
                let loc = raw
                    .mesh
                    .as_ref()
                    .map(|m| m.location.as_str())
                    .unwrap_or("MeshConfig");
                v.err(loc, "spec.trustDomain", format!("{td:?}: {e}"));
                default_trust_domain()
            }
        },
    };

    let cluster_id = raw
        .mesh
        .as_ref()
        .and_then(|m| m.spec.cluster_id.clone())
        .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_owned());

    // Nodes first: a workload's HBONE address depends on its node.
    let mut node_of: HashMap<(String, String), (String, u16)> = HashMap::new();
    let mut netns_of: HashMap<(String, String), std::path::PathBuf> = HashMap::new();
    let mut node_names = HashSet::new();
    let mut node_addrs: HashMap<IpAddr, String> = HashMap::new();
    let mut node_specs = Vec::new();
    let wl_keys: HashSet<(String, String)> = raw
        .workloads
        .iter()
        .map(|w| (w.namespace.clone(), w.name.clone()))
        .collect();
    for n in &raw.nodes {
        if !node_names.insert(n.name.clone()) {
            v.err(
                &n.location,
                "metadata.name",
                format!("duplicate Node {:?}", n.name),
            );
        }
        let addr = parse_ip(v, &n.location, "spec.address", &n.spec.address);
        if let Some(a) = addr
            && let Some(other) = node_addrs.insert(a, n.name.clone())
        {
            v.err(
                &n.location,
                "spec.address",
                format!("{a} is also the address of Node {other:?}"),
            );
        }
        let hbone_port = match n.spec.hbone_port {
            None => Some(DEFAULT_HBONE_PORT),
            Some(p) => parse_port(v, &n.location, "spec.hbonePort", p),
        };
        for (i, w) in n.spec.workloads.iter().enumerate() {
            let (ns, name) = w.split_once('/').unwrap_or(("default", w.as_str()));
            let key = (ns.to_owned(), name.to_owned());
            let field = format!("spec.workloads[{i}]");
            if !wl_keys.contains(&key) {
                v.err(&n.location, field, format!("no WorkloadEntry {ns}/{name}"));
            } else if let Some((other, _)) = node_of.get(&key) {
                v.err(
                    &n.location,
                    field,
                    format!("{ns}/{name} is already on Node {other:?}"),
                );
            } else {
                node_of.insert(
                    key,
                    (n.name.clone(), hbone_port.unwrap_or(DEFAULT_HBONE_PORT)),
                );
            }
        }
        for (w, path) in &n.spec.netns {
            let (ns, name) = w.split_once('/').unwrap_or(("default", w.as_str()));
            let key = (ns.to_owned(), name.to_owned());
            let field = format!("spec.netns.{w}");
            if node_of.get(&key).map(|(node, _)| node.as_str()) != Some(n.name.as_str()) {
                v.err(
                    &n.location,
                    field,
                    format!("{ns}/{name} is not one of this node's workloads"),
                );
            } else if !path.starts_with('/') {
                v.err(
                    &n.location,
                    field,
                    format!("{path:?} is not an absolute path to a network namespace"),
                );
            } else {
                netns_of.insert(key, std::path::PathBuf::from(path));
            }
        }
        node_specs.push((n.name.clone(), addr, hbone_port, n.spec.service_listeners));
    }
    // A workload with a sidecar (Istio's `sidecar.istio.io/inject: "true"` label) is its own
    // node: its sidecar serves only it, at its address, with HBONE on 15008 as a ztunnel would,
    // so peers reach sidecar and ambient workloads alike.
    for w in &raw.workloads {
        if w.spec.labels.get(SIDECAR_LABEL).map(String::as_str) != Some("true") {
            continue;
        }
        let key = (w.namespace.clone(), w.name.clone());
        if let Some((other, _)) = node_of.get(&key) {
            v.err(
                &w.location,
                format!("metadata.labels.{SIDECAR_LABEL}"),
                format!(
                    "{}/{} has a sidecar and cannot also be on Node {other:?}",
                    w.namespace, w.name
                ),
            );
            continue;
        }
        let name = sidecar_node_name(&w.namespace, &w.name);
        node_of.insert(key, (name.clone(), DEFAULT_HBONE_PORT));
        let addr = w.spec.address.parse::<IpAddr>().ok();
        node_specs.push((name, addr, Some(DEFAULT_HBONE_PORT), false));
    }

    let waypoints = compile_waypoints(v, &raw, &trust_domain);
    let mut ns_labels: HashMap<&str, &BTreeMap<String, String>> = HashMap::new();
    for (loc, name, labels) in &raw.namespaces {
        if ns_labels.insert(name.as_str(), labels).is_some() {
            v.err(
                loc,
                "metadata.name",
                format!("duplicate Namespace {name:?}"),
            );
        }
    }
    let attach = Attach {
        waypoints: &waypoints,
        ns_labels: &ns_labels,
    };

    let mut workloads = Vec::new();
    let mut by_ip: state::FastMap<IpAddr, Arc<Workload>> = state::FastMap::default();
    let mut seen = HashSet::new();
    for w in &raw.workloads {
        let loc = &w.location;
        if !seen.insert((w.namespace.clone(), w.name.clone())) {
            v.err(
                loc,
                "metadata.name",
                format!("duplicate WorkloadEntry {}/{}", w.namespace, w.name),
            );
        }
        let Some(address) = parse_ip(v, loc, "spec.address", &w.spec.address) else {
            continue;
        };
        let sa = w
            .spec
            .service_account
            .clone()
            .unwrap_or_else(|| "default".into());
        let identity = match SpiffeId::new(&trust_domain, &w.namespace, &sa) {
            Ok(id) => id,
            Err(e) => {
                v.err(
                    loc,
                    "spec.serviceAccount",
                    format!("{sa:?} does not form a valid SPIFFE id: {e}"),
                );
                continue;
            }
        };
        let mut ports = BTreeMap::new();
        for (name, p) in &w.spec.ports {
            if let Some(p) = parse_port(v, loc, &format!("spec.ports.{name}"), *p) {
                ports.insert(name.clone(), p);
            }
        }
        let node = node_of.get(&(w.namespace.clone(), w.name.clone()));
        let wl = Arc::new(Workload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            address,
            labels: w.spec.labels.clone(),
            service_account: sa,
            ports,
            node: node.map(|(n, _)| n.clone()),
            hbone_addr: node.map(|(_, p)| SocketAddr::new(address, *p)),
            netns: netns_of
                .get(&(w.namespace.clone(), w.name.clone()))
                .cloned(),
            telemetry: state::peer_labels(
                &w.name,
                &w.namespace,
                &identity,
                &w.spec.labels,
                &cluster_id,
            ),
            identity,
            waypoint: attach.resolve(
                v,
                loc,
                &w.namespace,
                &w.labels,
                &w.spec.labels,
                WaypointFor::Workload,
            ),
        });
        if let Some(other) = by_ip.get(&address) {
            v.err(
                loc,
                "spec.address",
                format!(
                    "{address} is also the address of WorkloadEntry {}",
                    other.key()
                ),
            );
            continue;
        }
        if let Some(n) = node_addrs.get(&address) {
            v.err(
                loc,
                "spec.address",
                format!("{address} is the address of Node {n:?}"),
            );
        }
        by_ip.insert(address, wl.clone());
        workloads.push(wl);
    }

    let mut service_ports = Vec::new();
    let mut by_vip: state::FastMap<SocketAddr, Arc<ServicePort>> = state::FastMap::default();
    let mut by_host: HashMap<String, HashMap<u16, Arc<ServicePort>>> = HashMap::new();
    let mut host_owner: HashMap<String, String> = HashMap::new();
    let mut seen = HashSet::new();
    // Istio: a ServiceEntry's workloadSelector selects WorkloadEntries of its own namespace.
    let mut workloads_by_ns: HashMap<&str, Vec<&Arc<Workload>>> = HashMap::new();
    for w in &workloads {
        workloads_by_ns
            .entry(w.namespace.as_str())
            .or_default()
            .push(w);
    }
    for s in &raw.services {
        let loc = &s.location;
        let key = format!("{}/{}", s.namespace, s.name);
        if !seen.insert(key.clone()) {
            v.err(
                loc,
                "metadata.name",
                format!("duplicate ServiceEntry {key}"),
            );
        }
        match s.spec.location.as_deref() {
            None | Some("MESH_INTERNAL") => {}
            Some(other) => v.err(
                loc,
                "spec.location",
                format!("{other:?} is not supported (only MESH_INTERNAL)"),
            ),
        }
        match s.spec.resolution.as_deref() {
            None | Some("STATIC") => {}
            Some(other) => v.err(
                loc,
                "spec.resolution",
                format!("{other:?} is not supported (only STATIC)"),
            ),
        }
        if s.spec.hosts.is_empty() {
            v.err(loc, "spec.hosts", "at least one host is required");
        }
        let mut hosts = Vec::new();
        for (i, h) in s.spec.hosts.iter().enumerate() {
            if !is_hostname(h) {
                v.err(
                    loc,
                    format!("spec.hosts[{i}]"),
                    format!("{h:?} is not a host name (wildcards are not supported)"),
                );
                continue;
            }
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            if let Some(owner) = host_owner.insert(h.clone(), key.clone())
                && owner != key
            {
                v.err(
                    loc,
                    format!("spec.hosts[{i}]"),
                    format!("{h} is also a host of ServiceEntry {owner}"),
                );
            }
            hosts.push(h);
        }
        let mut vips = Vec::new();
        for (i, a) in s.spec.addresses.iter().enumerate() {
            if let Some(ip) = parse_ip(v, loc, &format!("spec.addresses[{i}]"), a) {
                vips.push(ip);
            }
        }
        if s.spec.ports.is_empty() {
            v.err(loc, "spec.ports", "at least one port is required");
        }
        let service = Arc::new(Service {
            target_key: format!("Service/{}/{}", s.namespace, s.name),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            telemetry: mesh_telemetry::metrics::ServiceLabels {
                host: hosts.first().map_or(s.name.as_str(), String::as_str).into(),
                name: s.name.as_str().into(),
                namespace: s.namespace.as_str().into(),
            },
            hosts: hosts.clone(),
            vips: vips.clone(),
            waypoint: attach.resolve(
                v,
                loc,
                &s.namespace,
                &s.labels,
                &BTreeMap::new(),
                WaypointFor::Service,
            ),
        });
        let selected: Vec<&Arc<Workload>> = match &s.spec.workload_selector {
            Some(sel) => workloads_by_ns
                .get(s.namespace.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|w| {
                    sel.labels
                        .iter()
                        .all(|(k, val)| w.labels.get(k) == Some(val))
                })
                .collect(),
            None => Vec::new(),
        };
        let mut numbers = HashSet::new();
        for (i, p) in s.spec.ports.iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            let Some(number) = parse_port(v, loc, &format!("{field}.number"), p.number) else {
                continue;
            };
            if !numbers.insert(number) {
                v.err(
                    loc,
                    format!("{field}.number"),
                    format!("port {number} is listed twice"),
                );
            }
            if p.name.is_empty() {
                v.err(loc, format!("{field}.name"), "a port name is required");
            }
            // Istio's protocol selection: the declared protocol, else the port name's prefix
            // (`http-web`, `grpc`), else detected from the traffic (`AUTO`, sniffed at the
            // waypoint).
            let by_name = p
                .name
                .split('-')
                .next()
                .map(str::to_ascii_uppercase)
                .filter(|n| PROTOCOLS.contains(&n.as_str()));
            let protocol = match &p.protocol {
                Some(x) => x.to_ascii_uppercase(),
                None => by_name.unwrap_or_else(|| "AUTO".into()),
            };
            if p.protocol.is_some() && !PROTOCOLS.contains(&protocol.as_str()) {
                v.err(
                    loc,
                    format!("{field}.protocol"),
                    format!("{protocol:?} is not a known protocol ({PROTOCOLS:?})"),
                );
            }
            let target = match p.target_port {
                Some(t) => parse_port(v, loc, &format!("{field}.targetPort"), t).unwrap_or(number),
                None => number,
            };
            // Istio: a WorkloadEntry port named like the service port wins over targetPort.
            let endpoints = selected
                .iter()
                .map(|w| Endpoint {
                    workload: (*w).clone(),
                    port: w.ports.get(&p.name).copied().unwrap_or(target),
                })
                .collect();
            let sp = Arc::new(ServicePort::new(
                service.clone(),
                number,
                p.name.clone(),
                protocol,
                endpoints,
            ));
            for vip in &vips {
                let addr = SocketAddr::new(*vip, number);
                if by_vip.insert(addr, sp.clone()).is_some() {
                    v.err(
                        loc,
                        "spec.addresses",
                        format!("{addr} is used by another ServiceEntry"),
                    );
                }
                if by_ip.contains_key(vip) {
                    v.err(
                        loc,
                        "spec.addresses",
                        format!("{vip} is also a workload address"),
                    );
                }
            }
            for h in &hosts {
                by_host
                    .entry(h.clone())
                    .or_default()
                    .insert(number, sp.clone());
            }
            service_ports.push(sp);
        }
    }

    let mut nodes = HashMap::new();
    for (name, addr, hbone_port, service_listeners) in node_specs {
        let (Some(address), Some(hbone_port)) = (addr, hbone_port) else {
            continue;
        };
        let local: Vec<Arc<Workload>> = workloads
            .iter()
            .filter(|w| w.node.as_deref() == Some(name.as_str()))
            .cloned()
            .collect();
        nodes.insert(
            name.clone(),
            Arc::new(Node {
                name,
                address,
                hbone_port,
                service_listeners,
                workloads: local,
            }),
        );
    }

    let root_namespace = raw
        .mesh
        .as_ref()
        .and_then(|m| m.spec.root_namespace.clone())
        .unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.to_owned());
    let policies = validate_policies(v, "AuthorizationPolicy", &raw.policies, |p| {
        p.spec.to_policy(&p.namespace, &p.name, &root_namespace)
    });
    let keys: Vec<String> = workloads.iter().map(|w| w.key()).collect();
    let authz = mesh_authz::PolicyIndex::build(
        &policies,
        workload_refs(&workloads, &keys),
        &root_namespace,
    );

    let peer_authn = validate_policies(v, "PeerAuthentication", &raw.peer_authns, |p| {
        p.spec.to_policy(&p.namespace, &p.name, &root_namespace)
    });
    let (mtls, conflicts) = mesh_authz::peer::PeerAuthnIndex::build(
        &peer_authn,
        workload_refs(&workloads, &keys),
        &root_namespace,
    );
    for c in conflicts {
        // Reported at the later policy of the conflict.
        let last = c.policies.last().cloned().unwrap_or_default();
        let location = raw
            .peer_authns
            .iter()
            .find(|p| format!("{}/{}", p.namespace, p.name) == last)
            .map_or_else(|| "PeerAuthentication".to_owned(), |p| p.location.clone());
        v.err(
            &location,
            "spec",
            format!("{}: {}", c.reason, c.policies.join(", ")),
        );
    }

    let waypoints_of = state::waypoints_of(&workloads, &service_ports);

    let path_normalization = match raw
        .mesh
        .as_ref()
        .and_then(|m| m.spec.path_normalization.as_ref())
    {
        None => mesh_authz::http::PathNormalization::default(),
        Some(p) => match p.normalization.parse() {
            Ok(n) => n,
            Err(e) => {
                let loc = raw
                    .mesh
                    .as_ref()
                    .map_or("MeshConfig", |m| m.location.as_str());
                v.err(loc, "spec.pathNormalization.normalization", e);
                mesh_authz::http::PathNormalization::default()
            }
        },
    };
    let mut waypoint_policies: HashMap<String, Vec<Arc<mesh_authz::Policy>>> = HashMap::new();
    for p in &policies {
        if let mesh_authz::Scope::TargetRefs(targets) = &p.scope {
            let p = Arc::new(p.clone());
            for t in targets {
                waypoint_policies
                    .entry(format!("{}/{}/{}", t.kind, p.namespace, t.name))
                    .or_default()
                    .push(p.clone());
            }
        }
    }
    attach::class_to_every_waypoint(&mut waypoint_policies, &root_namespace, &waypoints);
    let request_authns = validate_policies(v, "RequestAuthentication", &raw.request_authns, |p| {
        p.spec
            .to_authentication(&p.namespace, &p.name, &root_namespace)
    });
    let mut authn_rules: HashMap<String, Vec<Arc<mesh_authz::jwt::JwtRule>>> = HashMap::new();
    for ra in &request_authns {
        if let mesh_authz::Scope::TargetRefs(targets) = &ra.scope {
            for t in targets {
                authn_rules
                    .entry(format!("{}/{}/{}", t.kind, ra.namespace, t.name))
                    .or_default()
                    .extend(ra.rules.iter().cloned());
            }
        }
    }
    attach::class_to_every_waypoint(&mut authn_rules, &root_namespace, &waypoints);
    // Sidecars: the selector / namespace / mesh RequestAuthentications of each of their
    // workloads (ztunnels do not read JWTs).
    let mut sidecar_authn = HashMap::new();
    for w in workloads
        .iter()
        .filter(|w| w.node.as_deref().is_some_and(|n| n.starts_with("sidecar/")))
    {
        let rules: Vec<Arc<mesh_authz::jwt::JwtRule>> = request_authns
            .iter()
            .filter(|ra| {
                ra.scope
                    .applies_to(&ra.namespace, &root_namespace, &w.namespace, &w.labels)
            })
            .flat_map(|ra| ra.rules.iter().cloned())
            .collect();
        if !rules.is_empty() {
            sidecar_authn.insert(
                w.key(),
                Arc::new(mesh_authz::jwt::Authenticator::new(rules)),
            );
        }
    }
    let mut port_protocols = HashMap::new();
    for sp in &service_ports {
        for ep in &sp.endpoints {
            port_protocols
                .entry((ep.workload.key(), ep.port))
                .or_insert_with(|| sp.protocol.clone());
        }
    }
    let waypoint_authn = authn_rules
        .into_iter()
        .map(|(k, rules)| (k, Arc::new(mesh_authz::jwt::Authenticator::new(rules))))
        .collect();
    let destination_policies = compile_destination_rules(v, &raw, &by_host);
    let routes = compile_routes(v, &raw, &by_host, &destination_policies);
    let endpoint_sets = state::endpoint_sets(&service_ports, &destination_policies);

    MeshState {
        trust_domain,
        root_namespace,
        cluster_id,
        path_normalization,
        waypoint_policies,
        waypoint_authn,
        request_authns,
        sidecar_authn,
        port_protocols,
        routes,
        endpoint_sets,
        waypoints,
        waypoints_of,
        policies: Arc::new(policies),
        authz,
        failed_policies: BTreeMap::new(),
        peer_authn,
        mtls,
        nodes,
        workloads,
        service_ports,
        by_ip,
        by_vip,
        by_host,
    }
}

/// `VirtualService` route tables by the host they apply to. Every destination must be a
/// service host; subsets need `DestinationRule`, which is not supported yet.
fn compile_routes(
    v: &mut Validator,
    raw: &Raw,
    by_host: &HashMap<String, HashMap<u16, Arc<ServicePort>>>,
    policies: &HashMap<String, mesh_l7::DestinationPolicy>,
) -> HashMap<String, Arc<mesh_l7::RouteTable>> {
    let mut out: HashMap<String, Arc<mesh_l7::RouteTable>> = HashMap::new();
    let mut owner: HashMap<String, String> = HashMap::new();
    for vs in &raw.virtual_services {
        let loc = &vs.location;
        let table = match mesh_l7::RouteTable::compile(&vs.spec) {
            Ok(t) => t,
            Err(errs) => {
                for e in errs {
                    v.err(loc, e.field, e.reason);
                }
                continue;
            }
        };
        for (i, route) in table.routes.iter().enumerate() {
            if let mesh_l7::Action::Forward { destinations, .. } = &route.action {
                for (j, d) in destinations.iter().enumerate() {
                    let f = format!("spec.http[{i}].route[{j}].destination");
                    if !by_host.contains_key(&d.host) {
                        v.err(
                            loc,
                            format!("{f}.host"),
                            format!("no ServiceEntry has host {:?}", d.host),
                        );
                    }
                    if let Some(sub) = &d.subset {
                        let known = policies
                            .get(&d.host)
                            .is_some_and(|p| p.subsets.iter().any(|s| &s.name == sub));
                        if !known {
                            v.err(
                                loc,
                                format!("{f}.subset"),
                                format!(
                                    "no DestinationRule for {:?} defines subset {sub:?}",
                                    d.host
                                ),
                            );
                        }
                    }
                }
            }
        }
        let key = format!("{}/{}", vs.namespace, vs.name);
        let table = Arc::new(table);
        for (i, h) in table.hosts.iter().enumerate() {
            if let Some(other) = owner.insert(h.clone(), format!("VirtualService {key}")) {
                v.err(
                    loc,
                    format!("spec.hosts[{i}]"),
                    format!("{h:?} is also routed by {other}"),
                );
            }
            out.insert(h.clone(), table.clone());
        }
    }
    // Gateway API HTTPRoutes attached to a Service (GAMMA): parent and backends are
    // ServiceEntries of the route's namespace, by name.
    let host_of = |ns: &str, name: &str| {
        by_host.values().flat_map(|m| m.values()).find_map(|sp| {
            (sp.service.namespace == ns && sp.service.name == name)
                .then(|| sp.service.hosts.first().cloned())
                .flatten()
        })
    };
    for r in &raw.http_routes {
        let loc = &r.location;
        if r.spec.parent_refs.is_empty() {
            v.err(
                loc,
                "spec.parentRefs",
                "a mesh route attaches to at least one Service",
            );
        }
        for (i, p) in r.spec.parent_refs.iter().enumerate() {
            let f = format!("spec.parentRefs[{i}]");
            let core = matches!(p.group.as_deref(), None | Some("") | Some("core"));
            if !core || p.kind.as_deref().is_some_and(|k| k != "Service") {
                v.err(
                    loc,
                    format!("{f}.kind"),
                    "only Service parents (mesh routes) are supported",
                );
                continue;
            }
            for (field, set) in [
                ("namespace", p.namespace.is_some()),
                ("port", p.port.is_some()),
                ("sectionName", p.section_name.is_some()),
            ] {
                if set {
                    v.err(
                        loc,
                        format!("{f}.{field}"),
                        "not supported yet by this data plane",
                    );
                }
            }
            let Some(host) = host_of(&r.namespace, &p.name) else {
                v.err(
                    loc,
                    format!("{f}.name"),
                    format!(
                        "no ServiceEntry {:?} in namespace {:?}",
                        p.name, r.namespace
                    ),
                );
                continue;
            };
            match mesh_l7::RouteTable::from_http_route(&r.spec, &host, |n| host_of(&r.namespace, n))
            {
                Ok(t) => {
                    let key = format!("HTTPRoute {}/{}", r.namespace, r.name);
                    if let Some(other) = owner.insert(host.clone(), key) {
                        v.err(loc, f, format!("{host:?} is also routed by {other}"));
                    }
                    out.insert(host, Arc::new(t));
                }
                Err(errs) => {
                    for e in errs {
                        v.err(loc, e.field, e.reason);
                    }
                }
            }
        }
    }
    out
}

/// `DestinationRule`s by host (one per host; it must be a service host).
fn compile_destination_rules(
    v: &mut Validator,
    raw: &Raw,
    by_host: &HashMap<String, HashMap<u16, Arc<ServicePort>>>,
) -> HashMap<String, mesh_l7::DestinationPolicy> {
    let mut out = HashMap::new();
    for dr in &raw.destination_rules {
        let loc = &dr.location;
        match mesh_l7::DestinationPolicy::compile(&dr.spec) {
            Ok(p) => {
                if !by_host.contains_key(&p.host) {
                    v.err(
                        loc,
                        "spec.host",
                        format!("no ServiceEntry has host {:?}", p.host),
                    );
                } else if out.contains_key(&p.host) {
                    v.err(
                        loc,
                        "spec.host",
                        format!("another DestinationRule already applies to {:?}", p.host),
                    );
                } else {
                    out.insert(p.host.clone(), p);
                }
            }
            Err(errs) => {
                for e in errs {
                    v.err(loc, e.field, e.reason);
                }
            }
        }
    }
    out
}

/// Waypoint `Gateway`s (`gatewayClassName: istio-waypoint`), by `namespace/name`.
fn compile_waypoints(
    v: &mut Validator,
    raw: &Raw,
    trust_domain: &TrustDomain,
) -> HashMap<String, Arc<Waypoint>> {
    let mut out = HashMap::new();
    for g in &raw.gateways {
        let loc = &g.location;
        if g.spec.gateway_class_name != WAYPOINT_CLASS {
            v.err(
                loc,
                "spec.gatewayClassName",
                format!(
                    "{:?}: only waypoints ({WAYPOINT_CLASS:?}) are supported",
                    g.spec.gateway_class_name
                ),
            );
            continue;
        }
        let port = match g.spec.listeners.as_slice() {
            [] => Some(DEFAULT_HBONE_PORT),
            [l] if l.protocol == "HBONE" => parse_port(v, loc, "spec.listeners[0].port", l.port),
            [l] => {
                v.err(
                    loc,
                    "spec.listeners[0].protocol",
                    format!("{:?}: a waypoint listens with protocol HBONE", l.protocol),
                );
                None
            }
            _ => {
                v.err(
                    loc,
                    "spec.listeners",
                    "a waypoint has exactly one HBONE listener",
                );
                None
            }
        };
        let address = match g.spec.addresses.as_slice() {
            [a] if a.kind.as_deref().is_none_or(|k| k == "IPAddress") => {
                parse_ip(v, loc, "spec.addresses[0].value", &a.value)
            }
            [a] => {
                v.err(
                    loc,
                    "spec.addresses[0].type",
                    format!(
                        "{:?}: only IPAddress is supported",
                        a.kind.as_deref().unwrap_or("")
                    ),
                );
                None
            }
            _ => {
                v.err(
                    loc,
                    "spec.addresses",
                    "a waypoint needs exactly one address (where its proxy runs)",
                );
                None
            }
        };
        let waypoint_for = match g.labels.get(WAYPOINT_FOR).map(String::as_str) {
            None | Some("service") => WaypointFor::Service,
            Some("workload") => WaypointFor::Workload,
            Some("all") => WaypointFor::All,
            Some("none") => WaypointFor::None,
            Some(o) => {
                v.err(
                    loc,
                    format!("metadata.labels.{WAYPOINT_FOR}"),
                    format!("{o:?}: expected service, workload, all or none"),
                );
                WaypointFor::None
            }
        };
        // Istio runs a waypoint as the service account named after its Gateway.
        let identity = match SpiffeId::new(trust_domain, &g.namespace, &g.name) {
            Ok(id) => id,
            Err(e) => {
                v.err(
                    loc,
                    "metadata.name",
                    format!("does not form a SPIFFE id: {e}"),
                );
                continue;
            }
        };
        if let (Some(address), Some(port)) = (address, port) {
            let wp = Waypoint {
                name: g.name.clone(),
                namespace: g.namespace.clone(),
                address,
                port,
                identity,
                waypoint_for,
                target_key: format!("Gateway/{}/{}", g.namespace, g.name),
            };
            if out.insert(wp.key(), Arc::new(wp)).is_some() {
                v.err(
                    loc,
                    "metadata.name",
                    format!("duplicate Gateway {}/{}", g.namespace, g.name),
                );
            }
        }
    }
    out
}

/// Resolves `istio.io/use-waypoint` for a resource: its own label wins over its namespace's.
struct Attach<'a> {
    waypoints: &'a HashMap<String, Arc<Waypoint>>,
    ns_labels: &'a HashMap<&'a str, &'a BTreeMap<String, String>>,
}

impl Attach<'_> {
    fn resolve(
        &self,
        v: &mut Validator,
        loc: &str,
        namespace: &str,
        meta: &BTreeMap<String, String>,
        extra: &BTreeMap<String, String>,
        kind: WaypointFor,
    ) -> Option<Arc<Waypoint>> {
        let own = [meta, extra]
            .into_iter()
            .find(|l| l.contains_key(USE_WAYPOINT));
        let (labels, explicit, field) = match own {
            Some(l) => (l, true, "metadata.labels"),
            None => match self.ns_labels.get(namespace) {
                Some(l) if l.contains_key(USE_WAYPOINT) => (*l, false, "metadata.labels"),
                _ => return None,
            },
        };
        let name = labels.get(USE_WAYPOINT)?;
        if name == "none" {
            return None;
        }
        let ns = labels
            .get(USE_WAYPOINT_NAMESPACE)
            .map_or(namespace, String::as_str);
        let key = format!("{ns}/{name}");
        let Some(wp) = self.waypoints.get(&key) else {
            let whose = if explicit {
                ""
            } else {
                " (from its Namespace)"
            };
            v.err(
                loc,
                format!("{field}.{USE_WAYPOINT}"),
                format!("no waypoint Gateway {key}{whose}"),
            );
            return None;
        };
        let serves = matches!(
            (wp.waypoint_for, kind),
            (WaypointFor::All, _)
                | (WaypointFor::Service, WaypointFor::Service)
                | (WaypointFor::Workload, WaypointFor::Workload)
        );
        if serves {
            Some(wp.clone())
        } else {
            if explicit {
                let what = if kind == WaypointFor::Service {
                    "services"
                } else {
                    "workloads"
                };
                v.err(
                    loc,
                    format!("{field}.{USE_WAYPOINT}"),
                    format!("waypoint {key} does not serve {what} (its {WAYPOINT_FOR} label)"),
                );
            }
            None
        }
    }
}

/// Validates each named security resource with `to_policy`; duplicates by namespace/name and
/// every field error are reported at the resource's location.
fn validate_policies<S, P>(
    v: &mut Validator,
    kind: &str,
    raw: &[Named<S>],
    to_policy: impl Fn(&Named<S>) -> Result<P, Vec<mesh_authz::istio::FieldError>>,
) -> Vec<P> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for p in raw {
        if !seen.insert((p.namespace.as_str(), p.name.as_str())) {
            v.err(
                &p.location,
                "metadata.name",
                format!("duplicate {kind} {}/{}", p.namespace, p.name),
            );
        }
        match to_policy(p) {
            Ok(pol) => out.push(pol),
            Err(errs) => {
                for e in errs {
                    v.err(&p.location, e.field, e.reason);
                }
            }
        }
    }
    out
}

/// The workloads as the policy indexes see them.
fn workload_refs<'a>(
    workloads: &'a [Arc<Workload>],
    keys: &'a [String],
) -> impl Iterator<Item = mesh_authz::WorkloadRef<'a>> {
    workloads
        .iter()
        .zip(keys)
        .map(|(w, key)| mesh_authz::WorkloadRef {
            key,
            namespace: &w.namespace,
            labels: &w.labels,
        })
}

pub(crate) fn default_trust_domain() -> TrustDomain {
    #[allow(clippy::expect_used)]
    // DEFAULT_TRUST_DOMAIN is a constant valid trust domain (checked by the unit tests).
    DEFAULT_TRUST_DOMAIN
        .parse()
        .expect("default trust domain is valid")
}

#[cfg(test)]
mod tests;
