//! ZDS end to end: the real ztunnel following the fake istiod, with pods handed over by the
//! fake istio-cni agent (`mesh_tests::fake_cni`, Istio's wire format, the namespace fd over
//! `SCM_RIGHTS`) into pods that carry Istio's own in-pod iptables rules. Root only, in the
//! `netns` nextest group. Block 127.221.1.x; pods `a2*` on a private bridge (10.221.1.x).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod zds_pods_support;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::*;
use zds_pods_support::*;

struct Istiod {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    token: std::path::PathBuf,
    istiod: mesh_tests::istiod::FakeIstiod,
}

async fn istiod() -> Istiod {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = mesh_identity::LocalCa::load_or_create(dir.path().join("ca")).unwrap();
    let root = dir.path().join("root-cert.pem");
    std::fs::write(&root, ca.trust_bundle().unwrap().to_pem()).unwrap();
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "test-token\n").unwrap();
    let istiod = mesh_tests::istiod::FakeIstiod::start(ca).await;
    Istiod {
        _dir: dir,
        root,
        token,
        istiod,
    }
}

const NODE_E2E: &str = "127.221.1.1";

async fn dump_until(what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let admin: SocketAddr = format!("{NODE_E2E}:15000").parse().unwrap();
    let mut last = serde_json::Value::Null;
    for _ in 0..250 {
        let text = http_get(admin, "/config_dump").await;
        last = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if f(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("config_dump never showed {what}:\n{last:#}");
}

fn pod_state(dump: &serde_json::Value, uid: &str) -> String {
    dump["zdsPods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["uid"] == uid)
        .and_then(|p| p["state"].as_str())
        .unwrap_or("absent")
        .to_owned()
}

/// Whether workload `w`'s in-pod HBONE listener is up.
fn serves_in_pod(dump: &serde_json::Value, w: &str) -> bool {
    let what = format!("{w} (in-pod)");
    dump["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["serves"] == what.as_str())
}

/// istio-cni's in-pod redirection, as Istio installs it in each ambient pod (istio.io,
/// "Ztunnel traffic redirection", `iptables-save` in a pod): inbound TPROXY to 15008 (HBONE)
/// and 15006 (plaintext), outbound REDIRECT to 15001, the ztunnel's mark 0x539 (1337) exempt.
const ISTIO_CNI_RULES: &str = "*mangle
:ISTIO_OUTPUT - [0:0]
:ISTIO_PRERT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -i lo -p tcp -j ACCEPT
-A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15008 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff
-A ISTIO_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff
COMMIT
*nat
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
";

fn istio_cni_rules(ns: &NetNs) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), ISTIO_CNI_RULES).unwrap();
    ns.run(&[
        "iptables-restore",
        "--noflush",
        &file.path().display().to_string(),
    ]);
}

/// The real ztunnel following the fake istiod, with pods handed over by the fake istio-cni
/// agent over the ZDS socket (Istio's wire format, the namespace fd over `SCM_RIGHTS`).
#[test]
fn cni_agent_hands_pods_to_the_ztunnel_end_to_end() {
    // Istio's own in-pod rules, not ours: the drop-in case.
    let Some((_sw, pods, rts)) = echo_pods("a2e", &["a2c", "a2d"], 1, istio_cni_rules) else {
        return;
    };
    let main = tokio::runtime::Runtime::new().unwrap();
    let f = main.block_on(istiod());
    let sock_dir = tempfile::tempdir().unwrap();
    let mut agent = {
        let _g = main.enter();
        mesh_tests::fake_cni::FakeCni::bind(&sock_dir.path().join("ztunnel.sock")).unwrap()
    };
    let mut cmd = std::process::Command::new(bin("ztunnel"));
    cmd.args(["--node", "n1", "--address", NODE_E2E])
        .arg("--xds-address")
        .arg(format!("http://{}", f.istiod.xds_addr))
        .arg("--ca-address")
        .arg(format!("http://{}", f.istiod.ca_addr))
        .arg("--xds-root-ca")
        .arg(&f.root)
        .arg("--xds-token")
        .arg(&f.token)
        .arg("--zds-socket")
        .arg(agent.path())
        .args([
            "--drain-timeout",
            "1s",
            "--log",
            "debug,h2=info,rustls=info,hyper=info",
        ]);
    let _zt = Proc::start("ztunnel n1", cmd, Some("ztunnel ready"));
    assert_eq!(main.block_on(agent.accept()).unwrap(), 1, "hello V1");
    // Kubernetes pod uids (the ZDS key) differ from the workload API's
    // `Kubernetes//Pod/ns/name`: pods are matched by namespace and name.
    let (uid_c, uid_d) = (
        "6a1f2c0e-0c01-4c0e-9a51-c0ffee000c0c",
        "6a1f2c0e-0c01-4c0e-9a51-c0ffee000d0d",
    );
    let pod_c = mesh_tests::fake_cni::Pod::new(uid_c, "ns", "c", "c");
    let pod_d = mesh_tests::fake_cni::Pod::new(uid_d, "ns", "d", "d");
    let fd = |ns: &NetNs| std::fs::File::open(format!("/var/run/netns/{}", ns.name)).unwrap();

    // Pod c arrives before istiod describes it: accepted, waiting, and its in-pod listeners
    // bound before the ack (Istio starts the pod's proxy on the Add; its connections wait for
    // the workload: `zds_pods_review.rs`).
    assert_eq!(
        main.block_on(agent.add(&pod_c, &fd(&pods[0]))).unwrap(),
        Ok(())
    );
    let d = main.block_on(dump_until("c waiting", |d| {
        pod_state(d, uid_c) == "waiting"
    }));
    assert!(serves_in_pod(&d, "ns/c"), "{d:#}");
    use mesh_tests::istiod::{ADDRESS_TYPE, address_of_workload, workload};
    f.istiod.set_many(
        ADDRESS_TYPE,
        ["c", "d"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let ip: std::net::IpAddr = format!("10.221.1.{}", i + 2).parse().unwrap();
                (
                    format!("Kubernetes//Pod/ns/{n}"),
                    address_of_workload(workload(n, "ns", ip, n, "n1", &[])),
                )
            })
            .collect(),
    );
    assert_eq!(
        main.block_on(agent.add(&pod_d, &fd(&pods[1]))).unwrap(),
        Ok(())
    );
    // Not ready before the agent's first snapshot (Istio's ztunnel: ready "after we received
    // our first snapshot", src/inpod/linux/statemanager.rs `ready`).
    let readiness: SocketAddr = format!("{NODE_E2E}:15021").parse().unwrap();
    let ready = || {
        main.block_on(http(readiness, "GET", "/healthz/ready"))
            .unwrap()
    };
    let (code, body) = ready();
    assert_eq!(code, 500);
    assert!(body.contains(mesh_dataplane::zds::READINESS_TASK), "{body}");
    assert_eq!(main.block_on(agent.snapshot_sent()).unwrap(), Ok(()));
    let mut body = String::new();
    for _ in 0..100 {
        body = ready().1;
        if !body.contains(mesh_dataplane::zds::READINESS_TASK) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !body.contains(mesh_dataplane::zds::READINESS_TASK),
        "{body}"
    );
    main.block_on(dump_until("both served", |d| {
        pod_state(d, uid_c) == "served"
            && pod_state(d, uid_d) == "served"
            && serves_in_pod(d, "ns/c")
            && serves_in_pod(d, "ns/d")
    }));

    // Mesh traffic both ways, mTLS with each pod's identity from Istio's CA.
    let s = dial(&rts[0], "10.221.1.3:8080").unwrap();
    assert_eq!(echo(&rts[0], s, b"c to d").1.unwrap(), b"c to d");
    let live = dial(&rts[1], "10.221.1.2:8080").unwrap();
    let (live, got) = echo(&rts[1], live, b"d to c");
    assert_eq!(got.unwrap(), b"d to c");
    let metrics: SocketAddr = format!("{NODE_E2E}:15020").parse().unwrap();
    for src in ["c", "d"] {
        let principal = format!("spiffe://cluster.local/ns/ns/sa/{src}");
        main.block_on(scrape_until(metrics, "mTLS from the pod", |t| {
            metric(
                t,
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "destination"),
                    ("connection_security_policy", "mutual_tls"),
                    ("source_principal", &principal),
                ],
            ) >= 1.0
        }));
    }

    // The agent restarts: the ztunnel reconnects, the agent re-sends its pods and the
    // snapshot; d's open connection to c keeps echoing throughout.
    agent.disconnect();
    assert_eq!(main.block_on(agent.accept()).unwrap(), 1);
    let (acks, snap) = main.block_on(agent.resync()).unwrap();
    assert!(acks.iter().all(|(_, a)| a.is_ok()), "{acks:?}");
    assert_eq!(snap, Ok(()));
    let (live, got) = echo(&rts[1], live, b"across the agent restart");
    assert_eq!(got.unwrap(), b"across the agent restart");

    // A pod whose namespace fd is a regular file: refused with the reason; the rest works.
    let file = tempfile::tempfile().unwrap();
    let bad = mesh_tests::fake_cni::Pod::new("bad-uid", "ns", "e", "e");
    let ack = main.block_on(agent.add(&bad, &file)).unwrap();
    let err = ack.unwrap_err();
    assert!(err.contains("not a network namespace"), "{err}");
    let s = dial(&rts[0], "10.221.1.3:8080").unwrap();
    assert_eq!(
        echo(&rts[0], s, b"still served").1.unwrap(),
        b"still served"
    );
    let (live, got) = echo(&rts[1], live, b"still live");
    assert_eq!(got.unwrap(), b"still live");

    // Pod c is deleted: its listeners go, its connection is cut after the drain timeout.
    assert_eq!(main.block_on(agent.del(uid_c)).unwrap(), Ok(()));
    main.block_on(dump_until("c gone", |d| {
        pod_state(d, uid_c) == "absent" && !serves_in_pod(d, "ns/c")
    }));
    assert_cut(&rts[1], live);
}
