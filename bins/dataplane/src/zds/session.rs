//! The ZDS protocol without IO: what one connection to the agent is in (before or after the
//! snapshot), what a received packet means (a [`Request`] for the proxy, or a [`Refusal`]),
//! and the bytes we send (the hello and each ack). The driver (`client.rs`) only moves
//! packets and descriptors.
//!
//! Istio's rules mirrored here (istio/ztunnel `src/inpod/protocol.rs`, `statemanager.rs`):
//! descriptors are taken first so every one received is owned (and closed unless it is the one
//! an `add` hands over); a truncated message is refused; `add` needs exactly one descriptor and
//! nothing else carries one; `keep` only before `snapshot_sent`; `snapshot_sent` once per
//! connection; `add.workload_info` is required.

use std::os::fd::OwnedFd;

use mesh_xds::pb::zds;
use prost::Message;
use zds::workload_request::Payload;

use super::error::Refusal;
use super::event::{PodEvent, PodInfo, Reply};

/// The largest message read: Istio's agent and ztunnel both read into 1024 bytes
/// (`cni/pkg/nodeagent/ztunnelserver_linux.go` `readProto`, ztunnel's `read_message`), so a
/// longer one is refused on both sides.
pub(crate) const MAX_MESSAGE: usize = 1024;

/// Room for descriptors in one receive: Linux's `SCM_MAX_FD` (253), the most one message can
/// carry, so the kernel never truncates the control data (it would leave installed
/// descriptors we could not see, hence not close).
pub(crate) const MAX_FDS: usize = 253;

/// The longest `Ack.error` sent: the agent reads replies into 1024 bytes too.
pub(crate) const MAX_ACK_ERROR: usize = 512;

/// What the agent asked, checked, for the proxy.
#[derive(Debug)]
pub(crate) enum Request {
    /// A pod to serve, with its network namespace.
    Add {
        /// Who.
        info: PodInfo,
        /// Its namespace.
        netns: OwnedFd,
    },
    /// Keep a pod during the snapshot.
    Keep {
        /// The pod's uid.
        uid: String,
    },
    /// A pod that is gone.
    Del {
        /// The pod's uid.
        uid: String,
    },
    /// The snapshot is complete.
    SnapshotSent,
}

impl Request {
    /// The message kind as Istio's proto names the oneof arm.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Request::Add { .. } => "add",
            Request::Keep { .. } => "keep",
            Request::Del { .. } => "del",
            Request::SnapshotSent => "snapshot_sent",
        }
    }

    /// The event for the proxy, answered on `reply`.
    pub(crate) fn into_event(self, reply: Reply) -> PodEvent {
        match self {
            Request::Add { info, netns } => PodEvent::Add { info, netns, reply },
            Request::Keep { uid } => PodEvent::Keep { uid, reply },
            Request::Del { uid } => PodEvent::Del { uid, reply },
            Request::SnapshotSent => PodEvent::SnapshotSent { reply },
        }
    }
}

/// One connection's protocol state.
#[derive(Debug, Default)]
pub(crate) struct Session {
    snapshot_received: bool,
}

impl Session {
    /// A new connection: the snapshot has not been sent yet.
    pub(crate) fn new() -> Session {
        Session::default()
    }

    /// Whether this connection's snapshot is complete.
    pub(crate) fn synced(&self) -> bool {
        self.snapshot_received
    }

    /// One received packet: its bytes, whether the kernel truncated it, and the descriptors
    /// that came with it (owned: those not handed over are closed on return).
    pub(crate) fn on_message(
        &mut self,
        data: &[u8],
        truncated: bool,
        mut fds: Vec<OwnedFd>,
    ) -> Result<Request, Refusal> {
        if truncated {
            return Err(Refusal::TooLarge { max: MAX_MESSAGE });
        }
        let req = zds::WorkloadRequest::decode(data).map_err(|e| Refusal::Decode {
            reason: e.to_string(),
        })?;
        let payload = req.payload.ok_or(Refusal::NoPayload)?;
        let kind = match &payload {
            Payload::Add(_) => "add",
            Payload::Keep(_) => "keep",
            Payload::Del(_) => "del",
            Payload::SnapshotSent(_) => "snapshot_sent",
        };
        match payload {
            Payload::Add(add) => {
                if fds.len() != 1 {
                    return Err(Refusal::FdCount { got: fds.len() });
                }
                let info = add.workload_info.ok_or(Refusal::Missing {
                    field: "add.workload_info",
                })?;
                let uid = required(add.uid, "add.uid")?;
                let netns = fds.pop().ok_or(Refusal::FdCount { got: 0 })?;
                Ok(Request::Add {
                    info: PodInfo {
                        uid,
                        name: info.name,
                        namespace: info.namespace,
                        service_account: info.service_account,
                        trust_domain: String::new(),
                    },
                    netns,
                })
            }
            _ if !fds.is_empty() => Err(Refusal::UnexpectedFd {
                kind,
                got: fds.len(),
            }),
            Payload::Keep(keep) => {
                if self.snapshot_received {
                    return Err(Refusal::KeepAfterSnapshot);
                }
                Ok(Request::Keep {
                    uid: required(keep.uid, "keep.uid")?,
                })
            }
            Payload::Del(del) => Ok(Request::Del {
                uid: required(del.uid, "del.uid")?,
            }),
            Payload::SnapshotSent(_) => {
                if self.snapshot_received {
                    return Err(Refusal::SnapshotTwice);
                }
                self.snapshot_received = true;
                Ok(Request::SnapshotSent)
            }
        }
    }
}

fn required(uid: String, field: &'static str) -> Result<String, Refusal> {
    if uid.is_empty() {
        return Err(Refusal::Missing { field });
    }
    Ok(uid)
}

/// Whether an agent running as `peer` may hand us namespaces: root (Istio's agent) or our own
/// user (tests, a rootless setup). Anyone else who managed to listen on the path is refused.
pub(crate) fn peer_allowed(peer: u32, me: u32) -> bool {
    peer == 0 || peer == me
}

/// The reconnect delays: `start` doubling to `max` while connections fail or end before their
/// snapshot (a broken or hostile agent cannot make us spin), back to `start` after a connection
/// that completed its snapshot (an agent restart is picked up at once).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    start: std::time::Duration,
    max: std::time::Duration,
    next: std::time::Duration,
}

impl Backoff {
    /// Starts at `start`.
    pub(crate) fn new(start: std::time::Duration, max: std::time::Duration) -> Backoff {
        Backoff {
            start,
            max: max.max(start),
            next: start,
        }
    }

    /// The delay before the next attempt, after a connection that was `synced` (or none).
    pub(crate) fn after(&mut self, synced: bool) -> std::time::Duration {
        if synced {
            self.next = self.start;
        }
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }
}

/// Our hello, sent first on every connection: `ZdsHello { version: V1 }`.
pub(crate) fn hello() -> Vec<u8> {
    zds::ZdsHello {
        version: zds::Version::V1 as i32,
    }
    .encode_to_vec()
}

/// The ack for one request: an empty error on success, else the reason, cut to
/// [`MAX_ACK_ERROR`] bytes (on a character boundary) so the agent can read it.
pub(crate) fn ack(result: &Result<(), String>) -> Vec<u8> {
    let error = match result {
        Ok(()) => String::new(),
        Err(e) => {
            let mut end = e.len().min(MAX_ACK_ERROR);
            while !e.is_char_boundary(end) {
                end -= 1;
            }
            e[..end].to_owned()
        }
    };
    zds::WorkloadResponse {
        payload: Some(zds::workload_response::Payload::Ack(zds::Ack { error })),
    }
    .encode_to_vec()
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
