//! Waypoint `Gateway`s of the file and `istio.io/use-waypoint` attachment.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mesh_identity::{SpiffeId, TrustDomain};

use super::errors::Validator;
use super::model::*;
use super::parse::{Raw, parse_ip, parse_port};
use super::{DEFAULT_HBONE_PORT, Waypoint, WaypointFor};

/// Waypoint `Gateway`s (`gatewayClassName: istio-waypoint`), by `namespace/name`.
pub(super) fn compile_waypoints(
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
pub(super) struct Attach<'a> {
    pub(super) waypoints: &'a HashMap<String, Arc<Waypoint>>,
    pub(super) ns_labels: &'a HashMap<&'a str, &'a BTreeMap<String, String>>,
}

impl Attach<'_> {
    pub(super) fn resolve(
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
