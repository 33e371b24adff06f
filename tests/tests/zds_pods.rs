//! ZDS pods in the ztunnel: pods a CNI agent hands over (uid, who they are, their network
//! namespace as an fd) get the in-pod listeners (15008, 15001, 15006) inside their namespace and
//! mesh traffic both ways; a deleted pod's listeners refuse and its connections are cut after
//! the drain timeout; a re-sync after the agent reconnects leaves live connections alone; a bad
//! namespace fd or an identity that disagrees with the workload's is refused with a clear error
//! and the other pods keep working. Root only (network namespaces; skipped otherwise), in the
//! `netns` nextest group. Block 127.221.x.x (the ztunnel's own address); pods `a2*` on a
//! private bridge (10.221.0.x, inside the test's namespaces only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use mesh_dataplane::zds::{PodEvent, PodInfo};
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

fn config() -> String {
    let mut c = String::from(
        "apiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {name: n1}\nspec:\n  address: 127.221.0.1\n  workloads: [ns/a, ns/b]\n",
    );
    for (name, ip) in [("a", 2), ("b", 3)] {
        c.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{address: 10.221.0.{ip}, serviceAccount: {name}}}\n"
        ));
    }
    c
}

fn info(uid: &str, name: &str, sa: &str) -> PodInfo {
    PodInfo {
        uid: uid.to_owned(),
        name: name.to_owned(),
        namespace: "ns".to_owned(),
        service_account: sa.to_owned(),
        trust_domain: String::new(),
    }
}

fn netns_fd(ns: &NetNs) -> OwnedFd {
    std::fs::File::open(format!("/var/run/netns/{}", ns.name))
        .unwrap()
        .into()
}

/// The agent's side of the event channel: sends an event, returns the reply.
struct Agent(mpsc::Sender<PodEvent>);

impl Agent {
    fn ask(
        &self,
        ev: impl FnOnce(oneshot::Sender<Result<(), String>>) -> PodEvent,
    ) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.0.blocking_send(ev(tx)).unwrap();
        rx.blocking_recv().unwrap()
    }
    fn add(&self, info: PodInfo, netns: OwnedFd) -> Result<(), String> {
        self.ask(|reply| PodEvent::Add { info, netns, reply })
    }
    fn keep(&self, uid: &str) -> Result<(), String> {
        let uid = uid.to_owned();
        self.ask(|reply| PodEvent::Keep { uid, reply })
    }
    fn del(&self, uid: &str) -> Result<(), String> {
        let uid = uid.to_owned();
        self.ask(|reply| PodEvent::Del { uid, reply })
    }
    fn snapshot(&self) -> Result<(), String> {
        self.ask(|reply| PodEvent::SnapshotSent { reply })
    }
    fn connected(&self) {
        self.0.blocking_send(PodEvent::Connected).unwrap();
    }
}

/// Opens a connection from inside the pod of `rt` to `dst`.
fn dial(rt: &tokio::runtime::Runtime, dst: &str) -> std::io::Result<TcpStream> {
    let dst: SocketAddr = dst.parse().unwrap();
    rt.block_on(rt.spawn(async move {
        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(dst))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))?
    }))
    .unwrap()
}

/// Writes `msg` on `s` (a stream of `rt`) and reads the echo back.
fn echo(
    rt: &tokio::runtime::Runtime,
    mut s: TcpStream,
    msg: &'static [u8],
) -> (TcpStream, std::io::Result<Vec<u8>>) {
    rt.block_on(rt.spawn(async move {
        let r = async {
            s.write_all(msg).await?;
            let mut buf = vec![0; msg.len()];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
                .await
                .map_err(|_| std::io::Error::other("echo timed out"))??;
            Ok(buf)
        }
        .await;
        (s, r)
    }))
    .unwrap()
}

/// The in-pod listeners, as `address what`.
fn in_pod_listeners(mesh: &InprocMesh) -> Vec<String> {
    let mut v: Vec<String> = mesh
        .proxy("n1")
        .listening()
        .iter()
        .filter(|l| l.what.contains("(in-pod)"))
        .map(|l| format!("{} {}", l.addr, l.what))
        .collect();
    v.sort();
    v
}

/// Two pods handed over as ZDS events: traffic both ways over HBONE from each pod's own
/// namespace; a re-sync keeps a live connection; a bad fd and a wrong identity are refused;
/// a deleted pod's listeners refuse and its connection is cut after the drain timeout.
#[test]
fn zds_pods_are_served_in_pod_and_re_synced_without_cuts() {
    let Some(mut sw) = switch("a2s") else {
        return;
    };
    let pods: Vec<NetNs> = ["a2a", "a2b"]
        .iter()
        .map(|n| NetNs::create(n).unwrap())
        .collect();
    for (i, ns) in pods.iter().enumerate() {
        sw.attach(ns.pod(), &[&format!("10.221.0.{}/24", i + 2)])
            .unwrap();
        mesh_dataplane::capture::install(&Default::default(), Some(&ns.name), false).unwrap();
    }
    let rts: Vec<tokio::runtime::Runtime> = pods.iter().map(NetNs::runtime).collect();
    for rt in &rts {
        rt.block_on(rt.spawn(echo_server("0.0.0.0:8080".parse().unwrap())))
            .unwrap();
    }
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
    // the captured outbound on the pod's loopback.
    let want: Vec<String> = [
        "0.0.0.0:15006 ns/a plaintext inbound (in-pod)",
        "0.0.0.0:15006 ns/b plaintext inbound (in-pod)",
        "0.0.0.0:15008 ns/a (in-pod)",
        "0.0.0.0:15008 ns/b (in-pod)",
        "127.0.0.1:15001 ns/a captured outbound (in-pod)",
        "127.0.0.1:15001 ns/b captured outbound (in-pod)",
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
    let cut = rts[1].block_on(rts[1].spawn(async move {
        let mut live = live;
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), live.read(&mut buf)).await
    }));
    match cut.unwrap() {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the deleted pod's connection was not cut: {other:?}"),
    }
    // b is still served: a (now outside the mesh) reaches it in plaintext through b's 15006.
    let s = dial(&rts[0], "10.221.0.3:8080").unwrap();
    let (_s, got) = echo(&rts[0], s, b"b lives");
    assert_eq!(got.unwrap(), b"b lives");
    drop(mesh);
}

// ---- End to end: the real ztunnel, the fake istiod and the fake istio-cni agent. ----

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
    let Some(mut sw) = switch("a2e") else {
        return;
    };
    let pods: Vec<NetNs> = ["a2c", "a2d"]
        .iter()
        .map(|n| NetNs::create(n).unwrap())
        .collect();
    for (i, ns) in pods.iter().enumerate() {
        sw.attach(ns.pod(), &[&format!("10.221.1.{}/24", i + 2)])
            .unwrap();
        // Istio's own in-pod rules, not ours: the drop-in case.
        istio_cni_rules(ns);
    }
    let rts: Vec<tokio::runtime::Runtime> = pods.iter().map(NetNs::runtime).collect();
    for rt in &rts {
        rt.block_on(rt.spawn(echo_server("0.0.0.0:8080".parse().unwrap())))
            .unwrap();
    }
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

    // Pod c arrives before istiod describes it: accepted, waiting, no listener (Istio starts
    // the pod's proxy, which has no workload to serve yet).
    assert_eq!(
        main.block_on(agent.add(&pod_c, &fd(&pods[0]))).unwrap(),
        Ok(())
    );
    let d = main.block_on(dump_until("c waiting", |d| {
        pod_state(d, uid_c) == "waiting"
    }));
    assert!(!serves_in_pod(&d, "ns/c"), "{d:#}");
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
    let cut = rts[1].block_on(rts[1].spawn(async move {
        let mut live = live;
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), live.read(&mut buf)).await
    }));
    match cut.unwrap() {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the deleted pod's connection was not cut: {other:?}"),
    }
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
    // None of them is described by istiod (the config): all wait, with no listener.
    assert_eq!(in_pod_listeners(&mesh), Vec::<String>::new());
    let dump = mesh.proxy("n1").core().unwrap().config_dump();
    let pods = dump["zdsPods"].as_array().unwrap();
    assert_eq!(pods.len(), 1024);
    assert!(pods.iter().all(|p| p["state"] == "waiting"));
}
