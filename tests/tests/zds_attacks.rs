//! ZDS attacker and broken-agent tests: what a hostile or buggy istio-cni agent can send
//! (garbage, descriptors where none belong or too many, oversized messages, a reconnect storm)
//! and what the ztunnel answers, on the real socket with the fake agent. Each asserts the exact
//! ack (Istio's ztunnel `src/inpod/protocol.rs` reads 1024 bytes and one fd per add, and closes
//! the connection on a message it cannot read) and that no descriptor leaks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod zds_support;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use mesh_dataplane::zds::Limits;
use mesh_xds::pb::zds as pb;
use prost::Message;
use zds_support::{Seen, pod, self_ns, setup};

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
