//! The ZDS errors: [`ZdsError`] for what stops [`super::serve`], [`Refusal`] for what one
//! message of the agent gets back as its `Ack.error` (the text is the `Display`).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What ends [`super::serve`] for good. Losing the agent (it restarted, the socket is not
/// there yet, a protocol error) is not one: the connection is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZdsError {
    /// The socket path cannot be a Unix socket address (empty, or longer than `sun_path`).
    #[error("zds socket {path}: not a usable Unix socket path")]
    Path {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The consumer of the [`super::PodEvent`]s is gone (its receiver was dropped).
    #[error("zds: the pod event consumer is gone")]
    ConsumerGone,
}

/// Why one message of the agent was refused; its `Display` is the `Ack.error` sent back.
/// [`Refusal::closes`] tells whether the connection is then closed (and re-established), as
/// Istio's ztunnel does for a message it cannot read or a protocol violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The message did not fit the receive buffer (Istio's 1024 bytes); the rest was lost.
    #[error("message: over {max} bytes (truncated)")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// Not a `WorkloadRequest`.
    #[error("message: not a WorkloadRequest: {reason}")]
    Decode {
        /// The protobuf decoder's reason.
        reason: String,
    },
    /// A `WorkloadRequest` without a payload (empty, or an arm this version does not know).
    #[error("message: WorkloadRequest has no payload (empty or an unknown kind)")]
    NoPayload,
    /// An `add` without exactly one descriptor (none, or several: all were closed).
    #[error("add: expected 1 network namespace fd (SCM_RIGHTS), got {got}")]
    FdCount {
        /// How many came.
        got: usize,
    },
    /// A message other than `add` carried descriptors (they were closed).
    #[error("{kind}: carries {got} fd(s); only add carries one")]
    UnexpectedFd {
        /// The message kind (`keep`, `del`, `snapshot_sent`).
        kind: &'static str,
        /// How many came.
        got: usize,
    },
    /// A required field is missing or empty.
    #[error("{field}: required")]
    Missing {
        /// The field path, e.g. `add.workload_info`.
        field: &'static str,
    },
    /// `keep` after `snapshot_sent` (Istio: "pod keep received after snapshot").
    #[error("keep: only allowed before snapshot_sent on a connection")]
    KeepAfterSnapshot,
    /// A second `snapshot_sent` on one connection (Istio: "pod snapshot received already").
    #[error("snapshot_sent: already received on this connection")]
    SnapshotTwice,
    /// The proxy did not answer in time.
    #[error("{kind}: no answer from the proxy within {after:?}")]
    Timeout {
        /// The message kind.
        kind: &'static str,
        /// The bound.
        after: Duration,
    },
    /// The proxy is shutting down and takes no more pods.
    #[error("{kind}: the proxy is not taking pods (shutting down)")]
    Gone {
        /// The message kind.
        kind: &'static str,
    },
}

impl Refusal {
    /// Whether the connection is closed after this refusal is sent. Istio's ztunnel closes
    /// (and reconnects) when it cannot read a message or the agent breaks the protocol, and
    /// keeps the connection when one pod failed (`src/inpod/workloadmanager.rs`).
    pub fn closes(&self) -> bool {
        match self {
            Refusal::TooLarge { .. }
            | Refusal::Decode { .. }
            | Refusal::NoPayload
            | Refusal::FdCount { .. }
            | Refusal::UnexpectedFd { .. }
            | Refusal::KeepAfterSnapshot
            | Refusal::SnapshotTwice => true,
            Refusal::Missing { field } => *field == "add.workload_info",
            Refusal::Timeout { .. } | Refusal::Gone { .. } => false,
        }
    }
}
