use proptest::prelude::*;

use super::*;

fn info(uid: &str) -> PodInfo {
    PodInfo {
        uid: uid.to_owned(),
        name: format!("pod-{uid}"),
        namespace: "ns".to_owned(),
        service_account: "sa".to_owned(),
        trust_domain: String::new(),
    }
}

#[test]
fn re_add_with_the_same_namespace_changes_nothing() {
    // Istio's statemanager: "idempotency - no error if we already have a proxy for the
    // workload" when the netns inode matches (add_workload_inner).
    let mut r = Registry::<u8>::default();
    assert!(matches!(r.add(info("a"), (1, 10), 1), Ok(Added::New)));
    let seq = r.pods()["a"].seq;
    assert!(matches!(r.add(info("a"), (1, 10), 2), Ok(Added::Same(2))));
    assert_eq!(r.pods()["a"].seq, seq);
    assert_eq!(r.pods()["a"].payload, 1, "the open namespace is kept");
}

#[test]
fn re_add_with_another_namespace_replaces_the_pod() {
    // Istio: "inodes are different, we have a new netns ... drain the old proxy and add this
    // one" (a pod sandbox re-created after a CNI failure).
    let mut r = Registry::<u8>::default();
    r.add(info("a"), (1, 10), 1).unwrap();
    match r.add(info("a"), (1, 11), 2) {
        Ok(Added::Replaced(old)) => assert_eq!(old.payload, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.pods()["a"].payload, 2);
}

#[test]
fn keep_of_an_unknown_uid_is_an_error_and_del_of_one_is_not() {
    let mut r = Registry::<()>::default();
    assert_eq!(
        r.keep("nope").unwrap_err(),
        "keep of unknown pod uid \"nope\""
    );
    assert!(r.del("nope").is_none());
}

#[test]
fn snapshot_removes_pods_not_re_sent_and_keeps_the_others() {
    let mut r = Registry::<()>::default();
    for uid in ["a", "b", "c"] {
        r.add(info(uid), (1, uid.len() as u64), ()).unwrap();
    }
    assert!(r.snapshot_sent().is_empty());
    // The agent reconnects: a is re-sent, b kept, c not mentioned (deleted meanwhile).
    r.connected();
    assert!(matches!(r.add(info("a"), (1, 1), ()), Ok(Added::Same(()))));
    r.keep("b").unwrap();
    let gone: Vec<String> = r.snapshot_sent().into_iter().map(|e| e.info.uid).collect();
    assert_eq!(gone, vec!["c".to_owned()]);
    assert!(r.contains("a") && r.contains("b"));
}

#[test]
fn bad_descriptions_are_refused_by_field() {
    let mut r = Registry::<()>::default();
    let mut i = info("a");
    i.name.clear();
    assert_eq!(
        r.add(i, (1, 1), ()).unwrap_err(),
        "workload_info.name is required"
    );
    let mut i = info("a");
    i.uid = "u".repeat(129);
    assert_eq!(
        r.add(i, (1, 1), ()).unwrap_err(),
        "uid longer than 128 bytes"
    );
    assert!(r.pods().is_empty());
}

#[test]
fn a_flood_of_adds_stops_at_the_cap() {
    // Attacker: an agent (or whoever reaches the socket) adding pods without end.
    let mut r = Registry::<()>::default();
    for n in 0..MAX_PODS {
        r.add(info(&n.to_string()), (1, n as u64), ()).unwrap();
    }
    let err = r.add(info("one-more"), (1, 1 << 40), ()).unwrap_err();
    assert!(err.contains("too many pods"), "{err}");
    // A known pod re-sent is still answered.
    assert!(matches!(r.add(info("7"), (1, 7), ()), Ok(Added::Same(()))));
    assert_eq!(r.pods().len(), MAX_PODS);
}

#[derive(Debug, Clone)]
enum Op {
    Add(u8, u8),
    Keep(u8),
    Del(u8),
    Snapshot,
    Connected,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u8..3).prop_map(|(u, n)| Op::Add(u, n)),
        (0u8..6).prop_map(Op::Keep),
        (0u8..6).prop_map(Op::Del),
        Just(Op::Snapshot),
        Just(Op::Connected),
    ]
}

proptest! {
    /// After a reconnect, a snapshot leaves exactly the pods added or kept since, and a pod
    /// re-sent with the same namespace keeps its entry (its listeners are never reopened).
    #[test]
    fn snapshot_leaves_exactly_the_re_sent_pods(before in proptest::collection::vec(op(), 0..30), after in proptest::collection::vec(op(), 0..30)) {
        let mut r = Registry::<u64>::default();
        let apply = |r: &mut Registry<u64>, o: &Op, sent: &mut std::collections::HashSet<String>| match o {
            Op::Add(u, n) => {
                let uid = u.to_string();
                let same = r.is_same(&uid, (0, u64::from(*n)));
                let seq = r.pods().get(&uid).map(|e| e.seq);
                r.add(info(&uid), (0, u64::from(*n)), 0).unwrap();
                if same { assert_eq!(r.pods()[&uid].seq, seq.unwrap()); }
                sent.insert(uid);
            }
            Op::Keep(u) => { if r.keep(&u.to_string()).is_ok() { sent.insert(u.to_string()); } }
            Op::Del(u) => { r.del(&u.to_string()); sent.remove(&u.to_string()); }
            Op::Snapshot => { r.snapshot_sent(); sent.clear(); }
            Op::Connected => { r.connected(); sent.clear(); }
        };
        let mut sent = std::collections::HashSet::new();
        for o in &before { apply(&mut r, o, &mut sent); }
        r.connected();
        sent.clear();
        for o in after.iter().filter(|o| !matches!(o, Op::Snapshot | Op::Connected)) {
            apply(&mut r, o, &mut sent);
        }
        r.snapshot_sent();
        let left: std::collections::HashSet<String> = r.pods().keys().cloned().collect();
        prop_assert_eq!(left, sent);
    }
}
