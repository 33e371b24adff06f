//! ZDS pods, review fixes (Y1): a pod gets its in-pod listeners when the agent hands it over,
//! before istiod describes it, and its connections wait (bounded) for the workload; the source
//! of an in-pod outbound connection is the pod's own workload, never another pod's whose
//! address the client spoofs; a pod shadowed by a re-created pod of the same name is drained.
//! Root only (network namespaces; skipped otherwise), in the `netns` nextest group. Node
//! addresses 127.221.128.x/127.221.129.x; pods `y1*` on private bridges (10.221.128.x, inside
//! the test's namespaces only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod zds_pods_support;

use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use zds_pods_support::{Agent, dial, echo, in_pod_listeners, info, netns_fd};

/// Node `n1` at `node` with the workloads `names` (`ns/<name>` at 10.221.128.<ip>, service
/// account `<name>`).
fn config(node: &str, names: &[(&str, u8)]) -> String {
    let list: Vec<String> = names.iter().map(|(n, _)| format!("ns/{n}")).collect();
    let mut c = format!(
        "apiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {{name: n1}}\nspec:\n  address: {node}\n  workloads: [{}]\n",
        list.join(", ")
    );
    for (name, ip) in names {
        c.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{address: 10.221.128.{ip}, serviceAccount: {name}}}\n"
        ));
    }
    c
}

/// Pods `names` on bridge `switch`, each at 10.221.128.<ip> with capture rules and an echo
/// server on :8080; their runtimes.
fn pods(
    switch_name: &str,
    names: &[(&str, u8)],
) -> Option<(
    Vec<NetNs>,
    Vec<tokio::runtime::Runtime>,
    mesh_dataplane::netns::Switch,
)> {
    let mut sw = switch(switch_name)?;
    let mut nss = Vec::new();
    for (name, ip) in names {
        let ns = NetNs::create(name)?;
        sw.attach(ns.pod(), &[&format!("10.221.128.{ip}/24")])
            .unwrap();
        mesh_dataplane::capture::install(&Default::default(), Some(&ns.name), false).unwrap();
        nss.push(ns);
    }
    let rts: Vec<_> = nss.iter().map(NetNs::runtime).collect();
    for rt in &rts {
        rt.block_on(rt.spawn(echo_server("0.0.0.0:8080".parse().unwrap())))
            .unwrap();
    }
    Some((nss, rts, sw))
}

/// Writes `msg` on `s` and reads up to its length back: the echo, or how the stream ended
/// (`Ok(empty)` on a close, `Err` on a reset or after `wait`).
async fn exchange(
    mut s: TcpStream,
    msg: &'static [u8],
    wait: Duration,
) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut buf = vec![0; msg.len()];
    let mut got = 0;
    while got < msg.len() {
        match tokio::time::timeout(wait, s.read(&mut buf[got..])).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("timed out")),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Review finding 1: the ack of an Add means the pod's traffic has somewhere to go. Istio's
/// ztunnel starts the pod's proxy (binds 15001, 15006, 15008 in the pod) when it handles the
/// Add, before it acks, whether or not istiod has sent the workload yet (istio/ztunnel
/// `src/inpod/statemanager.rs`: `add_workload` → `start_proxy`; the proxy then waits for the
/// workload's state). Before the fix, the pod got no listeners until istiod described it, so
/// istio-cni's redirect to 127.0.0.1:15001 met a closed port.
#[test]
fn a_pod_is_served_on_add_before_istiod_describes_it() {
    let Some((_nss, rts, _sw)) = pods("y1s", &[("y1a", 2), ("y1b", 3)]) else {
        return;
    };
    let main = tokio::runtime::Runtime::new().unwrap();
    let mut mesh = InprocMesh::new(&config("127.221.128.1", &[("a", 2)]));
    main.block_on(mesh.ztunnel("n1", &["--zds-socket", "/nonexistent/y1.sock"]));
    let (tx, rx) = mpsc::channel(4);
    mesh.proxy("n1").serve_pods(rx);
    let agent = Agent(tx);
    agent.connected();
    agent
        .add(info("uid-a", "a", "a"), netns_fd(&_nss[0]))
        .unwrap();
    // b: istiod knows nothing of it yet; the ack still means its listeners are bound.
    agent
        .add(info("uid-b", "b", "b"), netns_fd(&_nss[1]))
        .unwrap();
    agent.snapshot().unwrap();
    let got = in_pod_listeners(&mesh);
    for want in [
        "0.0.0.0:15006 ns/b plaintext inbound (in-pod)",
        "0.0.0.0:15008 ns/b (in-pod)",
        "127.0.0.1:15001 ns/b captured outbound (in-pod)",
    ] {
        assert!(got.iter().any(|l| l == want), "{want} not in {got:?}");
    }

    // Attacker or unlucky pod: b connects out while istiod never describes it. The
    // connection is accepted, waits at most 5 s for the workload, then is closed (one client
    // cannot hold a permit longer than that bound), with a clear log line.
    let s = dial(&rts[1], "10.221.128.2:8080").unwrap();
    let t0 = tokio::time::Instant::now();
    let r = rts[1].block_on(exchange(s, b"too early", Duration::from_secs(10)));
    assert!(matches!(&r, Ok(v) if v.is_empty()) || r.is_err(), "{r:?}");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(9),
        "{waited:?}"
    );
    mesh.expect_log(
        "n1",
        "refused: no source workload for an in-pod outbound connection",
    );

    // A connection made before istiod describes b waits, and goes through once it does: as
    // b's identity, over HBONE to a.
    let s = dial(&rts[1], "10.221.128.2:8080").unwrap();
    let pending = rts[1].spawn(exchange(s, b"b waited", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(500));
    main.block_on(
        mesh.proxy("n1")
            .apply_yaml(&config("127.221.128.1", &[("a", 2), ("b", 3)])),
    )
    .unwrap();
    let got = rts[1].block_on(pending).unwrap();
    assert_eq!(got.unwrap(), b"b waited");
    let metrics = mesh.proxy("n1").metrics_text();
    let n = metric(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_principal", "spiffe://cluster.local/ns/ns/sa/b"),
        ],
    );
    assert!(n >= 1.0, "{metrics}");
}

/// Review findings 2 and 3. Attacker in pod a (NET_ADMIN): adds pod b's address to its own
/// loopback and connects out from it. Before the fix the ztunnel picked the source by the
/// peer's address and tunnelled as b (b's certificate). Istio's ztunnel takes the in-pod
/// source from the pod the listener belongs to (istio/ztunnel `src/proxy/outbound.rs`,
/// `OutboundConnection` built per pod with the pod's identity). Then a is re-created
/// (StatefulSet: the new uid's Add before the old one's Del): the old pod's connections get
/// the drain bound (1 s) instead of living on.
#[test]
fn a_spoofed_source_is_refused_and_a_shadowed_pod_is_drained() {
    let names = [("y1c", 2), ("y1d", 3), ("y1e", 4), ("y1f", 5)];
    let Some((nss, rts, _sw)) = pods("y1t", &names) else {
        return;
    };
    let main = tokio::runtime::Runtime::new().unwrap();
    let cfg = config("127.221.129.1", &[("a", 2), ("b", 3), ("c", 4)]);
    let mut mesh = InprocMesh::new(&cfg);
    main.block_on(mesh.ztunnel(
        "n1",
        &[
            "--zds-socket",
            "/nonexistent/y1.sock",
            "--drain-timeout",
            "1s",
        ],
    ));
    let (tx, rx) = mpsc::channel(4);
    mesh.proxy("n1").serve_pods(rx);
    let agent = Agent(tx);
    agent.connected();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let uid = format!("uid-{name}");
        agent
            .add(info(&uid, name, name), netns_fd(&nss[i]))
            .unwrap();
    }
    agent.snapshot().unwrap();

    // a to c, as itself: fine.
    let live = dial(&rts[0], "10.221.128.4:8080").unwrap();
    let (live, got) = echo(&rts[0], live, b"a to c");
    assert_eq!(got.unwrap(), b"a to c");

    // a takes b's address and connects to c from it.
    nss[0].run(&["ip", "addr", "add", "10.221.128.3/32", "dev", "lo"]);
    let spoofed = rts[0].block_on(rts[0].spawn(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind("10.221.128.3:0".parse().unwrap())?;
        let s = tokio::time::timeout(
            Duration::from_secs(3),
            sock.connect("10.221.128.4:8080".parse().unwrap()),
        )
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
        exchange(s, b"as b", Duration::from_secs(5)).await
    }));
    let r = spoofed.unwrap();
    assert!(
        matches!(&r, Ok(v) if v.is_empty()) || r.is_err(),
        "carried: {r:?}"
    );
    mesh.expect_log("n1", "client address is not the address of the workload");
    let metrics = mesh.proxy("n1").metrics_text();
    let as_b = metric(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[("source_principal", "spiffe://cluster.local/ns/ns/sa/b")],
    );
    assert_eq!(as_b, 0.0, "a connection used b's identity:\n{metrics}");
    let refused = metric(
        &metrics,
        "mesh_connections_refused_total",
        &[("listener", "outbound"), ("limit", "source")],
    );
    assert!(refused >= 1.0, "{metrics}");

    // a is re-created in a new sandbox (new uid, same name) before the old uid is deleted:
    // the new pod serves a (15008, 15006, 15001, DNS 15053), the old one's connection is cut
    // after the drain bound.
    agent
        .add(info("uid-a2", "a", "a"), netns_fd(&nss[3]))
        .unwrap();
    let cut = rts[0].block_on(rts[0].spawn(async move {
        let mut live = live;
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), live.read(&mut buf)).await
    }));
    match cut.unwrap() {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the shadowed pod's connection was not cut: {other:?}"),
    }
    let listeners = in_pod_listeners(&mesh);
    assert_eq!(
        listeners.iter().filter(|l| l.contains(" ns/a ")).count(),
        4,
        "{listeners:?}"
    );
}
