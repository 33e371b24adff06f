//! The mesh of the Kubernetes-source tests: a fake istiod (workloads, services), two
//! ztunnels, the waypoint `ns/wp` following the fake Kubernetes API for its L7 resources
//! (`--kube --kubeconfig`), an HTTP client helper. Loopback block 127.226.x.x.

#![allow(unreachable_pub, dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mesh_identity::LocalCa;
use mesh_identity::testing::FakeCa;
use mesh_tests::fake_kube::FakeKube;
use mesh_tests::istiod::{
    ADDRESS_TYPE, FakeIstiod, address_of_service, address_of_workload, following, http_service,
    service, workload,
};
pub use mesh_tests::vip_get::{self, Outcome, app, status};
use mesh_tests::{Proc, http_app};
use serde_json::{Value, json};

/// One test's addresses in 127.226.0.0/16, from third octet `c` on: nodes, the waypoint, its
/// CA and the API server at `127.226.c.N`, workloads at `c+1`, VIPs at `c+2` (tests of one
/// binary run in parallel).
#[derive(Debug, Clone, Copy)]
pub struct Block(pub u8);

impl Block {
    pub fn ip(self, plus: u8, last: u8) -> IpAddr {
        IpAddr::from([127, 226, self.0 + plus, last])
    }
    pub fn client(self) -> IpAddr {
        self.ip(1, 10)
    }
    pub fn app(self) -> SocketAddr {
        SocketAddr::new(self.ip(1, 20), 9000)
    }
    pub fn vip(self) -> SocketAddr {
        SocketAddr::new(self.ip(2, 1), 9000)
    }
    /// The waypoint (its admin, metrics and HBONE ports).
    pub fn waypoint(self) -> IpAddr {
        self.ip(0, 3)
    }
}

const SVC: &str = "ns/server.ns.svc.cluster.local";
const SECOND: &str = "ns/second.ns.svc.cluster.local";
const WP: &str = "ns/wp.ns.svc.cluster.local";

/// What a test runs: keep it alive for the test's length.
pub struct Mesh {
    pub b: Block,
    pub dir: tempfile::TempDir,
    pub istiod: FakeIstiod,
    pub kube: FakeKube,
    pub wp_ca: FakeCa,
    pub root: PathBuf,
    pub token: PathBuf,
    pub procs: Vec<Proc>,
}

/// The mesh without the waypoint: istiod seeded, apps and ztunnels running, the fake API
/// server holding `objects` (plural, object).
pub async fn mesh(b: Block, objects: &[(&str, Value)]) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let (ca, _) = LocalCa::load_or_create(&ca_dir).unwrap();
    let root = dir.path().join("root-cert.pem");
    std::fs::write(&root, ca.trust_bundle().unwrap().to_pem()).unwrap();
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "test-token\n").unwrap();
    let istiod = FakeIstiod::start(ca).await;
    // The waypoint's own CA: signs its one identity without impersonation, as istiod does
    // from its service-account token.
    let wp_ca = FakeCa::start(
        LocalCa::load(&ca_dir).unwrap(),
        SocketAddr::new(b.ip(0, 9), 0),
    )
    .await
    .unwrap();
    wp_ca.require_bearer(Some("test-token"));
    wp_ca.set_override_identity(Some("spiffe://cluster.local/ns/ns/sa/wp".parse().unwrap()));
    seed(&istiod, b);
    http_app(b.app(), "server").await;
    http_app(SocketAddr::new(b.ip(1, 30), 9000), "second").await;
    let kube = FakeKube::start(SocketAddr::new(b.ip(0, 20), 0)).await;
    for (plural, o) in objects {
        kube.set(plural, o.clone());
    }
    let mut m = Mesh {
        b,
        dir,
        istiod,
        kube,
        wp_ca,
        root,
        token,
        procs: Vec::new(),
    };
    let (na, nb) = (b.ip(0, 1).to_string(), b.ip(0, 2).to_string());
    let za = m.start(
        "ztunnel",
        m.istiod.ca_addr,
        &["--node", "a", "--address", &na, "--service-listeners"],
    );
    let zb = m.start(
        "ztunnel",
        m.istiod.ca_addr,
        &["--node", "b", "--address", &nb],
    );
    m.procs.extend([za, zb]);
    m
}

impl Mesh {
    fn start(&self, role: &str, ca: SocketAddr, args: &[&str]) -> Proc {
        let cmd = following(
            role,
            args,
            self.istiod.xds_addr,
            ca,
            &self.root,
            &self.token,
            "debug,h2=info,rustls=info,hyper=info,kube=info,tower=info",
        );
        Proc::start(role, cmd, Some(&format!("{role} ready")))
    }

    /// Starts the waypoint following the fake API server, with `extra` flags.
    pub fn waypoint(&self, extra: &[&str]) -> Proc {
        let kubeconfig = self.kube.kubeconfig(self.dir.path());
        let wp_addr = self.b.waypoint().to_string();
        let mut args = vec![
            "--gateway",
            "ns/wp",
            "--address",
            &wp_addr,
            "--kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.start("waypoint", self.wp_ca.addr(), &args)
    }
}

/// The client on node a; `server` (through waypoint `ns/wp`) and `second` on node b; the
/// waypoint's own workload and service.
fn seed(i: &FakeIstiod, b: Block) {
    let w = |name: &str, ip: IpAddr, node: &str, svcs: &[(&str, u16, u16)]| {
        (
            format!("Kubernetes//Pod/ns/{name}"),
            address_of_workload(workload(name, "ns", ip, name, node, svcs)),
        )
    };
    i.set_many(
        ADDRESS_TYPE,
        vec![
            w("client", b.client(), "a", &[]),
            w("server", b.app().ip(), "b", &[(SVC, 9000, 9000)]),
            w("second", b.ip(1, 30), "b", &[(SECOND, 9000, 9000)]),
            w("wp", b.waypoint(), "wp-node", &[(WP, 15008, 15008)]),
            (
                SVC.into(),
                address_of_service(http_service("server", b.vip().ip(), true)),
            ),
            (
                SECOND.into(),
                address_of_service(http_service("second", b.ip(2, 2), false)),
            ),
            (
                WP.into(),
                address_of_service(service("wp", "ns", b.ip(2, 50), &[(15008, 15008)])),
            ),
        ],
    );
}

/// A VirtualService `ns/<name>` for `server`: requests with path prefix `prefix` go to
/// `second`, the rest to `server`.
pub fn route(name: &str, ns: &str, prefix: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "hosts": ["server.ns.svc.cluster.local"],
            "http": [
                {"match": [{"uri": {"prefix": prefix}}],
                 "route": [{"destination": {"host": "second.ns.svc.cluster.local"}}]},
                {"route": [{"destination": {"host": "server.ns.svc.cluster.local"}}]},
            ],
        },
        "status": {"validationMessages": []},
    })
}

/// An AuthorizationPolicy `ns/no-admin` attached to `server`: `/admin` is denied.
pub fn deny_admin() -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "no-admin", "namespace": "ns"},
        "spec": {
            "targetRefs": [{"kind": "Service", "group": "", "name": "server"}],
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}],
        },
    })
}

/// One `GET path` from the client workload to the server's VIP.
pub async fn get(b: Block, path: &str) -> Outcome {
    vip_get::get(b.client(), b.vip(), path).await
}

/// Retries `GET path` (every 50 ms, up to 15 s) until `want` holds.
pub async fn until(b: Block, path: &str, what: &str, want: impl Fn(&Outcome) -> bool) {
    vip_get::until(b.client(), b.vip(), path, what, want).await
}

/// Waits (up to 10 s) for `needle` in `p`'s logs; returns them.
pub fn wait_log(p: &Proc, needle: &str) -> String {
    for _ in 0..200 {
        let logs = p.logs();
        if logs.contains(needle) {
            return logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} never logged {needle:?}; logs:\n{}", p.name, p.logs());
}

/// For `d`, `/two` and `/admin` answer as they did: nothing changed while the API server was
/// away or relisting.
pub async fn holds_for(b: Block, d: Duration, two: &str) {
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        let r = get(b, "/two").await;
        assert_eq!(app(&r), Some(two), "{r:?}");
        let r = get(b, "/admin").await;
        assert_eq!(status(&r), Some(403), "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
