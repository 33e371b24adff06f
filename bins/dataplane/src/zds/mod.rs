//! ZDS: the istio-cni ↔ ztunnel protocol (Istio's `zds.proto`). The node's CNI agent
//! (istio-cni) listens on a Unix `SOCK_SEQPACKET` socket (default
//! `/var/run/ztunnel/ztunnel.sock`; Istio's ztunnel reads the path from `INPOD_UDS`); the
//! ztunnel connects to it, says hello, and the agent hands over each pod it captured: its uid,
//! who it is ([`PodInfo`]) and its network namespace as a file descriptor (`SCM_RIGHTS`). The
//! ztunnel opens the pod's in-pod listeners inside that namespace. (Istio: istio/ztunnel
//! `src/inpod/workloadmanager.rs` connects; istio/istio `cni/pkg/nodeagent/ztunnelserver.go`
//! listens.)
//!
//! This module owns the wire side (the client connection, reconnects and the protocol state) and
//! turns what the agent says into [`PodEvent`]s; the proxy runtime consumes them and answers each
//! one, and the answer goes back to the agent as Istio's `Ack` (an empty error on success).
//! Every (re)connection starts with [`PodEvent::Connected`]: the agent then re-sends its pods
//! (a snapshot) and ends it with [`PodEvent::SnapshotSent`].

mod client;
mod error;
mod event;
mod session;
mod wire;

pub use client::{Limits, READINESS_TASK, serve, serve_ready, serve_with};
pub use error::{Refusal, ZdsError};
pub use event::{PodEvent, PodInfo, Reply};
