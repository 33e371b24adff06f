//! ZDS: the istio-cni ↔ ztunnel protocol (Istio's `zds.proto`). The node's CNI agent connects to
//! the ztunnel's Unix socket and hands over each pod it captured: its uid, who it is
//! ([`PodInfo`]) and its network namespace as a file descriptor (`SCM_RIGHTS`). The ztunnel
//! opens the pod's in-pod listeners inside that namespace.
//!
//! This module owns the wire side (the socket server and the protocol state) and turns what the
//! agent says into [`PodEvent`]s; the proxy runtime consumes them and answers each one, and the
//! answer goes back to the agent as Istio's `Ack` (an empty error on success).

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
    /// Trust domain (empty: the mesh's).
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
}
