//! ZDS, the istio-cni ↔ ztunnel protocol, end to end on a real `SOCK_SEQPACKET` socket: our
//! `zds::serve` (the ztunnel side) against the fake agent (`mesh_tests::fake_cni`, the agent
//! side), with a stub consumer of the pod events written here. No root needed: the namespace
//! handed over is the test's own (`/proc/self/ns/net`).
//!
//! Istio facts checked (istio/ztunnel `src/inpod/{protocol,workloadmanager,statemanager}.rs`,
//! istio/istio `cni/pkg/nodeagent/ztunnelserver{,_linux}.go`): the ztunnel connects and says
//! hello (`ZdsHello{version: V1}`) first; every request gets exactly one `Ack` (empty error on
//! success); an `add` carries exactly one fd; a message that cannot be read, and a protocol
//! violation, get an error ack and the connection is closed (the ztunnel reconnects); a pod
//! the proxy refuses gets an error ack and the connection stays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use mesh_dataplane::zds::{self, Limits, PodEvent};
use mesh_tests::fake_cni::{FakeCni, Pod};
use mesh_xds::pb::zds as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the stub consumer saw, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Connected,
    /// uid, name, namespace, service account, and whether the fd is our network namespace.
    Add(String, String, String, String, bool),
    Keep(String),
    Del(String),
    Snapshot,
}

/// The ztunnel side: `zds::serve` plus a stub consumer that answers `Ok`, except pods whose
/// uid starts with `bad` (refused with "bad pod <uid>") or `slow` (answered after 1 s).
struct Ztunnel {
    seen: mpsc::UnboundedReceiver<Seen>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), zds::ZdsError>>,
}

impl Ztunnel {
    fn start(path: PathBuf, limits: Limits) -> Ztunnel {
        let (events_tx, mut events) = mpsc::channel::<PodEvent>(4);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { zds::serve_with(&path, events_tx, c, limits).await });
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

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), self.seen.recv())
            .await
            .expect("no pod event within 5 s")
            .expect("consumer gone")
    }

    async fn stop(self) {
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

fn pod(uid: &str) -> Pod {
    Pod::new(uid, "ns1", &format!("name-{uid}"), "sa1")
}

fn self_ns() -> PathBuf {
    PathBuf::from("/proc/self/ns/net")
}

/// Agent and ztunnel connected, hello read and `Connected` seen.
async fn setup(limits: Limits) -> (tempfile::TempDir, FakeCni, Ztunnel) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/ztunnel/ztunnel.sock");
    let mut agent = FakeCni::bind(&path).unwrap();
    let mut zt = Ztunnel::start(path, limits);
    assert_eq!(agent.accept().await.unwrap(), pb::Version::V1 as i32);
    assert_eq!(zt.next().await, Seen::Connected);
    (dir, agent, zt)
}

#[tokio::test]
async fn hello_add_keep_snapshot_del() {
    let (_dir, mut agent, mut zt) = setup(Limits::default()).await;
    let meta = std::fs::metadata(agent.path()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "the agent's socket is 0600");

    // Istio's snapshot: every pod as an add with its netns, keeps, then snapshot_sent.
    assert_eq!(
        agent.add_path(&pod("u1"), &self_ns()).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        zt.next().await,
        Seen::Add(
            "u1".into(),
            "name-u1".into(),
            "ns1".into(),
            "sa1".into(),
            true
        ),
        "the pod's info and its namespace fd reach the proxy"
    );
    assert_eq!(agent.keep("u0").await.unwrap(), Ok(()));
    assert_eq!(zt.next().await, Seen::Keep("u0".into()));
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    assert_eq!(zt.next().await, Seen::Snapshot);
    // Steady state: adds and deletes.
    assert_eq!(
        agent.add_path(&pod("u2"), &self_ns()).await.unwrap(),
        Ok(())
    );
    assert!(matches!(zt.next().await, Seen::Add(uid, ..) if uid == "u2"));
    assert_eq!(agent.del("u1").await.unwrap(), Ok(()));
    assert_eq!(zt.next().await, Seen::Del("u1".into()));
    zt.stop().await;
}

#[tokio::test]
async fn a_refused_pod_gets_the_proxys_reason_and_the_connection_stays() {
    let (_dir, mut agent, mut zt) = setup(Limits::default()).await;
    assert_eq!(
        agent.add_path(&pod("bad-1"), &self_ns()).await.unwrap(),
        Err("bad pod bad-1".to_owned())
    );
    zt.next().await;
    assert_eq!(
        agent.add_path(&pod("u3"), &self_ns()).await.unwrap(),
        Ok(())
    );
    assert!(matches!(zt.next().await, Seen::Add(uid, ..) if uid == "u3"));
    zt.stop().await;
}

#[tokio::test]
async fn protocol_violations_are_acked_then_the_ztunnel_reconnects() {
    let (_dir, mut agent, mut zt) = setup(Limits::default()).await;
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    zt.next().await;
    // Istio statemanager.rs: "pod keep received after snapshot" is a protocol error.
    assert_eq!(
        agent.keep("u1").await.unwrap(),
        Err("keep: only allowed before snapshot_sent on a connection".to_owned())
    );
    assert!(agent.closed_by_peer(Duration::from_secs(2)).await);
    // The ztunnel comes back, says hello again, and the proxy learns a new connection began.
    assert_eq!(agent.accept().await.unwrap(), 1);
    assert_eq!(zt.next().await, Seen::Connected);
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    assert_eq!(zt.next().await, Seen::Snapshot);
    // ...and a second snapshot on one connection is refused too.
    assert_eq!(
        agent.snapshot_sent().await.unwrap(),
        Err("snapshot_sent: already received on this connection".to_owned())
    );
    assert!(agent.closed_by_peer(Duration::from_secs(2)).await);
    zt.stop().await;
}

#[tokio::test]
async fn an_agent_restart_is_a_new_connection_and_a_resync() {
    let (dir, mut agent, mut zt) = setup(Limits::default()).await;
    assert_eq!(
        agent.add_path(&pod("u1"), &self_ns()).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        agent.add_path(&pod("u2"), &self_ns()).await.unwrap(),
        Ok(())
    );
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    for _ in 0..3 {
        zt.next().await;
    }
    // The agent drops the connection: the ztunnel reconnects to the same listener.
    agent.disconnect();
    assert_eq!(agent.accept().await.unwrap(), 1);
    assert_eq!(zt.next().await, Seen::Connected);
    // u2 was deleted while disconnected: the re-sync sends u1 only, then snapshot_sent.
    agent.forget("u2");
    let (acks, snap) = agent.resync().await.unwrap();
    assert_eq!(acks, vec![("u1".to_owned(), Ok(()))]);
    assert_eq!(snap, Ok(()));
    assert!(matches!(zt.next().await, Seen::Add(uid, ..) if uid == "u1"));
    assert_eq!(zt.next().await, Seen::Snapshot);

    // The agent process restarts: a new listener at the same path (stale file removed).
    let path = dir.path().join("run/ztunnel/ztunnel.sock");
    drop(agent);
    let mut agent = FakeCni::bind(&path).unwrap();
    assert_eq!(agent.accept().await.unwrap(), 1);
    assert_eq!(zt.next().await, Seen::Connected);
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    assert_eq!(zt.next().await, Seen::Snapshot);
    zt.stop().await;
}

#[tokio::test]
async fn the_ztunnel_waits_for_an_agent_that_is_not_there_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ztunnel.sock");
    let mut zt = Ztunnel::start(path.clone(), Limits::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut agent = FakeCni::bind(&path).unwrap();
    // Backoff 10 ms doubling: a few hundred ms in, the next try is within ~1 s.
    assert_eq!(
        agent.accept_within(Duration::from_secs(3)).await.unwrap(),
        1
    );
    assert_eq!(zt.next().await, Seen::Connected);
    zt.stop().await;
}

#[tokio::test]
async fn a_bad_socket_path_is_an_error() {
    let (tx, _rx) = mpsc::channel(1);
    let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
    let r = zds::serve(&long, tx, CancellationToken::new()).await;
    assert!(matches!(r, Err(zds::ZdsError::Path { .. })), "{r:?}");
}

// ---- attacker / broken agent ----

#[tokio::test]
async fn garbage_is_refused_and_closes() {
    let (_dir, mut agent, zt) = setup(Limits::default()).await;
    let ack = agent.send_raw(&[0xff; 16], &[]).await.unwrap();
    let err = ack.unwrap_err();
    assert!(err.starts_with("message: not a WorkloadRequest: "), "{err}");
    assert!(agent.closed_by_peer(Duration::from_secs(2)).await);
    zt.stop().await;
}

#[tokio::test]
async fn an_add_without_fd_is_refused() {
    // Istio protocol.rs: `(Payload::Add(_), None) => "No control message"`.
    let (_dir, mut agent, zt) = setup(Limits::default()).await;
    let bytes = pb::WorkloadRequest {
        payload: Some(pb::workload_request::Payload::Add(pb::AddWorkload {
            uid: "u1".into(),
            workload_info: Some(pb::WorkloadInfo::default()),
        })),
    }
    .encode_to_vec();
    assert_eq!(
        agent.send_raw(&bytes, &[]).await.unwrap(),
        Err("add: expected 1 network namespace fd (SCM_RIGHTS), got 0".to_owned())
    );
    assert!(agent.closed_by_peer(Duration::from_secs(2)).await);
    zt.stop().await;
}

#[tokio::test]
async fn extra_fds_are_refused_and_none_leaks() {
    // Istio protocol.rs `maybe_get_fd`: "Expected 1 FD, got N", every fd closed.
    let (_dir, mut agent, zt) = setup(Limits::default()).await;
    let (read, write) = nix::unistd::pipe().unwrap();
    let bytes = pb::WorkloadRequest {
        payload: Some(pb::workload_request::Payload::Add(pb::AddWorkload {
            uid: "u1".into(),
            workload_info: Some(pb::WorkloadInfo::default()),
        })),
    }
    .encode_to_vec();
    let w = write.as_fd();
    assert_eq!(
        agent.send_raw(&bytes, &[w, w, w]).await.unwrap(),
        Err("add: expected 1 network namespace fd (SCM_RIGHTS), got 3".to_owned())
    );
    // A del with an fd is refused too (only add carries one).
    assert!(agent.closed_by_peer(Duration::from_secs(2)).await);
    agent.accept().await.unwrap();
    let del = pb::WorkloadRequest {
        payload: Some(pb::workload_request::Payload::Del(pb::DelWorkload {
            uid: "u".into(),
        })),
    }
    .encode_to_vec();
    assert_eq!(
        agent.send_raw(&del, &[w]).await.unwrap(),
        Err("del: carries 1 fd(s); only add carries one".to_owned())
    );
    // Every copy the ztunnel received is closed: with ours gone, the pipe reads EOF.
    drop(write);
    let mut b = [0u8; 1];
    assert_eq!(
        nix::unistd::read(read.as_fd(), &mut b).unwrap(),
        0,
        "a descriptor leaked"
    );
    zt.stop().await;
}

#[tokio::test]
async fn a_message_over_1024_bytes_is_refused() {
    let (_dir, mut agent, zt) = setup(Limits::default()).await;
    let big = |name_len: usize| {
        pb::WorkloadRequest {
            payload: Some(pb::workload_request::Payload::Del(pb::DelWorkload {
                uid: "u".repeat(name_len),
            })),
        }
        .encode_to_vec()
    };
    // 1024 bytes exactly is Istio's buffer: accepted. Two tags, two 2-byte lengths, the uid:
    // 1 + 2 + 1 + 2 + 1018 = 1024.
    assert_eq!(big(1018).len(), 1024);
    assert_eq!(agent.send_raw(&big(1018), &[]).await.unwrap(), Ok(()));
    // One more byte: truncated by the kernel, refused, connection closed.
    assert_eq!(big(1019).len(), 1025);
    assert_eq!(
        agent.send_raw(&big(1019), &[]).await.unwrap(),
        Err("message: over 1024 bytes (truncated)".to_owned())
    );
    assert!(agent.closed_by_peer(Duration::from_secs(2)).await);
    zt.stop().await;
}

#[tokio::test]
async fn a_stuck_proxy_gets_an_error_ack_before_the_agents_deadline() {
    // The agent gives up on an ack after 5 s (ztunnelserver_linux.go `readWriteDeadline`); we
    // answer with an error at the reply timeout instead, and keep the connection.
    let limits = Limits::default().with_reply_timeout(Duration::from_millis(200));
    let (_dir, mut agent, mut zt) = setup(limits).await;
    assert_eq!(
        agent.add_path(&pod("slow-1"), &self_ns()).await.unwrap(),
        Err("add: no answer from the proxy within 200ms".to_owned())
    );
    zt.next().await;
    // The late answer is dropped; the next request gets its own ack, in order.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(agent.del("u9").await.unwrap(), Ok(()));
    assert_eq!(zt.next().await, Seen::Del("u9".into()));
    zt.stop().await;
}

#[tokio::test]
async fn an_unknown_payload_is_refused() {
    // A WorkloadRequest arm from a future Istio (field 6) decodes to no payload, as in
    // Istio's ztunnel ("no payload").
    let (_dir, mut agent, zt) = setup(Limits::default()).await;
    assert_eq!(
        agent.send_raw(&[0x32, 0x00], &[]).await.unwrap(),
        Err("message: WorkloadRequest has no payload (empty or an unknown kind)".to_owned())
    );
    zt.stop().await;
}

#[tokio::test]
async fn the_most_fds_a_message_can_carry_are_all_closed() {
    // Linux's SCM_MAX_FD (253) in one add: refused, and all 253 copies closed.
    let (_dir, mut agent, zt) = setup(Limits::default()).await;
    let (read, write) = nix::unistd::pipe().unwrap();
    let copies: Vec<OwnedFd> = (0..253).map(|_| write.try_clone().unwrap()).collect();
    drop(write);
    let fds: Vec<_> = copies.iter().map(|f| f.as_fd()).collect();
    let add = pod("u1");
    let bytes = pb::WorkloadRequest {
        payload: Some(pb::workload_request::Payload::Add(pb::AddWorkload {
            uid: add.uid.clone(),
            workload_info: Some(pb::WorkloadInfo::default()),
        })),
    }
    .encode_to_vec();
    assert_eq!(
        agent.send_raw(&bytes, &fds).await.unwrap(),
        Err("add: expected 1 network namespace fd (SCM_RIGHTS), got 253".to_owned())
    );
    drop(fds);
    drop(copies);
    let mut b = [0u8; 1];
    assert_eq!(
        nix::unistd::read(read.as_fd(), &mut b).unwrap(),
        0,
        "a descriptor leaked"
    );
    zt.stop().await;
}

#[tokio::test]
async fn a_hostile_agent_cannot_make_the_ztunnel_spin() {
    // An agent that answers every connection with garbage: each connection is refused and
    // closed, and the reconnects back off (10 ms doubling), so one second sees a handful of
    // connections, not hundreds.
    let (_dir, mut agent, zt) = setup(Limits::default()).await;
    let start = tokio::time::Instant::now();
    let mut connections = 1;
    while start.elapsed() < Duration::from_secs(1) {
        let ack = agent.send_raw(&[0xff; 8], &[]).await.unwrap();
        assert!(ack.is_err());
        let left = Duration::from_secs(1).saturating_sub(start.elapsed());
        if agent.accept_within(left).await.is_err() {
            break;
        }
        connections += 1;
    }
    eprintln!("hostile agent: {connections} connections in 1 s");
    assert!(
        (3..=8).contains(&connections),
        "{connections} connections in 1 s"
    );
    zt.stop().await;
}
