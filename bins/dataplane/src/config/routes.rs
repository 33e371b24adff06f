//! Route tables (`VirtualService`, `HTTPRoute`) and `DestinationRule`s, checked against the
//! services they name.

use std::collections::HashMap;
use std::sync::Arc;

use super::ServicePort;
use super::errors::Validator;
use super::parse::{Named, Resources};

/// Service ports by host and port.
type ByHost = HashMap<String, HashMap<u16, Arc<ServicePort>>>;

/// Route tables by the host they apply to: `VirtualService`s, then `HTTPRoute`s; a host is
/// routed by one resource.
pub(super) fn compile_routes(
    v: &mut Validator,
    res: &Resources,
    by_host: &ByHost,
    policies: &HashMap<String, mesh_l7::DestinationPolicy>,
) -> HashMap<String, Arc<mesh_l7::RouteTable>> {
    let mut out: HashMap<String, Arc<mesh_l7::RouteTable>> = HashMap::new();
    let mut owner: HashMap<String, String> = HashMap::new();
    virtual_services(v, res, by_host, policies, &mut out, &mut owner);
    http_routes(v, res, by_host, &mut out, &mut owner);
    out
}

/// `VirtualService` route tables; each destination must be a service host, each subset one
/// of its `DestinationRule`'s.
fn virtual_services(
    v: &mut Validator,
    res: &Resources,
    by_host: &ByHost,
    policies: &HashMap<String, mesh_l7::DestinationPolicy>,
    out: &mut HashMap<String, Arc<mesh_l7::RouteTable>>,
    owner: &mut HashMap<String, String>,
) {
    for vs in &res.virtual_services {
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
}

/// Gateway API HTTPRoutes attached to a Service (GAMMA): parent and backends are services of
/// the route's namespace, by name.
fn http_routes(
    v: &mut Validator,
    res: &Resources,
    by_host: &ByHost,
    out: &mut HashMap<String, Arc<mesh_l7::RouteTable>>,
    owner: &mut HashMap<String, String>,
) {
    let host_of = |ns: &str, name: &str| {
        by_host.values().flat_map(|m| m.values()).find_map(|sp| {
            (sp.service.namespace == ns && sp.service.name == name)
                .then(|| sp.service.hosts.first().cloned())
                .flatten()
        })
    };
    for r in &res.http_routes {
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
}

/// `DestinationRule`s by host (one per host; it must be a service host).
pub(super) fn compile_destination_rules(
    v: &mut Validator,
    rules: &[Named<mesh_l7::istio::DestinationRuleSpec>],
    by_host: &ByHost,
) -> HashMap<String, mesh_l7::DestinationPolicy> {
    let mut out = HashMap::new();
    for dr in rules {
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
