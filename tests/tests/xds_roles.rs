//! The real waypoint and sidecar following a fake istiod, as the ztunnel does: workloads,
//! services, endpoints and L4 `Authorization`s from the workload API, L7 resources from a
//! local file beside it (`--config`, L7 kinds only), certificates from Istio's CA for the
//! proxy's own identity with its own token (no `ImpersonatedIdentity`).
//!
//! Istiod's CA derives a proxy's identity from its token; here each waypoint or sidecar asks a
//! CA of its own ([`OwnCa`]: signs for that one identity under the same root, refuses
//! impersonation as istiod does for anyone but ztunnel), while the ztunnels impersonate their
//! workloads at the fake istiod's CA. Loopback block 127.160-163.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_identity::istio_ca::IMPERSONATED_IDENTITY;
use mesh_identity::istio_ca::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mesh_identity::istio_ca::pb::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_identity::{LocalCa, SpiffeId};
use mesh_tests::istiod::{
    ADDRESS_TYPE, AUTHORIZATION_TYPE, FakeIstiod, address_of_service, address_of_workload,
    following, http_service, service, workload,
};
use mesh_tests::vip_get::{self, Outcome, app, status};
use mesh_tests::{Net, Proc, bin, http_app};
use mesh_xds::pb;
use prost::Message as _;

const SVC: &str = "ns/server.ns.svc.cluster.local";
const SECOND: &str = "ns/second.ns.svc.cluster.local";
const WP: &str = "ns/wp.ns.svc.cluster.local";

struct Fixture {
    dir: tempfile::TempDir,
    ca_dir: PathBuf,
    root: PathBuf,
    token: PathBuf,
    istiod: FakeIstiod,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let (ca, _) = LocalCa::load_or_create(&ca_dir).unwrap();
    let root = dir.path().join("root-cert.pem");
    std::fs::write(&root, ca.trust_bundle().unwrap().to_pem()).unwrap();
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "test-token\n").unwrap();
    let istiod = FakeIstiod::start(ca).await;
    Fixture {
        dir,
        ca_dir,
        root,
        token,
        istiod,
    }
}

/// One request to an [`OwnCa`]: its `ImpersonatedIdentity` and `authorization` header.
#[derive(Debug, Clone)]
struct CaRequest {
    impersonated: Option<String>,
    authorization: Option<String>,
}

/// Istio's CA as a waypoint or sidecar meets it: it issues the one identity the caller's token
/// stands for, and refuses impersonation (istiod grants it to ztunnel only).
#[derive(Clone)]
struct OwnCa {
    addr: SocketAddr,
    ca: Arc<LocalCa>,
    identity: SpiffeId,
    seen: Arc<Mutex<Vec<CaRequest>>>,
}

#[tonic::async_trait]
impl IstioCertificateService for OwnCa {
    async fn create_certificate(
        &self,
        req: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let r = req.into_inner();
        let impersonated = r
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .map(|v| format!("{:?}", v.kind));
        self.seen.lock().unwrap().push(CaRequest {
            impersonated: impersonated.clone(),
            authorization: authorization.clone(),
        });
        if authorization.as_deref() != Some("Bearer test-token") {
            return Err(tonic::Status::unauthenticated("bearer token required"));
        }
        if impersonated.is_some() {
            return Err(tonic::Status::permission_denied(
                "only ztunnel may impersonate",
            ));
        }
        let ttl = Duration::from_secs(u64::try_from(r.validity_duration).unwrap_or(3600));
        let chain = self
            .ca
            .sign_csr(&r.csr, &self.identity, ttl)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

impl OwnCa {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn requests(&self) -> Vec<CaRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Fixture {
    /// A CA issuing `identity` (under the mesh root) to whoever presents the token, as
    /// istiod does from a service-account token; on `addr`, a free port.
    async fn own_ca(&self, addr: IpAddr, identity: &str) -> OwnCa {
        let l = tokio::net::TcpListener::bind(SocketAddr::new(addr, 0))
            .await
            .unwrap();
        let ca = OwnCa {
            addr: l.local_addr().unwrap(),
            ca: Arc::new(LocalCa::load(&self.ca_dir).unwrap()),
            identity: identity.parse().unwrap(),
            seen: Arc::default(),
        };
        let svc = IstioCertificateServiceServer::new(ca.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tcp),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
                });
            }
        });
        ca
    }

    /// Starts binary `role` following the fake istiod, with certificates from `ca`.
    fn start(&self, role: &str, ca: SocketAddr, args: &[&str]) -> Proc {
        let cmd = following(
            role,
            args,
            self.istiod.xds_addr,
            ca,
            &self.root,
            &self.token,
            "debug,h2=info,rustls=info,hyper=info",
        );
        Proc::start(role, cmd, Some(&format!("{role} ready")))
    }

    fn ztunnel(&self, node: &str, addr: IpAddr, extra: &[&str]) -> Proc {
        let mut args = vec!["--node", node, "--address"];
        let a = addr.to_string();
        args.push(&a);
        args.extend_from_slice(extra);
        self.start("ztunnel", self.istiod.ca_addr, &args)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn ip(net: Net, rest: &str) -> IpAddr {
    format!("127.{}.{rest}", net.b).parse().unwrap()
}

fn uid(name: &str) -> String {
    format!("Kubernetes//Pod/ns/{name}")
}

/// The client on node a; `server` (service `server`, through waypoint `ns/wp` if `waypoint`)
/// on node `server_node`; `second` (service `second`) on node b; the waypoint's own workload
/// and service.
fn seed(i: &FakeIstiod, net: Net, server_node: &str, waypoint: bool) {
    let w = |name: &str, ip: IpAddr, sa: &str, node: &str, svcs: &[(&str, u16, u16)]| {
        (
            uid(name),
            address_of_workload(workload(name, "ns", ip, sa, node, svcs)),
        )
    };
    i.set_many(
        ADDRESS_TYPE,
        vec![
            w("client", net.client(), "client", "a", &[]),
            w(
                "server",
                net.server(),
                "server",
                server_node,
                &[(SVC, 9000, 9000)],
            ),
            w(
                "second",
                ip(net, "1.30"),
                "second",
                "b",
                &[(SECOND, 9000, 9000)],
            ),
            w("wp", ip(net, "0.3"), "wp", "wp-node", &[(WP, 15008, 15008)]),
            (
                SVC.into(),
                address_of_service(http_service("server", net.vip().ip(), waypoint)),
            ),
            (
                SECOND.into(),
                address_of_service(http_service("second", ip(net, "2.2"), false)),
            ),
            (
                WP.into(),
                address_of_service(service("wp", "ns", ip(net, "2.50"), &[(15008, 15008)])),
            ),
        ],
    );
}

/// One `GET path` from the client workload to `vip`: (status, body), or why not.
async fn get(net: Net, vip: SocketAddr, path: &str) -> Outcome {
    vip_get::get(net.client(), vip, path).await
}

/// Retries `GET path` (every 50 ms, up to 15 s) until `want` holds for its outcome.
async fn until(net: Net, path: &str, what: &str, want: impl Fn(&Outcome) -> bool) {
    vip_get::until(net.client(), net.vip(), path, what, want).await
}

/// L7 resources of the waypoint: `/two` goes to service `second`; `/admin` is denied.
const WAYPOINT_L7: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: server, namespace: ns}
spec:
  hosts: [server.ns.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /two}}]
    route: [{destination: {host: second.ns.svc.cluster.local}}]
  - route: [{destination: {host: server.ns.svc.cluster.local}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: ns}
spec:
  targetRefs: [{kind: Service, group: "", name: server}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
"#;

/// An L4 `Authorization` denying everything to the workloads that list it.
fn deny_all(name: &str) -> Vec<u8> {
    pb::security::Authorization {
        name: name.into(),
        namespace: "ns".into(),
        scope: pb::security::Scope::WorkloadSelector as i32,
        action: pb::security::Action::Deny as i32,
        rules: vec![pb::security::Rule::default()],
        ..Default::default()
    }
    .encode_to_vec()
}

/// Waits (up to 15 s) until the CA has seen `n` requests; returns them.
async fn ca_requests(ca: &OwnCa, n: usize) -> Vec<CaRequest> {
    for _ in 0..300 {
        if ca.requests().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = ca.requests();
    assert!(r.len() >= n, "{} CA requests, wanted {n}: {r:?}", r.len());
    r
}

/// A waypoint following istiod routes by its file's VirtualService, enforces its file's L7
/// policy, reaches endpoints that appear and disappear in xDS, its destinations enforce
/// xDS's L4 policy; a changed L7 file applies, a bad one leaves the last good serving; its
/// certificate is its own, asked without impersonation, and rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_follows_istiod() {
    let net = Net { b: 160 };
    let f = fixture().await;
    let i = &f.istiod;
    seed(i, net, "b", true);
    http_app(net.app(), "server").await;
    http_app(SocketAddr::new(ip(net, "1.30"), 9000), "second").await;
    http_app(SocketAddr::new(ip(net, "1.21"), 9000), "server2").await;
    let wp_id = "spiffe://cluster.local/ns/ns/sa/wp";
    let wp_ca = f.own_ca(ip(net, "0.9"), wp_id).await;
    let l7 = f.write("l7.yaml", WAYPOINT_L7);
    let _a = f.ztunnel("a", net.node_a(), &["--service-listeners"]);
    let _b = f.ztunnel("b", net.node_b(), &[]);
    let l7_arg = l7.to_str().unwrap();
    let wp_args = [
        "--gateway",
        "ns/wp",
        "--address",
        "127.160.0.3",
        "--config",
        l7_arg,
        "--cert-ttl",
        "10s",
        "--config-poll-interval",
        "100ms",
    ];
    let wp = f.start("waypoint", wp_ca.addr(), &wp_args);

    // Through the waypoint, routed and authorized by the file.
    until(net, "/", "traffic through the waypoint", |r| {
        app(r) == Some("server")
    })
    .await;
    until(net, "/two", "the file's route", |r| {
        app(r) == Some("second")
    })
    .await;
    let denied = get(net, net.vip(), "/admin").await;
    assert_eq!(status(&denied), Some(403), "{denied:?}");

    // L4 from xDS at the destination: `second` lists a DENY; then it is withdrawn.
    i.set(
        AUTHORIZATION_TYPE,
        "ns/deny-second",
        deny_all("deny-second"),
    );
    let mut w = workload(
        "second",
        "ns",
        ip(net, "1.30"),
        "second",
        "b",
        &[(SECOND, 9000, 9000)],
    );
    w.authorization_policies = vec!["ns/deny-second".into()];
    i.set(ADDRESS_TYPE, &uid("second"), address_of_workload(w));
    until(net, "/two", "the L4 deny", |r| {
        status(r).is_some_and(|s| s >= 500)
    })
    .await;
    assert_eq!(app(&get(net, net.vip(), "/").await), Some("server"));
    i.remove(AUTHORIZATION_TYPE, "ns/deny-second");
    until(net, "/two", "the deny withdrawn", |r| {
        app(r) == Some("second")
    })
    .await;

    // Endpoints appear and disappear.
    let s2 = workload(
        "server2",
        "ns",
        ip(net, "1.21"),
        "server",
        "b",
        &[(SVC, 9000, 9000)],
    );
    i.set(ADDRESS_TYPE, &uid("server2"), address_of_workload(s2));
    until(net, "/", "the new endpoint", |r| app(r) == Some("server2")).await;
    i.remove(ADDRESS_TYPE, &uid("server"));
    for _ in 0..20 {
        until(net, "/", "only the remaining endpoint", |r| {
            app(r) == Some("server2")
        })
        .await;
    }

    // The L7 file changes: `/two` now stays on `server`; a bad file is rejected.
    std::fs::write(&l7, WAYPOINT_L7.replace("prefix: /two", "prefix: /three")).unwrap();
    until(net, "/two", "the changed file", |r| {
        app(r) == Some("server2")
    })
    .await;
    let bad = format!(
        "{WAYPOINT_L7}---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: fake, namespace: ns}}\nspec: {{address: 127.160.1.21}}\n"
    );
    std::fs::write(&l7, &bad).unwrap();
    let logs = wait_log(&wp, "L7 file rejected");
    assert!(
        logs.contains("kind: WorkloadEntry is not allowed in a file given with --xds-address"),
        "{logs}"
    );
    assert_eq!(app(&get(net, net.vip(), "/two").await), Some("server2"));
    assert_eq!(status(&get(net, net.vip(), "/admin").await), Some(403));

    // Its own identity, asked without impersonation; renewed at half-life (5 s).
    let first = wp_ca.requests().len();
    assert!(first >= 1);
    let reqs = ca_requests(&wp_ca, first + 1).await;
    wait_log(&wp, "certificate renewed");
    assert!(reqs.iter().all(|r| r.impersonated.is_none()), "{reqs:?}");
    assert!(
        reqs.iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer test-token")),
        "{reqs:?}"
    );
    assert!(
        i.ca_requests()
            .iter()
            .all(|r| r.impersonated.as_deref() != Some(wp_id)),
        "nobody asked for the waypoint's identity by impersonation"
    );
    assert_eq!(app(&get(net, net.vip(), "/").await), Some("server2"));
    let certs = certificates(ip(net, "0.3")).await;
    assert!(certs.iter().any(|c| c["identity"] == wp_id), "{certs:?}");
}

/// The certificates a proxy holds (its admin `/config_dump`, admin port on `addr`).
async fn certificates(addr: IpAddr) -> Vec<serde_json::Value> {
    let text = mesh_tests::http_get(SocketAddr::new(addr, 15000), "/config_dump").await;
    let dump: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("config dump {e}: {text}"));
    dump["certificates"].as_array().cloned().unwrap_or_default()
}

/// Waits (up to 10 s) until `p`'s logs contain `needle`; returns them.
fn wait_log(p: &Proc, needle: &str) -> String {
    for _ in 0..200 {
        let logs = p.logs();
        if logs.contains(needle) {
            return logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{needle:?} never logged:\n{}", p.logs());
}

/// L7 resources of a sidecar: `/admin` denied to everyone in namespace `ns`.
const SIDECAR_L7: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: ns}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
"#;

fn sidecar(f: &Fixture, net: Net, ca: SocketAddr, l7: &Path) -> Proc {
    let addr = net.server().to_string();
    let args = [
        "--workload",
        "ns/server",
        "--address",
        addr.as_str(),
        "--config",
        l7.to_str().unwrap(),
        "--outbound-port",
        "0",
        "--cert-ttl",
        "10s",
    ];
    f.start("sidecar", ca, &args)
}

/// A sidecar following istiod serves its workload (found by name in the workload API) over
/// HBONE, enforces xDS's L4 policy and its file's L7 policy, and asks the CA for its
/// workload's identity only, without impersonation, renewing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_follows_istiod() {
    let net = Net { b: 161 };
    let f = fixture().await;
    let i = &f.istiod;
    // The server's workload names node "pod-node": no ztunnel serves it, its sidecar does.
    seed(i, net, "pod-node", false);
    http_app(net.app(), "server").await;
    let id = "spiffe://cluster.local/ns/ns/sa/server";
    let ca = f.own_ca(ip(net, "0.9"), id).await;
    let l7 = f.write("l7.yaml", SIDECAR_L7);
    let _a = f.ztunnel("a", net.node_a(), &["--service-listeners"]);
    let _sc = sidecar(&f, net, ca.addr(), &l7);

    until(net, "/", "traffic to the sidecar", |r| {
        app(r) == Some("server")
    })
    .await;
    let denied = get(net, net.vip(), "/admin").await;
    assert_eq!(status(&denied), Some(403), "{denied:?}");

    // L4 from xDS, enforced by the sidecar: a DENY its workload lists, then withdrawn.
    i.set(
        AUTHORIZATION_TYPE,
        "ns/deny-server",
        deny_all("deny-server"),
    );
    let mut w = workload(
        "server",
        "ns",
        net.server(),
        "server",
        "pod-node",
        &[(SVC, 9000, 9000)],
    );
    w.authorization_policies = vec!["ns/deny-server".into()];
    i.set(ADDRESS_TYPE, &uid("server"), address_of_workload(w));
    until(net, "/", "the L4 deny", |r| app(r).is_none()).await;
    i.remove(AUTHORIZATION_TYPE, "ns/deny-server");
    until(net, "/", "the deny withdrawn", |r| app(r) == Some("server")).await;

    // The workload leaves istiod: nothing is served; it comes back.
    i.remove(ADDRESS_TYPE, &uid("server"));
    until(net, "/", "the workload gone", |r| app(r).is_none()).await;
    let w = workload(
        "server",
        "ns",
        net.server(),
        "server",
        "pod-node",
        &[(SVC, 9000, 9000)],
    );
    i.set(ADDRESS_TYPE, &uid("server"), address_of_workload(w));
    until(net, "/", "the workload back", |r| app(r) == Some("server")).await;

    // Renewed at half-life (5 s) of its 10 s certificate, still without impersonation.
    let first = ca.requests().len();
    let reqs = ca_requests(&ca, first + 1).await;
    assert!(reqs.iter().all(|r| r.impersonated.is_none()), "{reqs:?}");
    assert_eq!(app(&get(net, net.vip(), "/").await), Some("server"));
    let certs = certificates(net.server()).await;
    assert!(certs.iter().any(|c| c["identity"] == id), "{certs:?}");
    assert!(
        i.ca_requests()
            .iter()
            .all(|r| r.impersonated.as_deref() != Some(id)),
        "the server's identity was never impersonated"
    );
}

/// Ztunnel → waypoint → sidecar and waypoint → ztunnel, every proxy following istiod: the
/// waypoint routes and authorizes by its file, the sidecar serves the waypoint's tunnels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_mesh_follows_istiod() {
    let net = Net { b: 162 };
    let f = fixture().await;
    let i = &f.istiod;
    seed(i, net, "pod-node", true);
    http_app(net.app(), "server").await;
    http_app(SocketAddr::new(ip(net, "1.30"), 9000), "second").await;
    let wp_ca = f
        .own_ca(ip(net, "0.9"), "spiffe://cluster.local/ns/ns/sa/wp")
        .await;
    let sc_ca = f
        .own_ca(ip(net, "0.10"), "spiffe://cluster.local/ns/ns/sa/server")
        .await;
    let wp_l7 = f.write("wp.yaml", WAYPOINT_L7);
    let sc_l7 = f.write("sc.yaml", "");
    let _a = f.ztunnel("a", net.node_a(), &["--service-listeners"]);
    let _b = f.ztunnel("b", net.node_b(), &[]);
    let _wp = f.start(
        "waypoint",
        wp_ca.addr(),
        &[
            "--gateway",
            "ns/wp",
            "--address",
            "127.162.0.3",
            "--config",
            wp_l7.to_str().unwrap(),
        ],
    );
    let _sc = sidecar(&f, net, sc_ca.addr(), &sc_l7);

    until(net, "/", "ztunnel → waypoint → sidecar", |r| {
        app(r) == Some("server")
    })
    .await;
    until(net, "/two", "waypoint → ztunnel", |r| {
        app(r) == Some("second")
    })
    .await;
    assert_eq!(status(&get(net, net.vip(), "/admin").await), Some(403));
    // The sidecar accepts the server's traffic from the waypoint alone: the ztunnel's own
    // tunnels to it are refused once the service stops naming the waypoint only if the
    // sidecar still expects it; here both agree, so the route holds through updates.
    for _ in 0..10 {
        assert_eq!(app(&get(net, net.vip(), "/").await), Some("server"));
    }
}

/// A local file that declares what istiod owns (a workload, a service, a node) would let a
/// file override the control plane: rejected by name at start, the proxy does not run.
#[test]
fn l7_file_cannot_declare_istiod_kinds() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, api, spec) in [
        (
            "WorkloadEntry",
            "networking.istio.io/v1",
            "{address: 127.163.1.20}",
        ),
        (
            "ServiceEntry",
            "networking.istio.io/v1",
            "{hosts: [server.ns.svc.cluster.local], ports: [{number: 9000, name: http}]}",
        ),
        (
            "Node",
            "dataplane.mesh.dev/v1alpha1",
            "{address: 127.163.0.1}",
        ),
    ] {
        let file = dir.path().join("l7.yaml");
        std::fs::write(
            &file,
            format!(
                "{WAYPOINT_L7}---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: evil, namespace: ns}}\nspec: {spec}\n"
            ),
        )
        .unwrap();
        for (role, args) in [
            (
                "waypoint",
                ["--gateway", "ns/wp", "--address", "127.163.0.3"],
            ),
            (
                "sidecar",
                ["--workload", "ns/server", "--address", "127.163.1.20"],
            ),
        ] {
            let out = Command::new(bin(role))
                .args(args)
                .arg("--config")
                .arg(&file)
                .args(["--xds-address", "http://127.163.0.100:1"])
                .args(["--ca-address", "http://127.163.0.100:2"])
                .arg("--xds-root-ca")
                .arg(dir.path().join("missing-root.pem"))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{role} {kind}: {err}");
            assert!(
                err.contains(&format!(
                    "document 3 ({kind} ns/evil): kind: {kind} is not allowed in a file given with --xds-address"
                )),
                "{role} {kind}: {err}"
            );
            assert!(
                err.contains("VirtualService, DestinationRule, HTTPRoute, AuthorizationPolicy, RequestAuthentication"),
                "{err}"
            );
        }
    }
}
