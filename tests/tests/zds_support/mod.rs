//! The ZDS test harness shared by `zds_protocol.rs` and `zds_attacks.rs`: `zds::serve` (the
//! ztunnel side) with a stub consumer of the pod events, against the fake agent.

#![allow(unreachable_pub, dead_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use mesh_dataplane::zds::{self, Limits, PodEvent};
use mesh_telemetry::readiness::Readiness;
use mesh_tests::fake_cni::{FakeCni, Pod};
use mesh_xds::pb::zds as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the stub consumer saw, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Connected,
    /// uid, name, namespace, service account, and whether the fd is our network namespace.
    Add(String, String, String, String, bool),
    Keep(String),
    Del(String),
    Snapshot,
}

/// The ztunnel side: `zds::serve` plus a stub consumer that answers `Ok`, except pods whose
/// uid starts with `bad` (refused with "bad pod <uid>") or `slow` (answered after 1 s).
pub struct Ztunnel {
    seen: mpsc::UnboundedReceiver<Seen>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), zds::ZdsError>>,
}

impl Ztunnel {
    pub fn start(path: PathBuf, limits: Limits) -> Ztunnel {
        Ztunnel::start_ready(path, limits, None)
    }

    pub fn start_ready(path: PathBuf, limits: Limits, ready: Option<Readiness>) -> Ztunnel {
        let (events_tx, mut events) = mpsc::channel::<PodEvent>(4);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = match ready {
            // Not ready from the call on (not only once the task runs).
            Some(r) => tokio::spawn(zds::serve_ready(path, events_tx, c, limits, r)),
            None => tokio::spawn(async move { zds::serve_with(&path, events_tx, c, limits).await }),
        };
        let our_ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let (seen, reply, uid) = match ev {
                    PodEvent::Connected => {
                        let _ = seen_tx.send(Seen::Connected);
                        continue;
                    }
                    PodEvent::Add { info, netns, reply } => {
                        let ours = fd_ino(&netns) == our_ns;
                        let uid = info.uid.clone();
                        let s = Seen::Add(
                            info.uid,
                            info.name,
                            info.namespace,
                            info.service_account,
                            ours,
                        );
                        (s, reply, uid)
                    }
                    PodEvent::Keep { uid, reply } => (Seen::Keep(uid.clone()), reply, uid),
                    PodEvent::Del { uid, reply } => (Seen::Del(uid.clone()), reply, uid),
                    PodEvent::SnapshotSent { reply } => (Seen::Snapshot, reply, String::new()),
                    _ => continue,
                };
                let _ = seen_tx.send(seen);
                if uid.starts_with("slow") {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let answer = if uid.starts_with("bad") {
                    Err(format!("bad pod {uid}"))
                } else {
                    Ok(())
                };
                let _ = reply.send(answer);
            }
        });
        Ztunnel { seen, cancel, task }
    }

    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), self.seen.recv())
            .await
            .expect("no pod event within 5 s")
            .expect("consumer gone")
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        assert!(
            matches!(r, Ok(Ok(Ok(())))),
            "serve did not end cleanly: {r:?}"
        );
    }
}

fn fd_ino(fd: &OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd.as_fd())
        .map(|s| s.st_ino)
        .unwrap_or(0)
}

pub fn pod(uid: &str) -> Pod {
    Pod::new(uid, "ns1", &format!("name-{uid}"), "sa1")
}

pub fn self_ns() -> PathBuf {
    PathBuf::from("/proc/self/ns/net")
}

/// Agent and ztunnel connected, hello read and `Connected` seen.
pub async fn setup(limits: Limits) -> (tempfile::TempDir, FakeCni, Ztunnel) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/ztunnel/ztunnel.sock");
    let mut agent = FakeCni::bind(&path).unwrap();
    let mut zt = Ztunnel::start(path, limits);
    assert_eq!(agent.accept().await.unwrap(), pb::Version::V1 as i32);
    assert_eq!(zt.next().await, Seen::Connected);
    (dir, agent, zt)
}
