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
}

/// Decides the route for `target`. Services are balanced round-robin over their endpoints;
/// a service (or a directly addressed workload) with a waypoint goes through it (Istio: the
/// service VIP uses the service's waypoint, a workload address the workload's).
pub fn route(state: &MeshState, target: &Target) -> Route {
    let service = match target {
        Target::Host(h, port) => match state.service_by_host(h, *port) {
            Some(sp) => sp.clone(),
            None => return Route::UnknownHost(h.clone()),
        },
        Target::Addr(addr) => match state.service_by_vip(*addr) {
            Some(sp) => sp.clone(),
            None => {
                return match state.workload_by_ip(addr.ip()) {
                    Some(w) => match &w.waypoint {
                        Some(wp) => Route::Waypoint {
                            waypoint: wp.clone(),
                            authority: *addr,
                            service: None,
                            workload: Some(w.clone()),
                        },
                        None => to_workload(w.clone(), addr.port(), None),
                    },
                    None => Route::Passthrough(*addr),
                };
            }
        },
    };
    if let Some(wp) = &service.service.waypoint {
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
            match route(&s, &vip) {
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
            route(&s, &Target::Host("S.ns.svc".into(), 80)),
            Route::Hbone { .. }
        ));
        assert!(matches!(
            route(&s, &Target::Addr("10.0.0.2:9000".parse().unwrap())),
            Route::Hbone {
                port: 9000,
                service: None,
                ..
            }
        ));
        assert!(matches!(
            route(&s, &Target::Addr("10.0.0.9:22".parse().unwrap())),
            Route::Plain { .. }
        ));
        assert!(matches!(
            route(&s, &Target::Addr("10.96.0.2:80".parse().unwrap())),
            Route::NoEndpoints(_)
        ));
        assert!(matches!(
            route(&s, &Target::Addr("192.0.2.1:443".parse().unwrap())),
            Route::Passthrough(_)
        ));
        assert!(matches!(
            route(&s, &Target::Host("nope.svc".into(), 80)),
            Route::UnknownHost(_)
        ));
    }
}
