//! Parsing a mesh file: each YAML document checked for its kind and apiVersion, then typed
//! (serde, unknown fields denied) into [`Raw`], the file's resources by kind. Field-level
//! checks shared by the compile steps (names, ports, addresses) live here too, and so does
//! [`Resources`], the typed kinds the shared assembler indexes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::de::DeserializeOwned;

use super::errors::Validator;
use super::model::*;

/// One resource of the file with its metadata and where it was found.
pub(super) struct Named<S> {
    pub(super) location: String,
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) labels: BTreeMap<String, String>,
    /// Annotations (read only where an Istio annotation has an effect).
    pub(super) annotations: BTreeMap<String, String>,
    pub(super) spec: S,
}

/// Which kinds a file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Every kind: the file is the whole mesh.
    Full,
    /// Only [`L7_FILE_KINDS`]: the file sits beside istiod (`--xds-address`), which provides
    /// the rest.
    L7Only,
}

/// The apiVersion of the `EnvoyFilter`s this data plane reads.
pub(super) const ENVOY_FILTER_API: &str = "networking.istio.io/v1alpha3";

/// The kinds a file given with `--xds-address` may hold: the L7 kinds Istio's workload API
/// does not carry. Workloads, services, nodes, waypoints and L4 policy come from istiod, and a
/// local file must not override them.
pub const L7_FILE_KINDS: &[&str] = &[
    "VirtualService",
    "DestinationRule",
    "HTTPRoute",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "MeshConfig",
    "EnvoyFilter",
];

/// The file's resources by kind, each typed but not yet checked against the others.
#[derive(Default)]
pub(super) struct Raw {
    pub(super) workloads: Vec<Named<WorkloadEntrySpec>>,
    pub(super) services: Vec<Named<ServiceEntrySpec>>,
    pub(super) nodes: Vec<Named<NodeSpec>>,
    pub(super) mesh: Option<Named<MeshConfigSpec>>,
    pub(super) gateways: Vec<Named<GatewaySpec>>,
    /// Namespace name → labels (`v1` `Namespace` documents).
    pub(super) namespaces: Vec<(String, String, BTreeMap<String, String>)>,
    /// Policies and the L7 kinds (what the shared assembler indexes).
    pub(super) res: Resources,
}

// Istio fields of the supported kinds that this mesh does not implement yet; named in errors.
const UNSUPPORTED_FIELDS: &[(&str, &str)] = &[
    ("weight", "WorkloadEntry weights are not supported yet"),
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
    /// Adds document number `index` (1-based) of the file, reporting what is wrong with it.
    pub(super) fn add(
        &mut self,
        v: &mut Validator,
        index: usize,
        doc: serde_json::Value,
        mode: Mode,
    ) {
        if doc.is_null() {
            return;
        }
        let kind = str_field(&doc, &["kind"]).unwrap_or("");
        let ns = str_field(&doc, &["metadata", "namespace"]).unwrap_or("default");
        let name = str_field(&doc, &["metadata", "name"]).unwrap_or("?");
        let location = format!("document {index} ({kind} {ns}/{name})");
        self.add_at(v, &location, doc, mode);
    }

    /// Adds one document found at `location` (a file's `document N (…)`, or the Kubernetes
    /// source's `Kind namespace/name`), reporting what is wrong with it.
    pub(super) fn add_at(
        &mut self,
        v: &mut Validator,
        location: &str,
        doc: serde_json::Value,
        mode: Mode,
    ) {
        let kind = str_field(&doc, &["kind"]).unwrap_or("").to_owned();
        let api = str_field(&doc, &["apiVersion"]).unwrap_or("").to_owned();
        let location = location.to_owned();
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
        if mode == Mode::L7Only && !L7_FILE_KINDS.contains(&kind.as_str()) {
            v.err(
                &location,
                "kind",
                format!(
                    "{kind} is not allowed in a file given with --xds-address (istiod provides workloads, services, nodes, waypoints and L4 policy); such a file may hold only {}",
                    L7_FILE_KINDS.join(", ")
                ),
            );
            return;
        }
        if mode == Mode::L7Only && kind == "MeshConfig" {
            // Beside istiod only the ext_authz providers: the rest of the mesh's settings
            // come with istiod's config.
            let spec = doc.get("spec").and_then(|s| s.as_object());
            for k in spec.into_iter().flat_map(|s| s.keys()) {
                if k != "extensionProviders" {
                    v.err(&location, format!("spec.{k}"), "a MeshConfig in a file given with --xds-address may hold only extensionProviders");
                }
            }
        }
        if kind == "EnvoyFilter" && api != ENVOY_FILTER_API {
            let want = ENVOY_FILTER_API;
            let why = format!(
                "EnvoyFilter is not supported yet with apiVersion {api:?}: only {want} rate limit filters"
            );
            v.err(&location, "kind", why);
            return;
        }
        let Some(want_api) = api_versions(v, &location, &kind) else {
            return;
        };
        if !want_api.contains(&api.as_str()) {
            v.err(
                &location,
                "apiVersion",
                format!("{api:?} is not valid for {kind} (expected one of {want_api:?})"),
            );
            return;
        }
        self.push(v, &location, &kind, doc);
    }

    /// Types a document of a known kind and files it under its kind.
    fn push(&mut self, v: &mut Validator, location: &str, kind: &str, doc: serde_json::Value) {
        let location = location.to_owned();
        let r = &mut self.res;
        match kind {
            "WorkloadEntry" => add_typed(v, &location, doc, &mut self.workloads),
            "ServiceEntry" => add_typed(v, &location, doc, &mut self.services),
            "AuthorizationPolicy" => add_typed(v, &location, doc, &mut r.policies),
            "PeerAuthentication" => add_typed(v, &location, doc, &mut r.peer_authns),
            "RequestAuthentication" => add_typed(v, &location, doc, &mut r.request_authns),
            "Gateway" => add_typed(v, &location, doc, &mut self.gateways),
            "VirtualService" => add_typed(v, &location, doc, &mut r.virtual_services),
            "DestinationRule" => add_typed(v, &location, doc, &mut r.destination_rules),
            "HTTPRoute" => add_typed(v, &location, doc, &mut r.http_routes),
            "EnvoyFilter" => add_typed(v, &location, doc, &mut r.envoy_filters),
            "Node" => add_typed(v, &location, doc, &mut self.nodes),
            "Namespace" => self.add_namespace(v, &location, doc),
            _ => {
                if let Some(d) = typed::<MeshConfigSpec>(v, &location, doc) {
                    let providers = d.spec.extension_providers.clone();
                    r.extension_providers = Some((location.clone(), providers));
                    if self.mesh.is_some() {
                        v.err(&location, "kind", "only one MeshConfig is allowed");
                    } else {
                        self.mesh = Some(named(v, &location, d));
                    }
                }
            }
        }
    }

    fn add_namespace(&mut self, v: &mut Validator, location: &str, doc: serde_json::Value) {
        let Some(d) = typed_as::<NamespaceDoc>(v, location, doc) else {
            return;
        };
        if !is_dns_label(&d.metadata.name) {
            v.err(
                location,
                "metadata.name",
                format!("{:?} is not a valid namespace", d.metadata.name),
            );
        }
        if d.metadata.namespace.is_some() {
            v.err(
                location,
                "metadata.namespace",
                "a Namespace has no namespace",
            );
        }
        self.namespaces
            .push((location.to_owned(), d.metadata.name, d.metadata.labels));
    }
}

/// Types `doc` as a `Doc<S>` and adds it to `list`.
fn add_typed<S: DeserializeOwned>(
    v: &mut Validator,
    location: &str,
    doc: serde_json::Value,
    list: &mut Vec<Named<S>>,
) {
    if let Some(d) = typed(v, location, doc) {
        list.push(named(v, location, d));
    }
}

/// The apiVersions a known `kind` may have; `None` (reported) for other kinds.
fn api_versions(v: &mut Validator, location: &str, kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "WorkloadEntry" | "ServiceEntry" | "VirtualService" | "DestinationRule" => {
            NETWORKING_VERSIONS
        }
        "Node" | "MeshConfig" => &[LOCAL_API_VERSION],
        "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication" => SECURITY_VERSIONS,
        "Gateway" | "HTTPRoute" => GATEWAY_VERSIONS,
        "Namespace" => &["v1"],
        "EnvoyFilter" => &[ENVOY_FILTER_API],
        k if NOT_YET_SUPPORTED_KINDS.contains(&k) => {
            v.err(
                location,
                "kind",
                format!("{k} is not supported yet by this data plane"),
            );
            return None;
        }
        k => {
            v.err(
                location,
                "kind",
                format!(
                    "unknown kind {k:?} (expected WorkloadEntry, ServiceEntry, VirtualService, DestinationRule, HTTPRoute, AuthorizationPolicy, PeerAuthentication, RequestAuthentication, Gateway, Namespace, or {LOCAL_GROUP} Node / MeshConfig)"
                ),
            );
            return None;
        }
    })
}

pub(super) fn named<S>(v: &mut Validator, location: &str, d: Doc<S>) -> Named<S> {
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
        annotations: d.metadata.annotations,
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

pub(super) fn is_hostname(s: &str) -> bool {
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

pub(super) fn parse_port(v: &mut Validator, location: &str, field: &str, n: u32) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            v.err(location, field, format!("{n} is not a port (1-65535)"));
            None
        }
    }
}

pub(super) fn parse_ip(v: &mut Validator, location: &str, field: &str, s: &str) -> Option<IpAddr> {
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

/// The kinds the shared assembler indexes: policies and the L7 kinds. From the file, or (with
/// `--xds-address`) from a local file limited to [`super::L7_FILE_KINDS`].
#[derive(Default)]
pub struct Resources {
    pub(super) policies: Vec<Named<mesh_authz::istio::AuthorizationPolicySpec>>,
    pub(super) peer_authns: Vec<Named<mesh_authz::peer::PeerAuthenticationSpec>>,
    pub(super) request_authns: Vec<Named<mesh_authz::jwt::RequestAuthenticationSpec>>,
    pub(super) virtual_services: Vec<Named<mesh_l7::istio::VirtualServiceSpec>>,
    pub(super) destination_rules: Vec<Named<mesh_l7::istio::DestinationRuleSpec>>,
    pub(super) http_routes: Vec<Named<mesh_l7::gateway::HttpRouteSpec>>,
    /// `EnvoyFilter`s (rate limits).
    pub(super) envoy_filters: Vec<Named<mesh_l7::ratelimit::EnvoyFilterSpec>>,
    /// `MeshConfig.extensionProviders` and where they were found.
    pub(super) extension_providers: Option<(String, Vec<super::ext_authz::ExtensionProviderSpec>)>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("policies", &self.policies.len())
            .field("peer_authns", &self.peer_authns.len())
            .field("request_authns", &self.request_authns.len())
            .field("virtual_services", &self.virtual_services.len())
            .field("destination_rules", &self.destination_rules.len())
            .field("http_routes", &self.http_routes.len())
            .field("envoy_filters", &self.envoy_filters.len())
            .finish()
    }
}

impl Resources {
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
            && self.peer_authns.is_empty()
            && self.request_authns.is_empty()
            && self.virtual_services.is_empty()
            && self.destination_rules.is_empty()
            && self.http_routes.is_empty()
            && self.envoy_filters.is_empty()
    }
}
