//! The pods the CNI agent handed over (ZDS), as an immutable snapshot ([`PodTable`]) that the
//! listener plan and the connection paths read: which network namespace serves a workload of
//! this node. A leaf module: the registry and the driver build new snapshots; `Ctx` holds the
//! current one in an `ArcSwap`.
//!
//! Matching, as Istio's ztunnel (`WorkloadInfo::matches`, `src/state/workload.rs`): a pod serves
//! the workload-API workload with its namespace and name; the ZDS uid is the pod's Kubernetes
//! uid, unrelated to the workload API's `cluster//Pod/ns/name` uid. The service account and
//! trust domain the agent sends must agree with istiod's, or the pod is not served.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Workload;
use crate::sockets::Netns;
use crate::zds::PodInfo;

/// One pod the agent handed over, with its open network namespace.
#[derive(Debug)]
pub(crate) struct Pod {
    /// Who the agent says it is.
    pub(crate) info: PodInfo,
    /// Its namespace, entered (a thread there creates its sockets).
    pub(crate) netns: Arc<Netns>,
    /// Order of arrival: of two pods with one name, the later serves it.
    pub(crate) seq: u64,
}

/// Where a local workload is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement<'a> {
    /// On this host, bound to its address (no ZDS, no config netns).
    Host,
    /// In-pod, in the namespace of the ZDS pod with this uid.
    Pod(&'a str),
    /// ZDS is on and no pod (with an agreeing identity) serves it yet: no listeners.
    Wait,
}

/// The ZDS pods as the data path sees them. `enabled` is false when the ztunnel has no ZDS
/// socket: every placement is then [`Placement::Host`] (the behaviour before ZDS).
#[derive(Debug, Default, Clone)]
pub(crate) struct PodTable {
    /// Whether pods come from a CNI agent.
    pub(crate) enabled: bool,
    pods: HashMap<String, Arc<Pod>>,
    /// namespace → name → uid of the pod serving it (the latest added).
    by_name: HashMap<String, HashMap<String, String>>,
}

impl PodTable {
    /// An empty table; `enabled` as given.
    pub(crate) fn new(enabled: bool) -> PodTable {
        PodTable {
            enabled,
            ..PodTable::default()
        }
    }

    /// The table with `pods`, indexed.
    pub(crate) fn with_pods(enabled: bool, pods: HashMap<String, Arc<Pod>>) -> PodTable {
        let mut by_name: HashMap<String, HashMap<String, String>> = HashMap::new();
        let mut order: Vec<&Arc<Pod>> = pods.values().collect();
        order.sort_by_key(|p| p.seq);
        for p in order {
            by_name
                .entry(p.info.namespace.clone())
                .or_default()
                .insert(p.info.name.clone(), p.info.uid.clone());
        }
        PodTable {
            enabled,
            pods,
            by_name,
        }
    }

    /// The pods, by uid.
    pub(crate) fn pods(&self) -> &HashMap<String, Arc<Pod>> {
        &self.pods
    }

    /// The uids of pods shadowed by a later pod with the same namespace and name.
    pub(crate) fn shadowed(&self) -> Vec<String> {
        self.pods
            .values()
            .filter(|p| {
                self.by_name(&p.info.namespace, &p.info.name)
                    .is_some_and(|q| q.info.uid != p.info.uid)
            })
            .map(|p| p.info.uid.clone())
            .collect()
    }

    /// The pod with `uid`.
    pub(crate) fn get(&self, uid: &str) -> Option<&Arc<Pod>> {
        self.pods.get(uid)
    }

    /// The pod serving `namespace/name`, whatever its identity.
    pub(crate) fn by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Pod>> {
        let uid = self.by_name.get(namespace)?.get(name)?;
        self.pods.get(uid)
    }

    /// Where `w` (a workload of this node without a config netns) is served. Allocation-free.
    pub(crate) fn placement(&self, w: &Workload) -> Placement<'_> {
        if !self.enabled {
            return Placement::Host;
        }
        match self.by_name(&w.namespace, &w.name) {
            Some(p) if identity_mismatch(&p.info, w).is_none() => Placement::Pod(&p.info.uid),
            _ => Placement::Wait,
        }
    }
}

/// Why the agent's description of a pod disagrees with istiod's workload, if it does: the
/// service account, and the trust domain when the agent sends one.
pub(crate) fn identity_mismatch(info: &PodInfo, w: &Workload) -> Option<String> {
    if info.service_account != w.service_account {
        return Some(format!(
            "service account {:?} from the CNI agent, {:?} from istiod",
            info.service_account, w.service_account
        ));
    }
    let td = w.identity.trust_domain_str();
    if !info.trust_domain.is_empty() && info.trust_domain != td {
        return Some(format!(
            "trust domain {:?} from the CNI agent, {:?} from istiod",
            info.trust_domain, td
        ));
    }
    None
}
