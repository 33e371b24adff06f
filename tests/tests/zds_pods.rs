//! ZDS pods in the ztunnel's runtime, the pod events fed directly (as `zds::serve` hands
//! them over): pods get the in-pod listeners (15008, 15001, 15006) inside their namespace and
//! mesh traffic both ways; a deleted pod's listeners refuse and its connections are cut after
//! the drain timeout; a re-sync after the agent reconnects leaves live connections alone; a bad
//! namespace fd or an identity that disagrees with the workload's is refused with a clear error
//! and the other pods keep working; a flood of pods is capped. The real binary with the fake
//! istio-cni agent: `zds_pods_e2e.rs`. Root only (network namespaces; skipped otherwise), in
//! the `netns` nextest group. Block 127.221.x.x (the ztunnel's own address); pods `a2*` on a
//! private bridge (10.221.0.x, inside the test's namespaces only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod zds_pods_support;

use std::os::fd::OwnedFd;
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use zds_pods_support::*;

/// Two pods handed over as ZDS events: traffic both ways over HBONE from each pod's own
/// namespace; a re-sync keeps a live connection; a bad fd and a wrong identity are refused;
/// a deleted pod's listeners refuse and its connection is cut after the drain timeout.
#[test]
fn zds_pods_are_served_in_pod_and_re_synced_without_cuts() {
    let Some((_sw, pods, rts)) = echo_pods("a2s", &["a2a", "a2b"], 0, |ns| {
        mesh_dataplane::capture::install(&Default::default(), Some(&ns.name), false).unwrap();
    }) else {
        return;
    };
    let main = tokio::runtime::Runtime::new().unwrap();
    let mut mesh = InprocMesh::new(&config());
    main.block_on(mesh.ztunnel(
        "n1",
        &[
            "--zds-socket",
            "/nonexistent/a2.sock",
            "--drain-timeout",
            "1s",
        ],
    ));
    // ZDS on, no pod handed over yet: the workloads wait, with no listener anywhere.
    assert_eq!(in_pod_listeners(&mesh), Vec::<String>::new());
    let (tx, rx) = mpsc::channel(4);
    mesh.proxy("n1").serve_pods(rx);
    let agent = Agent(tx);
    agent.connected();
    agent
        .add(info("uid-a", "a", "a"), netns_fd(&pods[0]))
        .unwrap();
    agent
        .add(info("uid-b", "b", "b"), netns_fd(&pods[1]))
        .unwrap();
    agent.snapshot().unwrap();
    // Per pod, as Istio's ztunnel binds them in the pod (`*:15008`, `*:15006`, transparent
    // for istio-cni's TPROXY rules; istio.io "Ztunnel traffic redirection", `ss -ntlp`), and
    // the captured outbound on the pod's loopback; and the DNS proxy on the pod's loopback,
    // on by default as in Istio's ztunnel (queries: `zds_pods_dns.rs`).
    let want: Vec<String> = [
        "0.0.0.0:15006 ns/a plaintext inbound (in-pod)",
        "0.0.0.0:15006 ns/b plaintext inbound (in-pod)",
        "0.0.0.0:15008 ns/a (in-pod)",
        "0.0.0.0:15008 ns/b (in-pod)",
        "127.0.0.1:15001 ns/a captured outbound (in-pod)",
        "127.0.0.1:15001 ns/b captured outbound (in-pod)",
        "127.0.0.1:15053 ns/a (in-pod) dns",
        "127.0.0.1:15053 ns/b (in-pod) dns",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(in_pod_listeners(&mesh), want);

    // Both ways, each over HBONE from the pod's own namespace (mTLS as its identity).
    let s = dial(&rts[0], "10.221.0.3:8080").unwrap();
    let (_s, got) = echo(&rts[0], s, b"a to b");
    assert_eq!(got.unwrap(), b"a to b");
    let live = dial(&rts[1], "10.221.0.2:8080").unwrap();
    let (live, got) = echo(&rts[1], live, b"b to a");
    assert_eq!(got.unwrap(), b"b to a");
    let metrics = mesh.proxy("n1").metrics_text();
    for src in ["a", "b"] {
        let principal = format!("spiffe://cluster.local/ns/ns/sa/{src}");
        let n = metric(
            &metrics,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", &principal),
            ],
        );
        assert!(n >= 1.0, "no mTLS connection from {src}:\n{metrics}");
    }

    // Attacker in pod a: a connection to b's own plaintext port (its wildcard in-pod
    // listener) must not be delivered to that listener (a loop through the proxy): the
    // proxy's own endpoints are never a destination.
    let s = dial(&rts[0], "10.221.0.3:15006").unwrap();
    let closed = rts[0].block_on(rts[0].spawn(async move {
        let mut s = s;
        let _ = s.write_all(b"loop?").await;
        let mut buf = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await
    }));
    match closed.unwrap() {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("a connection to the proxy's own port was carried: {other:?}"),
    }
    mesh.expect_log(
        "n1",
        "captured outbound connection to the proxy's own listener: closed",
    );

    // The agent reconnects and re-syncs (a re-sent with the same namespace, b kept): nothing
    // is reopened, and b's open connection to a keeps echoing.
    let before = in_pod_listeners(&mesh);
    agent.connected();
    agent
        .add(info("uid-a", "a", "a"), netns_fd(&pods[0]))
        .unwrap();
    agent.keep("uid-b").unwrap();
    agent.snapshot().unwrap();
    assert_eq!(in_pod_listeners(&mesh), before);
    let (live, got) = echo(&rts[1], live, b"across the re-sync");
    assert_eq!(got.unwrap(), b"across the re-sync");

    // Attacks and mistakes, each refused by reason; the pods served keep working.
    // A regular file instead of a network namespace (setns(2) refuses it: EINVAL).
    let file: OwnedFd = tempfile::tempfile().unwrap().into();
    let err = agent.add(info("uid-c", "c", "c"), file).unwrap_err();
    assert!(err.contains("not a network namespace"), "{err}");
    // A pod claiming b's name with another service account (Istio matches pods to workloads
    // by name, namespace and service account: `WorkloadInfo::matches`).
    let err = agent
        .add(info("uid-x", "b", "evil"), netns_fd(&pods[0]))
        .unwrap_err();
    assert!(err.contains("service account \"evil\""), "{err}");
    // Keep of a pod never added (Istio's statemanager errors too).
    assert!(agent.keep("uid-never").is_err());
    let (live, got) = echo(&rts[1], live, b"still here");
    assert_eq!(got.unwrap(), b"still here");
    let dump = mesh.proxy("n1").core().unwrap().config_dump();
    let states: Vec<(String, String)> = dump["zdsPods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["uid"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("uid-a".into(), "served".into()),
            ("uid-b".into(), "served".into())
        ]
    );

    // Pod a is deleted: its listeners close at once (new connections are refused), and its
    // open connection is cut once the drain timeout (1 s) has passed.
    agent.del("uid-a").unwrap();
    let left = in_pod_listeners(&mesh);
    assert!(!left.iter().any(|l| l.contains("ns/a ")), "{left:?}");
    // (The CNI agent removes the pod's capture rules as it deletes it.)
    mesh_dataplane::capture::remove(Some(&pods[0].name), false).unwrap();
    for port in ["10.221.0.2:15008", "10.221.0.2:15006", "127.0.0.1:15001"] {
        let e = dial(&rts[0], port).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{port}: {e}"
        );
    }
    assert_cut(&rts[1], live);
    // b is still served: a (now outside the mesh) reaches it in plaintext through b's 15006.
    let s = dial(&rts[0], "10.221.0.3:8080").unwrap();
    let (_s, got) = echo(&rts[0], s, b"b lives");
    assert_eq!(got.unwrap(), b"b lives");
    drop(mesh);
}

fn netns_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "netns")
        .count()
}

/// Attacker (or a runaway agent): adds without end, every pod naming the same namespace. The
/// ztunnel enters that namespace once (one thread, however many uids), and refuses pods past
/// its cap (1024) with a clear error instead of growing; a known pod re-sent is still fine.
#[test]
fn a_flood_of_pods_is_capped_and_shares_one_namespace_thread() {
    let Some(ns) = NetNs::create("a2f") else {
        return;
    };
    let main = tokio::runtime::Runtime::new().unwrap();
    let mut mesh = InprocMesh::new(&config().replace("127.221.0.1", "127.221.2.1"));
    main.block_on(mesh.ztunnel("n1", &["--zds-socket", "/nonexistent/a2.sock"]));
    let (tx, rx) = mpsc::channel(4);
    mesh.proxy("n1").serve_pods(rx);
    let agent = Agent(tx);
    agent.connected();
    let before = netns_threads();
    for n in 0..1024 {
        let uid = format!("flood-{n}");
        agent
            .add(info(&uid, &format!("p{n}"), "sa"), netns_fd(&ns))
            .unwrap_or_else(|e| panic!("pod {n}: {e}"));
    }
    assert_eq!(netns_threads(), before + 1, "one thread for one namespace");
    let err = agent
        .add(info("flood-1024", "p1024", "sa"), netns_fd(&ns))
        .unwrap_err();
    assert!(err.contains("too many pods"), "{err}");
    assert_eq!(
        agent.add(info("flood-7", "p7", "sa"), netns_fd(&ns)),
        Ok(())
    );
    // None of them is described by istiod (the config): all wait. Their one namespace has
    // one set of in-pod listeners, bound on the first Add (as Istio's ztunnel starts a pod's
    // proxy on its Add, before istiod describes it: 15008, 15006, 15001, DNS 15053); the
    // others cannot bind it again.
    assert_eq!(in_pod_listeners(&mesh).len(), 4);
    let dump = mesh.proxy("n1").core().unwrap().config_dump();
    let pods = dump["zdsPods"].as_array().unwrap();
    assert_eq!(pods.len(), 1024);
    assert!(pods.iter().all(|p| p["state"] == "waiting"));
}
