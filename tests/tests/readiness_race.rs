//! `/healthz/ready` of a ztunnel that follows istiod and a CNI agent answers 500 from its very
//! first answer until both istiod's first state and the agent's snapshot are applied: polled
//! from before the port opens, no 200 slips through between `Proxy::start` and the followers'
//! start (the readiness race found in issue 17's review).
//!
//! Istio's ztunnel is not ready before its initial xDS sync (istio/ztunnel `src/readiness.rs`,
//! the `proxy` and `state manager` tasks of `src/app.rs`) nor, in-pod, before the CNI agent's
//! snapshot (`src/inpod/workloadmanager.rs`: "we are only ready when we are connected").
//! Attacker's view: a control plane (or an agent) that stalls its first answer must not make
//! the node look ready to the kubelet, which would send it traffic it cannot place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_identity::LocalCa;
use mesh_tests::fake_cni::FakeCni;
use mesh_tests::istiod::FakeIstiod;
use mesh_tests::{Proc, bin, http};

/// Every status `/healthz/ready` answered, polled every 5 ms from before the port opens
/// (0: no answer yet), until aborted.
fn poll_readiness(addr: SocketAddr, seen: Arc<Mutex<Vec<u16>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let code = http(addr, "GET", "/healthz/ready")
                .await
                .map_or(0, |(s, _)| s);
            seen.lock().unwrap().push(code);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// The ztunnel with Istio's chart variables (`XDS_ADDRESS`, `CA_ADDRESS`, `INPOD_ENABLED`,
/// `INPOD_UDS`) against `istiod` and the agent socket `sock`, in `dir`.
fn ztunnel(
    dir: &std::path::Path,
    ip: IpAddr,
    istiod: &FakeIstiod,
    sock: &std::path::Path,
) -> Command {
    let mut cmd = Command::new(bin("ztunnel"));
    cmd.env_clear().current_dir(dir).args(["proxy", "ztunnel"]);
    for (k, v) in [
        ("CA_ADDRESS", format!("http://{}", istiod.ca_addr)),
        ("XDS_ADDRESS", format!("http://{}", istiod.xds_addr)),
        ("RUST_LOG", "info".into()),
        ("INPOD_ENABLED", "true".into()),
        ("INPOD_UDS", sock.display().to_string()),
        ("POD_NAME", "ztunnel-r4c3".into()),
        ("POD_NAMESPACE", "istio-system".into()),
        ("NODE_NAME", "node-x1".into()),
        ("INSTANCE_IP", ip.to_string()),
        // The DNS proxy is on by default (Istio's); this test is about readiness only.
        ("ISTIO_META_DNS_CAPTURE", "false".into()),
    ] {
        cmd.env(k, v);
    }
    cmd
}

/// Polls until the last answer is 200 (5 s).
async fn until_200(seen: &Arc<Mutex<Vec<u16>>>) {
    for _ in 0..500 {
        if seen.lock().unwrap().last() == Some(&200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never ready: {:?}", seen.lock().unwrap().last());
}

/// istiod is down when the ztunnel starts (its first answer delayed) and the agent holds its
/// snapshot: 500 from the first answer on; the snapshot alone does not make it ready; istiod's
/// first answer then does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_from_the_first_answer_until_istiod_and_the_agent_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
    for (f, text) in [
        (
            "var/run/secrets/istio/root-cert.pem",
            ca.trust_bundle().unwrap().to_pem(),
        ),
        (
            "var/run/secrets/tokens/istio-token",
            "test-token\n".to_owned(),
        ),
    ] {
        let f = dir.path().join(f);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    }
    let istiod = FakeIstiod::start(ca).await;
    istiod.stop();
    let sock = dir.path().join("ztunnel.sock");
    let mut agent = FakeCni::bind(&sock).unwrap();
    let ip: IpAddr = "127.229.1.1".parse().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let poller = poll_readiness(SocketAddr::new(ip, 15021), seen.clone());
    let z = Proc::start(
        "ztunnel",
        ztunnel(dir.path(), ip, &istiod, &sock),
        Some("ztunnel ready"),
    );
    assert_eq!(agent.accept().await.unwrap(), 1);
    // Stalled agent: a while without the snapshot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    // Stalled istiod: a while after the snapshot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let seen = seen.lock().unwrap();
        let answered: Vec<u16> = seen.iter().copied().filter(|c| *c != 0).collect();
        assert!(
            answered.len() > 10,
            "too few answers: {seen:?}\n{}",
            z.logs()
        );
        assert!(answered.iter().all(|c| *c == 500), "{answered:?}");
    }
    istiod.restart().await;
    until_200(&seen).await;
    poller.abort();
    let seen = seen.lock().unwrap();
    let first_200 = seen.iter().position(|c| *c == 200).unwrap();
    assert!(
        seen[..first_200].iter().all(|c| *c == 0 || *c == 500),
        "{seen:?}"
    );
}

/// Deterministic half of the race: the moment `Proxy::start` returns, before any follower has
/// started, a ztunnel whose config says a CNI agent will hand pods over (`--zds-socket`) is
/// already not ready, naming the agent's snapshot; the follower then takes the task over with
/// no gap (500 throughout), and the snapshot makes it ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_between_start_and_the_followers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ztunnel.sock");
    let mut agent = FakeCni::bind(&sock).unwrap();
    let yaml = "apiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {name: n1}\nspec:\n  address: 127.229.3.1\n  workloads: []\n";
    let mut mesh = mesh_tests::inproc::InprocMesh::new(yaml);
    let sock_arg = sock.display().to_string();
    mesh.ztunnel(
        "n1",
        &["--zds-socket", &sock_arg, "--readiness-port", "15021"],
    )
    .await;
    let ready = SocketAddr::new("127.229.3.1".parse().unwrap(), 15021);
    let (code, body) = http(ready, "GET", "/healthz/ready").await.unwrap();
    assert_eq!(code, 500, "{body}");
    assert!(body.contains(mesh_dataplane::zds::READINESS_TASK), "{body}");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let poller = poll_readiness(ready, seen.clone());
    mesh.proxy("n1")
        .core()
        .unwrap()
        .follow_cni_agent(sock.clone());
    assert_eq!(agent.accept().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.lock().unwrap().iter().all(|c| *c == 500), "{seen:?}");
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    until_200(&seen).await;
    poller.abort();
}
