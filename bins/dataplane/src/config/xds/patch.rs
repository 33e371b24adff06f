//! Patched builds: when only workloads changed since the last build (and no waypoint is
//! involved), the last state's indexes are copied and only the changed workloads, their
//! services, our node if concerned and their policy entries are redone. A ztunnel's large
//! meshes see mostly such updates (pods coming and going). `tests.rs` checks patched builds
//! equal full builds.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::super::Workload;
use super::super::state::{FastMap, MeshState, ServicePort};
use super::build::{index_ports, ports_of, service_arc};
use super::store::{Built, Cache, Local, XWorkload, XdsStore};

/// Service ports by host and port.
type ByHost = HashMap<String, HashMap<u16, Arc<ServicePort>>>;

impl XdsStore {
    /// The last build with the changed workloads patched in: the address index, the
    /// changed workloads' services, our node if it is concerned, their policy entries.
    /// `None` when a full build is needed.
    pub(super) fn build_incremental(&self, cache: &mut Cache) -> Option<MeshState> {
        let built = cache.built.as_ref()?;
        // A store that serves one workload or a gateway, or holds L7 kinds, builds in full.
        if cache.full
            || built.shared_address
            || built.net_scoped
            || self.any_waypoint()
            || self.local != Local::NodeWorkloads
            || self.l7.is_some()
        {
            return None;
        }
        let mut by_ip = built.by_ip.clone();
        let mut affected: HashSet<&str> = HashSet::new();
        let mut local_changed = false;
        let mut removes: Vec<&str> = Vec::new();
        let mut upserts: Vec<&XWorkload> = Vec::new();
        for (uid, old) in &cache.changed {
            if let Some(o) = old {
                if by_ip
                    .get(&o.arc.address)
                    .is_some_and(|w| Arc::ptr_eq(w, &o.arc))
                {
                    by_ip.remove(&o.arc.address);
                }
                affected.extend(o.services.iter().map(String::as_str));
                local_changed |= self.is_local(&o.arc);
                removes.push(&o.key);
            }
            if let Some(x) = self.workloads.get(uid) {
                // Another network's workload is never indexed: the full build keeps it apart.
                if x.other_network.is_some() {
                    return None;
                }
                if by_ip.insert(x.arc.address, x.arc.clone()).is_some() {
                    // Two workloads on one address: the full build decides (and warns).
                    return None;
                }
                affected.extend(x.services.iter().map(|(k, _)| k.as_str()));
                local_changed |= self.is_local(&x.arc);
                upserts.push(x);
            }
        }
        let (by_vip, by_host) = self.patch_services(
            &mut cache.ports,
            (&built.by_vip, &built.by_host),
            &affected,
            &by_ip,
        )?;
        let mut service_ports = Vec::new();
        for name in self.services.keys() {
            service_ports.extend(cache.ports.get(name)?.iter().cloned());
        }
        let workloads: Vec<Arc<Workload>> =
            self.workloads.values().map(|x| x.arc.clone()).collect();
        let built = cache.built.as_ref()?;
        let node = if local_changed {
            self.node(
                workloads
                    .iter()
                    .filter(|w| self.is_local(w))
                    .cloned()
                    .collect(),
            )
        } else {
            built.node.clone()
        };
        let authz = built.authz.update_assigned(
            upserts.iter().map(|x| {
                (
                    mesh_authz::WorkloadRef {
                        key: &x.key,
                        namespace: &x.arc.namespace,
                        labels: &x.arc.labels,
                    },
                    x.policies.as_slice(),
                )
            }),
            removes,
        );
        let policies = built.policies.clone();
        let mut state = self.empty_state();
        state.nodes.insert(self.settings.node.clone(), node.clone());
        state.authz = authz.clone();
        state.policies = policies.clone();
        state.workloads = workloads;
        state.service_ports = service_ports;
        state.by_ip = by_ip.clone();
        state.by_vip = by_vip.clone();
        state.by_host = by_host.clone();
        cache.built = Some(Built {
            shared_address: false,
            by_ip,
            by_vip,
            by_host,
            node,
            authz,
            policies,
            net_scoped: false,
        });
        cache.changed.clear();
        cache.dirty.clear();
        cache.patched += 1;
        Some(state)
    }

    /// The VIP and host indexes of the last build with the `affected` services (by
    /// `namespace/hostname`) rebuilt from `by_ip`; `None` when one was not built before.
    fn patch_services(
        &self,
        cached: &mut HashMap<String, Vec<Arc<ServicePort>>>,
        (built_vip, built_host): (&FastMap<SocketAddr, Arc<ServicePort>>, &ByHost),
        affected: &HashSet<&str>,
        by_ip: &FastMap<IpAddr, Arc<Workload>>,
    ) -> Option<(FastMap<SocketAddr, Arc<ServicePort>>, ByHost)> {
        let mut by_vip = built_vip.clone();
        let mut by_host = built_host.clone();
        let mut rebuilt: Vec<(String, Vec<Arc<ServicePort>>)> = Vec::new();
        for (name, x) in &self.services {
            if !affected.contains(x.key.as_str()) {
                continue;
            }
            let old = cached.get(name)?;
            for sp in old {
                for vip in &x.vips {
                    let a = SocketAddr::new(*vip, sp.port);
                    if by_vip.get(&a).is_some_and(|e| Arc::ptr_eq(e, sp)) {
                        by_vip.remove(&a);
                    }
                }
                if let Some(ports) = by_host.get_mut(&x.hostname)
                    && ports.get(&sp.port).is_some_and(|e| Arc::ptr_eq(e, sp))
                {
                    ports.remove(&sp.port);
                }
            }
            let service = old
                .first()
                .map_or_else(|| service_arc(x, None, None), |sp| sp.service.clone());
            let ports = ports_of(x, &service, &self.members(&x.key), by_ip);
            index_ports(x, &ports, &mut by_vip, &mut by_host);
            rebuilt.push((name.clone(), ports));
        }
        for (name, ports) in rebuilt {
            cached.insert(name, ports);
        }
        Some((by_vip, by_host))
    }

    /// Healthy workloads naming service `key`, with their port mappings for it.
    fn members<'s>(&'s self, key: &str) -> Vec<(&'s XWorkload, &'s Vec<(u16, u16)>)> {
        self.workloads
            .values()
            .filter(|w| w.healthy)
            .filter_map(|w| {
                w.services
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, ports)| (w, ports))
            })
            .collect()
    }
}
