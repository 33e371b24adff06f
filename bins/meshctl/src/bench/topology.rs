//! Benchmark topologies: how a client reaches the server, and the proxy processes in between.
//!
//! Adding a topology: a variant, its name, and a branch in [`setup`] that starts its proxies
//! (`procs`: the role's binary beside this one, else `meshctl ztunnel …`) and says where the
//! client connects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context;

pub(crate) use super::procs::{ProxyOpts, ProxyProc, proc_stat, total_stat};
use super::procs::{Role, start_proxy, start_relay};

/// A path from client to server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Topology {
    /// Client → server, no mesh: the baseline.
    Direct,
    /// Client → ztunnel A → HBONE/mTLS → ztunnel B → server.
    ZtunnelPair,
    /// Client → relay → relay → server: two plain TCP forwarders (tokio, same worker count, no
    /// TLS, no HTTP/2). Not a mesh: the floor that any two-proxy path pays on this machine for
    /// the extra process hops, against which the ztunnel pair's own cost can be read.
    RelayPair,
    /// Client → ztunnel A → HBONE → waypoint (HTTP routed per request at L7; TCP carried) →
    /// HBONE → ztunnel B → server.
    Waypoint,
    /// The waypoint path with every L7 resilience mechanism configured (none firing):
    /// timeout, retries and budget, fault and mirror at 0 %, rate limit, outlier detection,
    /// connection pools. Against `waypoint`, the cost of having them.
    WaypointFull,
    /// Client (pod A) → server (pod B) over the veth pair, no mesh: the baseline of the
    /// capture topologies. Needs root.
    DirectPods,
    /// Client (pod A, captured) → sidecar A (HTTP routed per request) → HBONE → sidecar B
    /// (HTTP authorized per request) → server (pod B). Network namespaces: needs root.
    SidecarPair,
    /// Client (pod A, captured) → in-pod ztunnel A → HBONE → in-pod ztunnel B → server (pod
    /// B): ztunnel-pair with capture in network namespaces. Needs root.
    ZtunnelPairCapture,
    /// `ztunnel-pair-capture` with Istio's own ztunnel in each pod instead of ours: the peer
    /// every figure is compared with (`--istio-ztunnel`; skipped without it). Needs root.
    IstioZtunnelPair,
}

impl Topology {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Topology::Direct => "direct",
            Topology::ZtunnelPair => "ztunnel-pair",
            Topology::RelayPair => "relay-pair",
            Topology::Waypoint => "waypoint",
            Topology::WaypointFull => "waypoint-full",
            Topology::DirectPods => "direct-pods",
            Topology::SidecarPair => "sidecar-pair",
            Topology::ZtunnelPairCapture => "ztunnel-pair-capture",
            Topology::IstioZtunnelPair => "istio-ztunnel-pair",
        }
    }
}

pub(crate) const fn ip(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 60, c, d))
}

/// The client workload's address (load comes from here).
pub(crate) const CLIENT: IpAddr = ip(1, 10);
/// The server workload's address.
pub(crate) const SERVER: IpAddr = ip(1, 20);
/// The service VIP.
const VIP: IpAddr = ip(2, 1);
pub(crate) use super::servers::{HTTP_PORT, TCP_PORT};

fn mesh_config() -> String {
    format!(
        r#"apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: a}}
spec: {{address: {a}, serviceListeners: true, workloads: [bench/client]}}
---
apiVersion: dataplane.mesh.dev/v1alpha1
kind: Node
metadata: {{name: b}}
spec: {{address: {b}, workloads: [bench/server]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: bench}}
spec: {{address: {CLIENT}, serviceAccount: client, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: bench}}
spec: {{address: {SERVER}, serviceAccount: server, labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: bench}}
spec:
  hosts: [server.bench.svc]
  addresses: [{VIP}]
  ports:
  - {{number: {HTTP_PORT}, name: http, protocol: HTTP}}
  - {{number: {TCP_PORT}, name: tcp, protocol: TCP}}
  workloadSelector: {{labels: {{app: server}}}}
"#,
        a = ip(0, 1),
        b = ip(0, 2),
    )
}

/// The mesh of [`mesh_config`] with the service behind a waypoint (at 127.60.0.3).
pub(crate) fn waypoint_config() -> String {
    mesh_config().replace(
        "metadata: {name: server, namespace: bench}\nspec:\n  hosts:",
        "metadata: {name: server, namespace: bench, labels: {istio.io/use-waypoint: wp}}\nspec:\n  hosts:",
    ) + &format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: bench}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{value: {w}}}]
"#,
        w = ip(0, 3)
    )
}

/// A running topology.
pub(crate) struct RunningPath {
    /// Where HTTP clients connect.
    pub(crate) http: SocketAddr,
    /// Where TCP throughput clients connect.
    pub(crate) tcp: SocketAddr,
    /// The proxies on the path (stopped before the pods go).
    pub(crate) procs: Vec<ProxyProc>,
    /// The client's address.
    pub(crate) client: IpAddr,
    /// The network namespace the load runs in, for the capture topologies.
    pub(crate) client_netns: Option<String>,
    /// The servers of the capture topologies (in pod B).
    pub(crate) _servers: Option<tokio::runtime::Runtime>,
    /// The pods of the capture topologies.
    pub(crate) _pods: Option<super::pods::Pods>,
}

impl RunningPath {
    fn local(http: SocketAddr, tcp: SocketAddr, procs: Vec<ProxyProc>) -> RunningPath {
        RunningPath {
            http,
            tcp,
            procs,
            client: CLIENT,
            client_netns: None,
            _servers: None,
            _pods: None,
        }
    }
}

/// The pods' mesh: both workloads with sidecars, or both in-pod on their own ztunnel nodes.
fn pods_config(pods: &super::pods::Pods, sidecars: bool) -> String {
    use super::pods::{POD_A, POD_B, POD_VIP};
    let label = if sidecars {
        ", sidecar.istio.io/inject: \"true\""
    } else {
        ""
    };
    // With sidecars the HTTP port's rule uses an HTTP field, so the server's sidecar parses
    // and authorizes every request (L7 on both ends); a ztunnel decides per connection.
    let methods = if sidecars {
        ", methods: [GET, POST]"
    } else {
        ""
    };
    let mut c = String::new();
    if !sidecars {
        for (node, addr, w, ns) in [
            ("a", ip(4, 1), "client", &pods.a),
            ("b", ip(4, 2), "server", &pods.b),
        ] {
            c.push_str(&format!(
                "apiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {{name: {node}}}\nspec: {{address: {addr}, workloads: [bench/{w}], netns: {{bench/{w}: /var/run/netns/{ns}}}}}\n---\n"
            ));
        }
    }
    c.push_str(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: bench}}
spec: {{address: {POD_A}, serviceAccount: client, labels: {{app: client{label}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: bench}}
spec: {{address: {POD_B}, serviceAccount: server, labels: {{app: server{label}}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: bench}}
spec:
  hosts: [server.bench.svc]
  addresses: [{POD_VIP}]
  ports:
  - {{number: {HTTP_PORT}, name: http, protocol: HTTP}}
  - {{number: {TCP_PORT}, name: tcp, protocol: TCP}}
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: server, namespace: bench}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  rules:
  - to: [{{operation: {{ports: ["{TCP_PORT}"]}}}}]
  - to: [{{operation: {{ports: ["{HTTP_PORT}"]{methods}}}}}]
"#
    ));
    c
}

pub(crate) fn setup(topo: Topology, dir: &Path, opts: &ProxyOpts) -> anyhow::Result<RunningPath> {
    match topo {
        Topology::Direct => Ok(RunningPath::local(
            SocketAddr::new(SERVER, HTTP_PORT),
            SocketAddr::new(SERVER, TCP_PORT),
            Vec::new(),
        )),
        Topology::DirectPods
        | Topology::SidecarPair
        | Topology::ZtunnelPairCapture
        | Topology::IstioZtunnelPair => {
            let sidecars = topo == Topology::SidecarPair;
            let pods = super::pods::Pods::create()
                .with_context(|| format!("the {} topology", topo.name()))?;
            let servers = pods.runtime_b()?;
            servers.block_on(
                servers.spawn(super::start_servers(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
            )??;
            if topo == Topology::DirectPods {
                return Ok(RunningPath {
                    http: SocketAddr::new(super::pods::POD_B, HTTP_PORT),
                    tcp: SocketAddr::new(super::pods::POD_B, TCP_PORT),
                    procs: Vec::new(),
                    client: super::pods::POD_A,
                    client_netns: Some(pods.a.clone()),
                    _servers: Some(servers),
                    _pods: Some(pods),
                });
            }
            if topo == Topology::IstioZtunnelPair {
                let bin = opts
                    .istio_ztunnel
                    .as_deref()
                    .context("no --istio-ztunnel")?;
                let istio = super::istio::IstioOpts {
                    workers: opts.workers,
                    log: &opts.log,
                    wrapper: &opts.wrapper,
                };
                let procs = super::istio::setup(bin, &pods, dir, &istio)?;
                return Ok(RunningPath {
                    http: SocketAddr::new(super::pods::POD_VIP, HTTP_PORT),
                    tcp: SocketAddr::new(super::pods::POD_VIP, TCP_PORT),
                    procs: procs
                        .into_iter()
                        .map(|(c, name)| ProxyProc::new(c, name))
                        .collect(),
                    client: super::pods::POD_A,
                    client_netns: Some(pods.a.clone()),
                    _servers: Some(servers),
                    _pods: Some(pods),
                });
            }
            let ca = dir.join("ca");
            mesh_identity::LocalCa::load_or_create(&ca)?;
            let config = dir.join(format!("{}.yaml", topo.name()));
            std::fs::write(&config, pods_config(&pods, sidecars))?;
            let mut procs = Vec::new();
            if sidecars {
                for (ns, w) in [(&pods.b, "bench/server"), (&pods.a, "bench/client")] {
                    procs.push(start_proxy(Role::Sidecar(ns), w, &config, &ca, opts)?);
                }
            } else {
                for node in ["b", "a"] {
                    procs.push(start_proxy(Role::Ztunnel, node, &config, &ca, opts)?);
                }
            }
            pods.capture()?;
            Ok(RunningPath {
                http: SocketAddr::new(super::pods::POD_VIP, HTTP_PORT),
                tcp: SocketAddr::new(super::pods::POD_VIP, TCP_PORT),
                procs,
                client: super::pods::POD_A,
                client_netns: Some(pods.a.clone()),
                _servers: Some(servers),
                _pods: Some(pods),
            })
        }
        Topology::RelayPair => {
            let hop = |c: u8, port: u16| SocketAddr::new(ip(3, c), port);
            let mut procs = Vec::new();
            for port in [HTTP_PORT, TCP_PORT] {
                procs.push(start_relay(
                    hop(2, port),
                    SocketAddr::new(SERVER, port),
                    opts,
                )?);
                procs.push(start_relay(hop(1, port), hop(2, port), opts)?);
            }
            Ok(RunningPath::local(
                hop(1, HTTP_PORT),
                hop(1, TCP_PORT),
                procs,
            ))
        }
        Topology::ZtunnelPair => mesh_path(dir, &mesh_config(), false, opts),
        Topology::Waypoint => mesh_path(dir, &waypoint_config(), true, opts),
        Topology::WaypointFull => {
            let config = waypoint_config() + super::scenarios::FULL_L7;
            mesh_path(dir, &config, true, opts)
        }
    }
}

/// Ztunnel B, the waypoint `bench/wp` if `waypoint`, and ztunnel A on the loopback mesh
/// `config` (the clients at [`CLIENT`] reach the service VIP).
pub(crate) fn mesh_path(
    dir: &Path,
    config: &str,
    waypoint: bool,
    opts: &ProxyOpts,
) -> anyhow::Result<RunningPath> {
    let ca = dir.join("ca");
    mesh_identity::LocalCa::load_or_create(&ca)?;
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, config)?;
    let mut procs = Vec::new();
    procs.push(start_proxy(Role::Ztunnel, "b", &path, &ca, opts)?);
    if waypoint {
        procs.push(start_proxy(Role::Waypoint, "bench/wp", &path, &ca, opts)?);
    }
    procs.push(start_proxy(Role::Ztunnel, "a", &path, &ca, opts)?);
    Ok(RunningPath::local(
        SocketAddr::new(VIP, HTTP_PORT),
        SocketAddr::new(VIP, TCP_PORT),
        procs,
    ))
}
