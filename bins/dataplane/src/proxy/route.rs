//! Outbound routing decision: where a connection from a local workload goes. Pure: state and
//! target in, decision out.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{MeshState, ServicePort, Waypoint, Workload};
use crate::socks5::Target;

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// To a mesh workload over HBONE.
    Hbone {
        /// The chosen workload.
        workload: Arc<Workload>,
        /// Its port.
        port: u16,
        /// Its node's HBONE address.
        hbone_addr: SocketAddr,
        /// The service the client addressed, if it addressed one.
        service: Option<Arc<ServicePort>>,
    },
    /// To a known workload that runs on no mesh node: plain TCP (it has no ztunnel).
    Plain {
        /// The workload.
        workload: Arc<Workload>,
        /// Address to connect to.
        addr: SocketAddr,
        /// The service the client addressed, if it addressed one.
        service: Option<Arc<ServicePort>>,
    },
    /// Through the destination's waypoint: HBONE to the waypoint with the original address
    /// as the `:authority`.
    Waypoint {
        /// The waypoint.
        waypoint: Arc<Waypoint>,
        /// The address the client used: the service VIP:port, or the workload ip:port.
        authority: SocketAddr,
        /// The service the client addressed, if it addressed one.
        service: Option<Arc<ServicePort>>,
        /// The workload the client addressed, if it addressed one directly.
        workload: Option<Arc<Workload>>,
    },
    /// Not a mesh address: pass through unchanged (Istio's `ALLOW_ANY`).
    Passthrough(SocketAddr),
    /// A service with no endpoints.
    NoEndpoints(Arc<ServicePort>),
    /// A host name no service has.
    UnknownHost(String),
    /// The address of a workload on another network (`network`): reachable only through a
    /// network gateway, which is not supported; refused, never dialled.
    OtherNetwork(SocketAddr, String),
}

/// Decides the route for `target`. Services are balanced round-robin over their endpoints;
/// a service (or a directly addressed workload) with a waypoint goes through it (Istio: the
/// service VIP uses the service's waypoint, a workload address the workload's). A client in
/// namespace `client_ns` sees only the services visible to it (Istio's `visibility`), ranked
/// as Istio (its namespace's, `canonical`, first); an address that is no exact VIP may be in
/// a service's CIDR unless a workload has it (Istio's `find_address`: a workload first). An
/// address only a workload on another network has is refused.
pub fn route(state: &MeshState, target: &Target, client_ns: &str) -> Route {
    let service = match target {
        Target::Host(h, port) => match state.service_by_host_for_client(h, *port, client_ns) {
            Some(sp) => sp.clone(),
            None => return Route::UnknownHost(h.clone()),
        },
        Target::Addr(addr) => match state.vip_for_client(*addr, client_ns) {
            Some(sp) => sp.clone(),
            None => match not_a_vip(state, *addr, client_ns) {
                Ok(cidr_service) => cidr_service,
                Err(route) => return route,
            },
        },
    };
    // With weighted waypoints, one is chosen here, once per connection (it is never moved).
    if let Some(wp) = service.service.waypoint_for_connection() {
        // The waypoint is told the service by its VIP (the address the client used, or the
        // service's first VIP when it was addressed by name).
        let vip = match target {
            Target::Addr(a) => Some(*a),
            Target::Host(..) => service
                .service
                .vips
                .first()
                .map(|ip| SocketAddr::new(*ip, service.port)),
        };
        if let Some(authority) = vip {
            return Route::Waypoint {
                waypoint: wp.clone(),
                authority,
                service: Some(service.clone()),
                workload: None,
            };
        }
    }
    match service.pick() {
        Some(ep) => to_workload(ep.workload.clone(), ep.port, Some(service.clone())),
        None => Route::NoEndpoints(service),
    }
}

/// An address that is no VIP for this client: a workload's (through its waypoint, if it has
/// one), else a CIDR service's (`Ok`, routed as a service), else another network's workload's
/// (refused), else not the mesh's.
fn not_a_vip(
    state: &MeshState,
    addr: SocketAddr,
    client_ns: &str,
) -> Result<Arc<ServicePort>, Route> {
    if let Some(w) = state.workload_by_ip(addr.ip()) {
        return Err(match &w.waypoint {
            Some(wp) => Route::Waypoint {
                waypoint: wp.clone(),
                authority: addr,
                service: None,
                workload: Some(w.clone()),
            },
            None => to_workload(w.clone(), addr.port(), None),
        });
    }
    if let Some(sp) = state.cidr_for_client(addr, client_ns) {
        return Ok(sp.clone());
    }
    Err(match state.other_network(addr.ip()) {
        Some(net) => Route::OtherNetwork(addr, net.to_owned()),
        None => Route::Passthrough(addr),
    })
}

fn to_workload(workload: Arc<Workload>, port: u16, service: Option<Arc<ServicePort>>) -> Route {
    match workload.hbone_addr {
        Some(hbone_addr) => Route::Hbone {
            workload,
            port,
            hbone_addr,
            service,
        },
        None => Route::Plain {
            addr: SocketAddr::new(workload.address, port),
            workload,
            service,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const MESH: &str = r#"
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {name: a}
spec: {address: 127.0.1.1, workloads: [ns/w1, ns/w2]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w1, namespace: ns}
spec: {address: 10.0.0.1, labels: {app: s}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w2, namespace: ns}
spec: {address: 10.0.0.2, labels: {app: s}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: ns}
spec: {address: 10.0.0.9, labels: {app: x}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: ns}
spec:
  hosts: [s.ns.svc]
  addresses: [10.96.0.1]
  ports: [{number: 80, name: http, targetPort: 8080}]
  workloadSelector: {labels: {app: s}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: empty, namespace: ns}
spec:
  hosts: [empty.ns.svc]
  addresses: [10.96.0.2]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: none}}
"#;

    #[test]
    fn routes() {
        let s = crate::config::parse(Path::new("m.yaml"), MESH).unwrap();
        let vip = Target::Addr("10.96.0.1:80".parse().unwrap());
        let mut seen = Vec::new();
        for _ in 0..4 {
            match route(&s, &vip, "ns") {
                Route::Hbone {
                    workload,
                    port,
                    hbone_addr,
                    service,
                } => {
                    assert_eq!(port, 8080);
                    assert_eq!(hbone_addr, SocketAddr::new(workload.address, 15008));
                    assert!(service.is_some());
                    seen.push(workload.name.clone());
                }
                r => panic!("{r:?}"),
            }
        }
        assert_eq!(seen, ["w1", "w2", "w1", "w2"], "round robin");
        assert!(matches!(
            route(&s, &Target::Host("S.ns.svc".into(), 80), "ns"),
            Route::Hbone { .. }
        ));
        assert!(matches!(
            route(&s, &Target::Addr("10.0.0.2:9000".parse().unwrap()), "ns"),
            Route::Hbone {
                port: 9000,
                service: None,
                ..
            }
        ));
        assert!(matches!(
            route(&s, &Target::Addr("10.0.0.9:22".parse().unwrap()), "ns"),
            Route::Plain { .. }
        ));
        assert!(matches!(
            route(&s, &Target::Addr("10.96.0.2:80".parse().unwrap()), "ns"),
            Route::NoEndpoints(_)
        ));
        assert!(matches!(
            route(&s, &Target::Addr("192.0.2.1:443".parse().unwrap()), "ns"),
            Route::Passthrough(_)
        ));
        assert!(matches!(
            route(&s, &Target::Host("nope.svc".into(), 80), "ns"),
            Route::UnknownHost(_)
        ));
    }
}
