//! The interface between the ZDS wire side and the proxy runtime: who a pod is ([`PodInfo`]),
//! what the agent asked ([`PodEvent`]) and where the answer goes ([`Reply`]). A leaf module:
//! `zds` re-exports these.

use std::os::fd::OwnedFd;

use tokio::sync::oneshot;

/// Who a pod is, as the CNI agent describes it (`zds.WorkloadInfo`), plus its uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's uid as the agent sends it (`AddWorkload.uid`): the key of every later message.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Trust domain (empty: the mesh's). Istio's agent no longer sends one (`WorkloadInfo`
    /// field 4 is reserved), so from the wire this is always empty.
    pub trust_domain: String,
}

/// The consumer's answer to one event: `Err(reason)` is sent back to the agent as `Ack.error`.
pub type Reply = oneshot::Sender<Result<(), String>>;

/// What the CNI agent asked, in order, as the runtime sees it.
#[derive(Debug)]
#[non_exhaustive]
pub enum PodEvent {
    /// A pod to serve (new, or re-sent after the agent reconnected). `netns` is the pod's
    /// network namespace, an open fd received over `SCM_RIGHTS`.
    Add {
        /// Who the pod is.
        info: PodInfo,
        /// The pod's network namespace.
        netns: OwnedFd,
        /// Where the answer goes.
        reply: Reply,
    },
    /// During a re-sync: a pod the agent still has and whose namespace the ztunnel should
    /// already hold (`KeepWorkload`); an unknown uid is an error.
    Keep {
        /// The pod's uid.
        uid: String,
        /// Where the answer goes.
        reply: Reply,
    },
    /// A pod that is gone: drain and close its listeners (`DelWorkload`).
    Del {
        /// The pod's uid.
        uid: String,
        /// Where the answer goes.
        reply: Reply,
    },
    /// The agent has (re)sent every pod it has (`SnapshotSent`): pods neither added nor kept
    /// since the connection started are removed.
    SnapshotSent {
        /// Where the answer goes.
        reply: Reply,
    },
    /// A new connection to the agent started (the first, or a reconnect after the agent
    /// restarted or the connection broke). Not a wire message, so no reply: it marks where
    /// "since the connection started" begins for [`PodEvent::SnapshotSent`]. Pods keep being
    /// served across it; the snapshot that follows (Add/Keep…, then SnapshotSent) re-syncs them.
    Connected,
}
