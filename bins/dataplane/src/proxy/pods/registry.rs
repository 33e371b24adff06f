//! The ZDS pod registry as a sans-IO core: which pods the ztunnel serves, what each agent
//! message does to them, and which pods a re-sync removes. No sockets or namespaces here: the
//! driver ([`super::driver`]) opens the namespace before [`Registry::add`] and acts on what
//! the registry answers.
//!
//! Semantics follow Istio's ztunnel (`src/inpod/linux/statemanager.rs`):
//! - an `Add` of a uid already served with the same namespace (device and inode) is a no-op
//!   (idempotent, its listeners and connections untouched); with another namespace the pod's
//!   sandbox was re-created: the old one is replaced;
//! - `Keep` (re-sync) of an unknown uid is an error; `Del` of an unknown uid is fine;
//! - `SnapshotSent` removes every pod neither added nor kept since the agent connected.

use std::collections::{HashMap, HashSet};

use crate::zds::PodInfo;

/// At most this many pods per node (Kubernetes' own default is 110 per node): a runaway or
/// hostile agent cannot make the ztunnel hold unbounded namespaces and threads.
pub(crate) const MAX_PODS: usize = 1024;
/// Longest uid accepted (a Kubernetes uid is 36 characters).
const MAX_UID: usize = 128;
/// Longest name, namespace, service account or trust domain (DNS subdomain: 253).
const MAX_NAME: usize = 253;

/// A served pod: who it is, its namespace's identity, and what the driver keeps for it.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    pub(crate) info: PodInfo,
    pub(crate) netns_id: (u64, u64),
    pub(crate) seq: u64,
    pub(crate) payload: T,
}

/// What an `Add` did.
#[derive(Debug)]
pub(crate) enum Added<T> {
    /// A new pod.
    New,
    /// Already served from the same namespace: nothing changed (the new handle is unused).
    Same(T),
    /// Served before from another namespace: that entry is returned, to drain.
    Replaced(Entry<T>),
}

/// The pods and the re-sync bookkeeping. `T` is what the driver keeps per pod (its open
/// namespace); tests use `()`.
#[derive(Debug)]
pub(crate) struct Registry<T> {
    pods: HashMap<String, Entry<T>>,
    /// Uids added or kept since the agent connected (or since the last snapshot).
    seen: HashSet<String>,
    next_seq: u64,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry {
            pods: HashMap::new(),
            seen: HashSet::new(),
            next_seq: 0,
        }
    }
}

fn check(what: &str, value: &str, max: usize, required: bool) -> Result<(), String> {
    if required && value.is_empty() {
        return Err(format!("{what} is required"));
    }
    if value.len() > max {
        return Err(format!("{what} longer than {max} bytes"));
    }
    Ok(())
}

/// Checks what the agent sent about a pod (required fields, bounded lengths).
pub(crate) fn validate(info: &PodInfo) -> Result<(), String> {
    check("uid", &info.uid, MAX_UID, true)?;
    check("workload_info.name", &info.name, MAX_NAME, true)?;
    check("workload_info.namespace", &info.namespace, MAX_NAME, true)?;
    check(
        "workload_info.service_account",
        &info.service_account,
        MAX_NAME,
        false,
    )?;
    check(
        "workload_info.trust_domain",
        &info.trust_domain,
        MAX_NAME,
        false,
    )
}

impl<T> Registry<T> {
    /// The agent (re)connected: a re-sync starts, ended by `SnapshotSent`.
    pub(crate) fn connected(&mut self) {
        self.seen.clear();
    }

    /// The served pods, by uid.
    pub(crate) fn pods(&self) -> &HashMap<String, Entry<T>> {
        &self.pods
    }

    /// Whether `uid` is served.
    #[cfg(test)]
    pub(crate) fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Whether an `Add` of `uid` from namespace `netns_id` changes nothing.
    pub(crate) fn is_same(&self, uid: &str, netns_id: (u64, u64)) -> bool {
        self.pods.get(uid).is_some_and(|e| e.netns_id == netns_id)
    }

    /// A pod to serve. Fails (nothing changed) on a bad description or past [`MAX_PODS`].
    pub(crate) fn add(
        &mut self,
        info: PodInfo,
        netns_id: (u64, u64),
        payload: T,
    ) -> Result<Added<T>, String> {
        validate(&info)?;
        let uid = info.uid.clone();
        if self.is_same(&uid, netns_id) {
            self.seen.insert(uid.clone());
            if let Some(e) = self.pods.get_mut(&uid) {
                // Same namespace: only what the agent says of the pod may be newer.
                e.info = info;
            }
            return Ok(Added::Same(payload));
        }
        if !self.pods.contains_key(&uid) && self.pods.len() >= MAX_PODS {
            return Err(format!("too many pods on this node (at most {MAX_PODS})"));
        }
        self.seen.insert(uid.clone());
        self.next_seq += 1;
        let entry = Entry {
            info,
            netns_id,
            seq: self.next_seq,
            payload,
        };
        Ok(match self.pods.insert(uid, entry) {
            None => Added::New,
            Some(old) => Added::Replaced(old),
        })
    }

    /// A pod the agent still has (re-sync): it must be served already.
    pub(crate) fn keep(&mut self, uid: &str) -> Result<(), String> {
        if !self.pods.contains_key(uid) {
            return Err(format!("keep of unknown pod uid {uid:?}"));
        }
        self.seen.insert(uid.to_owned());
        Ok(())
    }

    /// A pod that is gone; `None` when it was not served (not an error, as Istio).
    pub(crate) fn del(&mut self, uid: &str) -> Option<Entry<T>> {
        self.seen.remove(uid);
        self.pods.remove(uid)
    }

    /// The agent sent every pod it has: the pods neither added nor kept since it connected
    /// are removed and returned (to drain). The next re-sync starts empty.
    pub(crate) fn snapshot_sent(&mut self) -> Vec<Entry<T>> {
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !self.seen.contains(*uid))
            .cloned()
            .collect();
        self.seen.clear();
        gone.iter()
            .filter_map(|uid| self.pods.remove(uid))
            .collect()
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
