//! The real ztunnel following a fake istiod (Delta ADS with Istio's workload API, and Istio's
//! CA service): workloads, services and policies appear and disappear and traffic follows; a
//! NACKed resource leaves the rest applied and is reported; the control plane killed or
//! black-holed keeps traffic on the last state until it returns; certificates come from the
//! CA on behalf of each workload and rotate under traffic without a failed request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh_identity::LocalCa;
use mesh_tests::istiod::{
    ADDRESS_TYPE, AUTHORIZATION_TYPE, FakeIstiod, address_of_service, address_of_workload, service,
    workload,
};
use mesh_tests::{Net, Proc, bin, connect_from, http, http_app, http_get};
use mesh_xds::pb;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SVC: &str = "ns/server.ns.svc.cluster.local";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    token: PathBuf,
    istiod: FakeIstiod,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
    let root = dir.path().join("root-cert.pem");
    std::fs::write(&root, ca.trust_bundle().unwrap().to_pem()).unwrap();
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "test-token\n").unwrap();
    let istiod = FakeIstiod::start(ca).await;
    Fixture {
        _dir: dir,
        root,
        token,
        istiod,
    }
}

/// A ztunnel for `node` at `addr` following `xds` (and the fake's CA).
fn ztunnel(f: &Fixture, xds: SocketAddr, node: &str, addr: IpAddr, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("ztunnel"));
    cmd.args(["--node", node, "--address", &addr.to_string()])
        .arg("--xds-address")
        .arg(format!("http://{xds}"))
        .arg("--ca-address")
        .arg(format!("http://{}", f.istiod.ca_addr))
        .arg("--xds-root-ca")
        .arg(&f.root)
        .arg("--xds-token")
        .arg(&f.token)
        .args(["--log", "debug,h2=info,rustls=info,hyper=info"])
        .args(extra);
    Proc::start(&format!("ztunnel {node}"), cmd, Some("ztunnel ready"))
}

fn client_wl(net: Net) -> pb::workload::Workload {
    workload("client", "ns", net.client(), "client", "a", &[])
}

fn server_wl(name: &str, ip: IpAddr) -> pb::workload::Workload {
    workload(name, "ns", ip, "server", "b", &[(SVC, 9000, 9000)])
}

/// The client on node a, the server on node b, and the server's service.
fn seed(i: &FakeIstiod, net: Net) {
    i.set_many(
        ADDRESS_TYPE,
        vec![
            (
                "Kubernetes//Pod/ns/client".into(),
                address_of_workload(client_wl(net)),
            ),
            (
                "Kubernetes//Pod/ns/server".into(),
                address_of_workload(server_wl("server", net.server())),
            ),
            (
                SVC.into(),
                address_of_service(service("server", "ns", net.vip().ip(), &[(9000, 9000)])),
            ),
        ],
    );
}

fn server2_ip(net: Net) -> IpAddr {
    format!("127.{}.1.21", net.b).parse().unwrap()
}

/// One HTTP request from the client workload to the service VIP; the app's body, or why not.
async fn get_via_vip(net: Net) -> Result<String, String> {
    let fut = async {
        let s = connect_from(net.client(), net.vip())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut s = tokio::io::BufReader::new(s);
        s.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nhost: server\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("closed after {:?}", String::from_utf8_lossy(&buf)));
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return Ok(body[..len].to_owned());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Retries (every 50 ms, up to 15 s) until `want` holds for a request's outcome.
async fn until(net: Net, what: &str, want: impl Fn(&Result<String, String>) -> bool) {
    let mut last = Err(String::new());
    for _ in 0..300 {
        last = get_via_vip(net).await;
        if want(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: never; last outcome {last:?}");
}

fn app_of(r: &Result<String, String>) -> Option<&str> {
    r.as_ref().ok().and_then(|b| b.split(' ').next())
}

/// The status of a ztunnel's `/healthz/ready`.
async fn ready(node: IpAddr) -> u16 {
    http(SocketAddr::new(node, 15021), "GET", "/healthz/ready")
        .await
        .unwrap()
        .0
}

async fn config_dump(admin: IpAddr) -> serde_json::Value {
    let text = http_get(SocketAddr::new(admin, 15000), "/config_dump").await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("config dump {e}: {text}"))
}

/// Workloads and services appear and disappear, traffic follows; policies by scope; a bad
/// resource is NACKed by name while the rest of its update applies; node metadata and the
/// CA's impersonation as Istio expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_follows_istiod() {
    let net = Net { b: 81 };
    let f = fixture().await;
    let i = &f.istiod;
    seed(i, net);
    http_app(net.app(), "server").await;
    http_app(SocketAddr::new(server2_ip(net), 9000), "server2").await;
    let _a = ztunnel(&f, i.xds_addr, "a", net.node_a(), &["--service-listeners"]);
    let _b = ztunnel(&f, i.xds_addr, "b", net.node_b(), &[]);

    until(net, "traffic to the service", |r| {
        app_of(r) == Some("server")
    })
    .await;
    // Ready once the first xDS state (both types) is applied.
    for node in [net.node_a(), net.node_b()] {
        assert_eq!(ready(node).await, 200, "{node} ready");
    }

    // Istio's ztunnel node identity and metadata; the bearer token was checked by the fake.
    let first = i.requests().into_iter().next().unwrap();
    let node = first.node.unwrap();
    assert!(
        node.id
            .starts_with(&format!("ztunnel~{}~ztunnel.istio-system~", net.node_a()))
            || node
                .id
                .starts_with(&format!("ztunnel~{}~ztunnel.istio-system~", net.node_b())),
        "{}",
        node.id
    );
    let md = format!("{:?}", node.metadata);
    assert!(
        md.contains("NODE_NAME") && md.contains("CLUSTER_ID"),
        "{md}"
    );
    // Certificates on behalf of each workload, with the token and cluster id.
    let ca = i.ca_requests();
    for sa in ["client", "server"] {
        let id = format!("spiffe://cluster.local/ns/ns/sa/{sa}");
        let r = ca
            .iter()
            .find(|r| r.impersonated.as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no CA request for {id}: {ca:?}"));
        assert_eq!(r.authorization.as_deref(), Some("Bearer test-token"));
        assert_eq!(r.cluster_id.as_deref(), Some("Kubernetes"));
        assert_eq!(r.validity_seconds, 86_400);
    }

    // A second endpoint appears: both serve.
    i.set(
        ADDRESS_TYPE,
        "Kubernetes//Pod/ns/server2",
        address_of_workload(server_wl("server2", server2_ip(net))),
    );
    until(net, "server2 serving", |r| app_of(r) == Some("server2")).await;
    // The first one disappears: only server2 from then on.
    i.remove(ADDRESS_TYPE, "Kubernetes//Pod/ns/server");
    until(net, "server gone", |r| app_of(r) == Some("server2")).await;
    for _ in 0..10 {
        assert_eq!(app_of(&get_via_vip(net).await), Some("server2"));
    }

    // One update with a valid DENY policy and a broken one: the broken one is NACKed by
    // name (and fails closed where it applies: listed by no workload here, nowhere), the
    // DENY applies.
    let deny = pb::security::Authorization {
        name: "deny-client".into(),
        namespace: "ns".into(),
        scope: pb::security::Scope::WorkloadSelector as i32,
        action: pb::security::Action::Deny as i32,
        rules: vec![pb::security::Rule {
            clauses: vec![pb::security::Clause {
                matches: vec![pb::security::Match {
                    principals: vec![pb::security::StringMatch {
                        match_type: Some(pb::security::string_match::MatchType::Exact(
                            "cluster.local/ns/ns/sa/client".into(),
                        )),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let broken = pb::security::Authorization {
        name: "broken".into(),
        namespace: "ns".into(),
        scope: pb::security::Scope::WorkloadSelector as i32,
        rules: vec![pb::security::Rule {
            clauses: vec![pb::security::Clause {
                matches: vec![pb::security::Match {
                    destination_ports: vec![70_000],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    i.set_many(
        AUTHORIZATION_TYPE,
        vec![
            ("ns/deny-client".into(), deny.encode_to_vec()),
            ("ns/broken".into(), broken.encode_to_vec()),
        ],
    );
    // The policy only applies where the control plane lists it.
    let mut s2 = server_wl("server2", server2_ip(net));
    s2.authorization_policies = vec!["ns/deny-client".into()];
    i.set(
        ADDRESS_TYPE,
        "Kubernetes//Pod/ns/server2",
        address_of_workload(s2),
    );
    until(net, "DENY enforced", |r| r.is_err()).await;
    for _ in 0..5 {
        assert!(get_via_vip(net).await.is_err(), "denied");
    }
    let nacks = i.nacks();
    assert!(
        nacks.iter().any(|(t, m)| t == AUTHORIZATION_TYPE
            && m.contains("ns/broken")
            && m.contains("70000")),
        "{nacks:?}"
    );
    assert!(
        !nacks.iter().any(|(_, m)| m.contains("ns/deny-client")),
        "{nacks:?}"
    );
    let dump = config_dump(net.node_b()).await;
    assert!(
        dump["configRejections"]["total"].as_u64().unwrap() >= 1,
        "{dump}"
    );
    assert!(dump["xds"]["nacks"].as_u64().unwrap() >= 1, "{dump}");
    assert_eq!(dump["xds"]["connected"], true);
    let failed = dump["authorizationFailClosed"]["ns/broken"]
        .as_str()
        .unwrap_or("");
    assert!(failed.contains("70000 is not a port"), "{dump}");
    // Policy removed: allowed again.
    i.remove(AUTHORIZATION_TYPE, "ns/deny-client");
    until(net, "DENY lifted", |r| app_of(r) == Some("server2")).await;

    // The service disappears: its VIP listener goes away.
    i.remove(ADDRESS_TYPE, SVC);
    for _ in 0..300 {
        if connect_from(net.client(), net.vip()).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the VIP still accepts after the service was removed");
}

/// A TCP relay to `to` that, while `frozen`, accepts and reads but never answers: a
/// black-holed control plane.
async fn relay(to: SocketAddr, frozen: Arc<AtomicBool>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((down, _)) = l.accept().await {
            let Ok(up) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let (mut dr, mut dw) = down.into_split();
            let (mut ur, mut uw) = up.into_split();
            let f1 = frozen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = dr.read(&mut buf).await {
                    if n == 0
                        || (!f1.load(Ordering::SeqCst) && uw.write_all(&buf[..n]).await.is_err())
                    {
                        break;
                    }
                }
            });
            let f2 = frozen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = ur.read(&mut buf).await {
                    if n == 0
                        || (!f2.load(Ordering::SeqCst) && dw.write_all(&buf[..n]).await.is_err())
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn xds_status(admin: IpAddr) -> serde_json::Value {
    config_dump(admin).await["xds"].clone()
}

async fn until_status(admin: IpAddr, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        last = xds_status(admin).await;
        if f(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: never; xDS status {last}");
}

/// A black-holed control plane is noticed by keepalive and traffic keeps flowing; a killed
/// one too, and when it returns the ztunnels resume with their versions and resync what
/// changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_black_holed_killed_and_back() {
    let net = Net { b: 82 };
    let f = fixture().await;
    let i = &f.istiod;
    seed(i, net);
    http_app(net.app(), "server").await;
    http_app(SocketAddr::new(server2_ip(net), 9000), "server2").await;
    let frozen = Arc::new(AtomicBool::new(false));
    let via = relay(i.xds_addr, frozen.clone()).await;
    let keepalive = [
        "--service-listeners",
        "--xds-keepalive-interval",
        "300ms",
        "--xds-keepalive-timeout",
        "300ms",
    ];
    let _a = ztunnel(&f, via, "a", net.node_a(), &keepalive);
    let _b = ztunnel(&f, via, "b", net.node_b(), &keepalive[1..]);
    until(net, "traffic", |r| app_of(r) == Some("server")).await;
    until_status(net.node_a(), "connected", |s| s["connected"] == true).await;

    // Black hole: the stream is dropped by keepalive within about a second; traffic flows.
    frozen.store(true, Ordering::SeqCst);
    until_status(net.node_a(), "black hole noticed", |s| {
        s["connected"] == false && s["lastError"].as_str().is_some_and(|e| !e.is_empty())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(app_of(&get_via_vip(net).await), Some("server"));
    }
    let connects = xds_status(net.node_a()).await["connects"].as_u64().unwrap();
    frozen.store(false, Ordering::SeqCst);
    until_status(net.node_a(), "reconnected after the black hole", |s| {
        s["connected"] == true && s["connects"].as_u64().unwrap() > connects
    })
    .await;

    // Killed: traffic keeps flowing on the last state.
    i.stop();
    until_status(net.node_a(), "loss noticed", |s| s["connected"] == false).await;
    for _ in 0..10 {
        assert_eq!(app_of(&get_via_vip(net).await), Some("server"));
    }
    // While it is down the mesh changes: server replaced by server2.
    i.set_quietly(ADDRESS_TYPE, "Kubernetes//Pod/ns/server", None);
    i.set_quietly(
        ADDRESS_TYPE,
        "Kubernetes//Pod/ns/server2",
        Some(address_of_workload(server_wl("server2", server2_ip(net)))),
    );
    let before = i.requests().len();
    i.restart().await;
    until(net, "resynced after the restart", |r| {
        app_of(r) == Some("server2")
    })
    .await;
    for _ in 0..10 {
        assert_eq!(app_of(&get_via_vip(net).await), Some("server2"));
    }
    // They resumed with the versions they held.
    let resumed = i.requests()[before..]
        .iter()
        .filter(|r| r.type_url == ADDRESS_TYPE && r.response_nonce.is_empty())
        .map(|r| r.initial_resource_versions.len())
        .collect::<Vec<_>>();
    assert!(
        resumed.iter().any(|n| *n >= 2),
        "resume requests carried versions: {resumed:?}"
    );
}

/// Certificates from the CA (on behalf of each workload) rotate at half-life under steady
/// traffic with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic() {
    let net = Net { b: 83 };
    let f = fixture().await;
    let i = &f.istiod;
    seed(i, net);
    http_app(net.app(), "server").await;
    // Short-lived certificates, and pooled HBONE connections that do not outlive them, so
    // new handshakes use the rotated ones.
    let extra = [
        "--service-listeners",
        "--cert-ttl",
        "10s",
        "--pool-idle-timeout",
        "300ms",
    ];
    let _a = ztunnel(&f, i.xds_addr, "a", net.node_a(), &extra);
    let _b = ztunnel(&f, i.xds_addr, "b", net.node_b(), &extra[1..]);
    until(net, "traffic", |r| app_of(r) == Some("server")).await;
    let id = "spiffe://cluster.local/ns/ns/sa/server";
    let issued = |i: &FakeIstiod| {
        i.ca_requests()
            .iter()
            .filter(|r| r.impersonated.as_deref() == Some(id))
            .count()
    };
    let first = issued(i);
    // ~12 s of requests, each on its own connection: renewals at 5 s and 10 s (the CA's
    // shortest lifetime is 10 s).
    let mut failures = Vec::new();
    for n in 0..600 {
        match get_via_vip(net).await {
            Ok(b) if b.starts_with("server ") => {}
            other => failures.push((n, other)),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rotated = issued(i) - first;
    assert!(rotated >= 2, "server certificate renewed {rotated} times");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let dump = config_dump(net.node_b()).await;
    let certs = dump["certificates"].as_array().unwrap();
    let c = certs.iter().find(|c| c["identity"] == id).unwrap();
    assert!(c["expiresInSeconds"].as_u64().unwrap() <= 10, "{c}");
}

/// The CA is down when the ztunnels start: the xDS state cannot be applied (no certificates
/// for its workloads), the ztunnels are not ready and nothing is served; they retry with
/// backoff and serve once the CA answers, with no new push from istiod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_down_at_start_is_retried() {
    let net = Net { b: 84 };
    let f = fixture().await;
    let i = &f.istiod;
    seed(i, net);
    http_app(net.app(), "server").await;
    i.set_ca_down(true);
    let _a = ztunnel(&f, i.xds_addr, "a", net.node_a(), &["--service-listeners"]);
    let _b = ztunnel(&f, i.xds_addr, "b", net.node_b(), &[]);
    // Both asked the CA (and were refused) at least twice: they retry.
    for _ in 0..300 {
        if i.ca_requests().len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(i.ca_requests().len() >= 4, "{:?}", i.ca_requests());
    assert!(
        get_via_vip(net).await.is_err(),
        "nothing served without certificates"
    );
    assert_eq!(
        ready(net.node_b()).await,
        500,
        "not ready before the first state (500, as Istio's ztunnel)"
    );
    let pushes = i.requests().len();
    i.set_ca_down(false);
    until(net, "served once the CA is back", |r| {
        app_of(r) == Some("server")
    })
    .await;
    assert_eq!(ready(net.node_b()).await, 200);
    // No push was needed: only ACKs went to istiod meanwhile.
    assert!(
        i.requests()[pushes..]
            .iter()
            .all(|r| !r.response_nonce.is_empty() || r.initial_resource_versions.is_empty()),
        "no resubscription"
    );
}
