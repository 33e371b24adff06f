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

mod zds_support;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use mesh_dataplane::zds::{self, Limits};
use mesh_telemetry::readiness::Readiness;
use mesh_tests::fake_cni::FakeCni;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zds_support::{Seen, Ztunnel, pod, self_ns, setup};

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
    // Istio's agent probes the idle connection with a short read that must time out: the
    // ztunnel never speaks unasked (ztunnelserver.go "ztunnel protocol error, unexpected
    // message").
    assert!(agent.quiet_for(Duration::from_millis(200)).await);
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

#[tokio::test]
async fn not_ready_until_the_snapshot_and_while_the_agent_is_away() {
    // Istio's ztunnel in-pod: ready only once connected and the snapshot is processed; not
    // ready again on disconnect (workloadmanager.rs `WorkloadProxyReadinessHandler`).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ztunnel.sock");
    let mut agent = FakeCni::bind(&path).unwrap();
    let readiness = Readiness::new();
    let mut zt = Ztunnel::start_ready(path, Limits::default(), Some(readiness.clone()));
    let pending = || readiness.pending();
    assert_eq!(pending(), [zds::READINESS_TASK]);
    agent.accept().await.unwrap();
    zt.next().await;
    assert_eq!(
        agent.add_path(&pod("u1"), &self_ns()).await.unwrap(),
        Ok(())
    );
    zt.next().await;
    assert_eq!(
        pending(),
        [zds::READINESS_TASK],
        "mid-snapshot is not ready"
    );
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    zt.next().await;
    assert!(
        pending().is_empty(),
        "ready after the snapshot: {:?}",
        pending()
    );
    // The agent goes away: not ready until the next snapshot.
    agent.disconnect();
    agent.accept().await.unwrap();
    assert_eq!(zt.next().await, Seen::Connected);
    assert_eq!(pending(), [zds::READINESS_TASK]);
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    zt.next().await;
    assert!(pending().is_empty());
    zt.stop().await;
}
