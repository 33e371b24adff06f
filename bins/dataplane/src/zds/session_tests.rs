//! The ZDS session core: each rule of Istio's protocol, and a proptest that any packet (random
//! bytes, any number of descriptors) is answered without a panic and never leaks one.

use std::os::fd::{AsFd, OwnedFd};

use mesh_xds::pb::zds;
use proptest::prelude::*;
use prost::Message;
use zds::workload_request::Payload;

use super::*;

fn info() -> zds::WorkloadInfo {
    zds::WorkloadInfo {
        name: "p".into(),
        namespace: "n".into(),
        service_account: "s".into(),
    }
}

fn req(p: Payload) -> Vec<u8> {
    zds::WorkloadRequest { payload: Some(p) }.encode_to_vec()
}

fn add(uid: &str) -> Vec<u8> {
    req(Payload::Add(zds::AddWorkload {
        uid: uid.into(),
        workload_info: Some(info()),
    }))
}

/// A pipe whose write end is handed out as "descriptors": when every copy is closed, the read
/// end sees EOF, which proves none was leaked.
struct Tracker {
    read: OwnedFd,
    write: Option<OwnedFd>,
}

impl Tracker {
    fn new() -> Tracker {
        let (read, write) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        Tracker {
            read,
            write: Some(write),
        }
    }
    fn fds(&self, n: usize) -> Vec<OwnedFd> {
        let w = self.write.as_ref().unwrap();
        (0..n).map(|_| w.try_clone().unwrap()).collect()
    }
    /// Closes our own copy, then: are all copies closed?
    fn all_closed(&mut self) -> bool {
        self.write = None;
        let mut b = [0u8; 1];
        matches!(nix::unistd::read(self.read.as_fd(), &mut b), Ok(0))
    }
}

#[test]
fn add_with_one_fd_is_forwarded_with_its_info() {
    let mut t = Tracker::new();
    let mut s = Session::new();
    let r = s.on_message(&add("u1"), false, t.fds(1)).unwrap();
    let Request::Add { info, netns } = r else {
        panic!("{r:?}")
    };
    assert_eq!(info.uid, "u1");
    assert_eq!(
        (
            info.name.as_str(),
            info.namespace.as_str(),
            info.service_account.as_str()
        ),
        ("p", "n", "s")
    );
    assert_eq!(info.trust_domain, "");
    drop(netns);
    assert!(t.all_closed());
}

#[test]
fn add_without_fd_is_refused_and_closes() {
    // Istio ztunnel protocol.rs: `(Payload::Add(_), None) => Err("No control message")`.
    let e = Session::new()
        .on_message(&add("u1"), false, vec![])
        .unwrap_err();
    assert_eq!(e, Refusal::FdCount { got: 0 });
    assert_eq!(
        e.to_string(),
        "add: expected 1 network namespace fd (SCM_RIGHTS), got 0"
    );
    assert!(e.closes());
}

#[test]
fn extra_fds_are_all_closed() {
    // Istio ztunnel protocol.rs `maybe_get_fd`: more than one fd is an error, all are closed.
    let mut t = Tracker::new();
    let e = Session::new()
        .on_message(&add("u1"), false, t.fds(3))
        .unwrap_err();
    assert_eq!(e, Refusal::FdCount { got: 3 });
    assert!(t.all_closed());
}

#[test]
fn fd_on_another_message_is_refused_and_closed() {
    // Istio: "anything other than Add shouldn't have FDs".
    let mut t = Tracker::new();
    let del = req(Payload::Del(zds::DelWorkload { uid: "u".into() }));
    let e = Session::new()
        .on_message(&del, false, t.fds(1))
        .unwrap_err();
    assert_eq!(
        e,
        Refusal::UnexpectedFd {
            kind: "del",
            got: 1
        }
    );
    assert_eq!(e.to_string(), "del: carries 1 fd(s); only add carries one");
    assert!(t.all_closed());
}

#[test]
fn truncated_and_garbage_and_empty_are_refused() {
    let mut s = Session::new();
    let e = s.on_message(&add("u"), true, vec![]).unwrap_err();
    assert_eq!(e.to_string(), "message: over 1024 bytes (truncated)");
    let e = s
        .on_message(&[0xff, 0xff, 0xff], false, vec![])
        .unwrap_err();
    assert!(matches!(e, Refusal::Decode { .. }), "{e:?}");
    assert!(e.closes());
    // An empty request, or an arm from a future Istio (field 6), decodes to no payload.
    assert_eq!(
        s.on_message(&[], false, vec![]).unwrap_err(),
        Refusal::NoPayload
    );
    assert_eq!(
        s.on_message(&[0x32, 0x00], false, vec![]).unwrap_err(),
        Refusal::NoPayload
    );
}

#[test]
fn workload_info_and_uids_are_required() {
    // Istio statemanager.rs: "workload_info is required but not present" (a protocol error).
    let no_info = req(Payload::Add(zds::AddWorkload {
        uid: "u".into(),
        workload_info: None,
    }));
    let mut t = Tracker::new();
    let e = Session::new()
        .on_message(&no_info, false, t.fds(1))
        .unwrap_err();
    assert_eq!(e.to_string(), "add.workload_info: required");
    assert!(e.closes());
    assert!(t.all_closed());
    let e = Session::new()
        .on_message(&add(""), false, Tracker::new().fds(1))
        .unwrap_err();
    assert_eq!(e.to_string(), "add.uid: required");
    assert!(!e.closes(), "one bad pod does not cost the connection");
    let keep = req(Payload::Keep(zds::KeepWorkload::default()));
    assert_eq!(
        Session::new()
            .on_message(&keep, false, vec![])
            .unwrap_err()
            .to_string(),
        "keep.uid: required"
    );
}

#[test]
fn keep_only_before_the_snapshot_and_snapshot_once() {
    // Istio statemanager.rs: "pod keep received after snapshot", "pod snapshot received already".
    let mut s = Session::new();
    let keep = req(Payload::Keep(zds::KeepWorkload { uid: "u".into() }));
    let snap = req(Payload::SnapshotSent(zds::SnapshotSent {}));
    assert!(matches!(
        s.on_message(&keep, false, vec![]),
        Ok(Request::Keep { .. })
    ));
    assert!(!s.synced());
    assert!(matches!(
        s.on_message(&snap, false, vec![]),
        Ok(Request::SnapshotSent)
    ));
    assert!(s.synced());
    assert_eq!(
        s.on_message(&keep, false, vec![]).unwrap_err(),
        Refusal::KeepAfterSnapshot
    );
    assert_eq!(
        s.on_message(&snap, false, vec![]).unwrap_err(),
        Refusal::SnapshotTwice
    );
    // Adds and deletes go on after the snapshot.
    let del = req(Payload::Del(zds::DelWorkload { uid: "u".into() }));
    assert!(matches!(
        s.on_message(&del, false, vec![]),
        Ok(Request::Del { .. })
    ));
}

#[test]
fn acks_encode_as_istio_and_are_bounded() {
    assert_eq!(ack(&Ok(())), [0x0a, 0x00]);
    assert_eq!(ack(&Err("x".into())), [0x0a, 0x03, 0x0a, 0x01, b'x']);
    let long = "é".repeat(4000);
    let a = ack(&Err(long));
    assert!(a.len() <= MAX_MESSAGE, "{}", a.len());
    let decoded = zds::WorkloadResponse::decode(&a[..]).unwrap();
    let Some(zds::workload_response::Payload::Ack(ack)) = decoded.payload else {
        panic!()
    };
    assert_eq!(ack.error.len(), MAX_ACK_ERROR);
    assert_eq!(hello(), [0x08, 0x01]);
}

#[test]
fn only_root_or_our_user_may_be_the_agent() {
    assert!(peer_allowed(0, 1000));
    assert!(peer_allowed(1000, 1000));
    assert!(!peer_allowed(1001, 1000));
    assert!(peer_allowed(0, 0));
    assert!(!peer_allowed(65534, 0));
}

#[test]
fn backoff_doubles_to_its_cap_and_resets_after_a_synced_connection() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    // Istio's ztunnel: 10 ms doubling, at most 15 s.
    let mut b = Backoff::new(ms(10), Duration::from_secs(15));
    let early: Vec<Duration> = (0..13).map(|_| b.after(false)).collect();
    assert_eq!(&early[..4], &[ms(10), ms(20), ms(40), ms(80)]);
    assert_eq!(early[11], ms(15_000));
    assert_eq!(early[12], ms(15_000));
    assert_eq!(b.after(true), ms(10));
    assert_eq!(b.after(false), ms(20));
}

proptest! {
    /// Whatever the sequence of connection outcomes, a delay is never below the start nor
    /// above the cap, and a run of failures only grows it.
    #[test]
    fn backoff_stays_within_bounds(outcomes in proptest::collection::vec(any::<bool>(), 0..100)) {
        use std::time::Duration;
        let (start, max) = (Duration::from_millis(10), Duration::from_secs(15));
        let mut b = Backoff::new(start, max);
        let mut last = Duration::ZERO;
        for synced in outcomes {
            let d = b.after(synced);
            prop_assert!(d >= start && d <= max);
            if !synced {
                prop_assert!(d >= last);
            }
            last = d;
        }
    }
}

proptest! {
    /// Any packet — random bytes or a mangled valid request, 0..4 descriptors, truncated or
    /// not — gets an answer (a request or a refusal whose ack fits the agent's buffer), never a
    /// panic, and every descriptor not handed over in an `add` is closed.
    #[test]
    fn any_packet_is_answered_and_leaks_no_fd(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (0usize..6, proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, tail)| {
                let mut v = match k {
                    0 => add("u"),
                    1 => req(Payload::Del(zds::DelWorkload { uid: "u".into() })),
                    2 => req(Payload::Keep(zds::KeepWorkload { uid: "u".into() })),
                    3 => req(Payload::SnapshotSent(zds::SnapshotSent {})),
                    _ => add(""),
                };
                v.extend(tail);
                v
            }),
        ],
        nfds in 0usize..4,
        truncated in any::<bool>(),
        snapshot_first in any::<bool>(),
    ) {
        let mut t = Tracker::new();
        let mut s = Session::new();
        if snapshot_first {
            let snap = req(Payload::SnapshotSent(zds::SnapshotSent {}));
            prop_assert!(s.on_message(&snap, false, vec![]).is_ok());
        }
        match s.on_message(&bytes, truncated, t.fds(nfds)) {
            Ok(Request::Add { netns, .. }) => {
                prop_assert_eq!(nfds, 1);
                prop_assert!(!truncated);
                drop(netns);
            }
            Ok(other) => {
                prop_assert_eq!(nfds, 0, "{:?} took descriptors", other.kind());
            }
            Err(e) => {
                prop_assert!(ack(&Err(e.to_string())).len() <= MAX_MESSAGE);
            }
        }
        prop_assert!(t.all_closed(), "a descriptor leaked");
    }
}
