//! In-process harness: the proxy cores of a test mesh (ztunnel nodes, waypoints, sidecars)
//! started inside the test process, from the same YAML mesh file, the same command-line flags
//! and a local CA in a temp dir, as [`crate::TestMesh`] gives the binaries.
//!
//! The flags are parsed by the binaries' own clap definitions ([`ZtunnelArgs`],
//! [`WaypointArgs`], [`SidecarArgs`]) and mapped by [`ProxyArgs::proxy_config`], so an
//! in-process proxy is configured exactly as the binary would be; what differs is only the
//! process around it: no signals, no exit code, no fd limit, no RSS of its own. Tests of those
//! (CLI, signals, crash, reload of the file by a process, memory, capture in namespaces) keep
//! using [`crate::TestMesh`].
//!
//! Each proxy runs on a small runtime of its own (its `--worker-threads`, threads named
//! `h2t:<id>`), as its process would: its logs are captured per proxy ([`logs`]), and the
//! test may block (`expect_log` polls) or pause its own clock without stalling the proxies.
//! Handles are used from the test's runtime: [`InprocProxy::listening`], `metrics_text`,
//! [`InprocProxy::apply`], [`InprocProxy::stop`]. The access log (`--access-log stdout`, the
//! default) goes to a file per proxy in the mesh's temp dir and is part of its logs.

mod logs;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use mesh_dataplane::config::MeshState;
use mesh_dataplane::proxy::{ApplyReport, Listening, Proxy, ProxyConfig};
use mesh_dataplane::roles;
use mesh_dataplane::{ProxyArgs, SidecarArgs, WaypointArgs, ZtunnelArgs};
use mesh_identity::LocalCa;
use mesh_telemetry::access::Sink;

/// The log filter the harness gives every proxy, as [`crate::TestMesh`] does.
const LOG: &str = "debug,h2=info,rustls=info";

/// A mesh of in-process proxies sharing a local CA and a config file in a temp dir.
pub struct InprocMesh {
    /// The temp dir: `ca/`, `mesh.yaml`, the access logs.
    pub dir: tempfile::TempDir,
    /// The mesh's local CA.
    pub ca: LocalCa,
    /// The mesh config file every proxy loads (and watches).
    pub config: PathBuf,
    /// The proxies, in start order.
    pub procs: Vec<InprocProxy>,
}

#[derive(Parser)]
struct ZtunnelCli {
    #[command(flatten)]
    args: ZtunnelArgs,
}

#[derive(Parser)]
struct WaypointCli {
    #[command(flatten)]
    args: WaypointArgs,
}

#[derive(Parser)]
struct SidecarCli {
    #[command(flatten)]
    args: SidecarArgs,
}

impl InprocMesh {
    /// A temp dir holding a new local CA and `config_yaml` as `mesh.yaml`.
    pub fn new(config_yaml: &str) -> InprocMesh {
        // Before any `LogControl::init`: the per-proxy routing subscriber is the process's.
        logs::install();
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
        let config = dir.path().join("mesh.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        InprocMesh {
            dir,
            ca,
            config,
            procs: Vec::new(),
        }
    }

    /// The CA's state directory (`--ca-dir`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// The command line the binary `role` would get: config, CA, log filter, then `args`.
    fn argv(&self, role: &str, args: &[&str]) -> Vec<String> {
        let mut v = vec![role.to_owned()];
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v.extend([
            "--config".to_owned(),
            self.config.display().to_string(),
            "--ca-dir".to_owned(),
            self.ca_dir().display().to_string(),
            "--log".to_owned(),
            LOG.to_owned(),
        ]);
        v
    }

    /// Starts the ztunnel for `node` with `extra` flags (as `ztunnel --node <node> …`);
    /// returns once it serves (the binary's "ztunnel ready").
    pub async fn ztunnel(&mut self, node: &str, extra: &[&str]) -> &InprocProxy {
        let mut argv = self.argv("ztunnel", &["--node", node]);
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let args = ZtunnelCli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("ztunnel {argv:?}: {e}"))
            .args;
        let state = load(&self.config);
        let node_addr = state
            .node(node)
            .unwrap_or_else(|| panic!("no Node {node} in the mesh config"))
            .address;
        let cfg = roles::ztunnel::proxy_config(&args, node_addr, log_control());
        self.start(node, &args.common, cfg, state, None).await
    }

    /// Starts the waypoint for Gateway `gateway` (`namespace/name`), named `name` for
    /// [`InprocMesh::expect_log`].
    pub async fn waypoint(&mut self, name: &str, gateway: &str, extra: &[&str]) -> &InprocProxy {
        let mut argv = self.argv("waypoint", &["--gateway", gateway]);
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let args = WaypointCli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("waypoint {argv:?}: {e}"))
            .args;
        let state = load(&self.config);
        let wp_addr = state
            .waypoints
            .get(gateway)
            .unwrap_or_else(|| panic!("no waypoint {gateway} in the mesh config"))
            .address;
        let cfg = roles::waypoint::proxy_config(&args, wp_addr, log_control());
        self.start(name, &args.common, cfg, state, None).await
    }

    /// Starts the sidecar of `workload` (`namespace/name`) in network namespace `netns` (the
    /// workload's "pod": the proxy's threads enter it; `None`: the test's), named `name`.
    pub async fn sidecar(
        &mut self,
        name: &str,
        workload: &str,
        netns: Option<&str>,
        extra: &[&str],
    ) -> &InprocProxy {
        let mut argv = self.argv("sidecar", &["--workload", workload]);
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let args = SidecarCli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("sidecar {argv:?}: {e}"))
            .args;
        let state = load(&self.config);
        let (ns, wl) = workload.split_once('/').unwrap_or(("default", workload));
        let node_name = mesh_dataplane::config::sidecar_node_name(ns, wl);
        let node_addr = state
            .node(&node_name)
            .unwrap_or_else(|| panic!("no sidecar workload {workload} in the mesh config"))
            .address;
        let mut cfg = roles::sidecar::proxy_config(&args, node_addr, &node_name, log_control());
        // Not on [::1], shared by every test on this host (the IPv6 capture tests drive the
        // binary, in a namespace of its own).
        cfg.outbound_addr_v6 = None;
        self.start(name, &args.common, cfg, state, netns).await
    }

    /// Starts a proxy core on a runtime of its own (its threads in network namespace `netns`,
    /// if given), with the mesh's CA, watching the config file as the binaries do.
    async fn start(
        &mut self,
        name: &str,
        common: &ProxyArgs,
        mut cfg: ProxyConfig,
        state: MeshState,
        netns: Option<&str>,
    ) -> &InprocProxy {
        if cfg.access_log == Sink::Stdout {
            let file = self
                .dir
                .path()
                .join(format!("{}.access.log", file_name(name)));
            cfg.access_log = Sink::File(file.clone());
        }
        let access = match &cfg.access_log {
            Sink::File(f) => Some(f.clone()),
            _ => None,
        };
        let endpoints = Endpoints {
            admin: cfg.admin_addr,
            metrics: cfg.metrics_addr,
            readiness: cfg.readiness_addr,
        };
        let (id, logs) = logs::register(&common.log);
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.worker_threads(common.worker_threads.max(1))
            .thread_name(format!("{}{id}", logs::THREAD_PREFIX))
            .enable_all();
        if let Some(ns) = netns.map(str::to_owned) {
            // Every worker and blocking thread enters the pod before it runs anything.
            rt.on_thread_start(move || {
                mesh_dataplane::netns::enter_current_thread(&ns)
                    .unwrap_or_else(|e| panic!("proxy thread: {e}"));
            });
        }
        let rt = rt.build().unwrap();
        let ca = LocalCa::load(self.ca_dir())
            .unwrap()
            .with_ttl(common.cert_ttl);
        let bundle = ca.trust_bundle().unwrap();
        let (path, poll) = (
            self.config.clone(),
            common.config_poll_interval.max(Duration::from_millis(50)),
        );
        let started = rt.spawn(async move {
            let proxy = Proxy::start(cfg, state, Arc::new(ca), bundle).await?;
            proxy.watch_config(path, poll);
            Ok::<_, mesh_dataplane::Error>(proxy)
        });
        let proxy = match started.await.unwrap() {
            Ok(p) => p,
            Err(e) => {
                rt.shutdown_background();
                let logs = logs.lock().unwrap().clone();
                panic!("{name} did not start: {e}; logs:\n{logs}");
            }
        };
        self.procs.push(InprocProxy {
            name: format!("ztunnel {name}"),
            proxy: Some(Arc::new(proxy)),
            rt: Some(rt),
            id,
            logs,
            access,
            endpoints,
        });
        self.procs.last().unwrap()
    }

    /// The proxy registered as `node`.
    pub fn proxy(&self, node: &str) -> &InprocProxy {
        let name = format!("ztunnel {node}");
        self.procs
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no proxy {node}"))
    }

    /// Waits (up to 10 s) until the logs of `node` contain `needle`; returns the logs, or
    /// panics showing them.
    pub fn expect_log(&self, node: &str, needle: &str) -> String {
        crate::wait_for_log(node, needle, || self.logs(node))
    }

    /// The logs (and access log) of `node` so far; empty if there is no such proxy.
    pub fn logs(&self, node: &str) -> String {
        let name = format!("ztunnel {node}");
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(InprocProxy::logs)
            .unwrap_or_default()
    }
}

/// A proxy core running in the test process.
pub struct InprocProxy {
    /// `ztunnel <name>`, as [`crate::Proc::name`].
    pub name: String,
    proxy: Option<Arc<Proxy>>,
    rt: Option<tokio::runtime::Runtime>,
    id: u64,
    logs: Arc<Mutex<String>>,
    access: Option<PathBuf>,
    endpoints: Endpoints,
}

/// Where a proxy's HTTP endpoints listen, as configured by its flags (`None`: disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// Admin (`/config_dump`, `/certs`, `/logging`, `/quitquitquit`).
    pub admin: Option<std::net::SocketAddr>,
    /// Prometheus (`/metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Readiness (`/healthz/ready`).
    pub readiness: Option<std::net::SocketAddr>,
}

impl InprocProxy {
    /// Its admin, metrics and readiness addresses.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints
    }

    /// The running core (`None` once stopped).
    pub fn core(&self) -> Option<&Proxy> {
        self.proxy.as_deref()
    }

    /// The bound data listeners.
    pub fn listening(&self) -> Vec<Listening> {
        self.proxy
            .as_deref()
            .map(Proxy::listening)
            .unwrap_or_default()
    }

    /// The metrics as `/metrics` serves them.
    pub fn metrics_text(&self) -> String {
        self.proxy
            .as_deref()
            .map(Proxy::metrics_text)
            .unwrap_or_default()
    }

    /// Applies a new mesh state, as a changed config file would (on the proxy's runtime,
    /// where its new listeners then run).
    pub async fn apply(&self, state: MeshState) -> Result<ApplyReport, mesh_dataplane::Error> {
        let proxy = self.proxy.clone().expect("proxy stopped");
        let rt = self.rt.as_ref().expect("proxy stopped");
        rt.spawn(async move { proxy.apply(state).await })
            .await
            .unwrap()
    }

    /// Serves the ZDS pod events of `events` (as a CNI agent's connection hands them over),
    /// on the proxy's runtime.
    pub fn serve_pods(&self, events: tokio::sync::mpsc::Receiver<mesh_dataplane::zds::PodEvent>) {
        let proxy = self.proxy.clone().expect("proxy stopped");
        let rt = self.rt.as_ref().expect("proxy stopped");
        let _entered = rt.enter();
        proxy.serve_pods(events);
    }

    /// Parses `yaml` as the mesh file and applies it.
    pub async fn apply_yaml(&self, yaml: &str) -> Result<ApplyReport, mesh_dataplane::Error> {
        let state = mesh_dataplane::config::parse(Path::new("mesh.yaml"), yaml)
            .map_err(mesh_dataplane::Error::Config)?;
        self.apply(state).await
    }

    /// The logs so far, then the access log.
    pub fn logs(&self) -> String {
        let mut s = self.logs.lock().unwrap().clone();
        if let Some(f) = &self.access {
            s.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        }
        s
    }

    /// Shuts the proxy down as SIGTERM would (stop accepting, drain, close); returns whether
    /// it finished within 10 s.
    pub async fn stop(&mut self) -> bool {
        let (Some(proxy), Some(rt)) = (self.proxy.take(), self.rt.take()) else {
            return false;
        };
        // Every `apply` has returned: this is the only reference left.
        let Ok(proxy) = Arc::try_unwrap(proxy) else {
            rt.shutdown_background();
            return false;
        };
        let done = rt.spawn(proxy.shutdown());
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(10), done).await,
            Ok(Ok(()))
        );
        rt.shutdown_background();
        ok
    }
}

impl Drop for InprocProxy {
    fn drop(&mut self) {
        // A crash, as far as the test can tell: tasks dropped, sockets closed.
        drop(self.proxy.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        logs::unregister(self.id);
        if std::thread::panicking() {
            eprintln!("---- logs of {} ----\n{}", self.name, self.logs());
        }
    }
}

fn load(config: &Path) -> MeshState {
    mesh_dataplane::config::load_file(config).unwrap_or_else(|e| panic!("mesh config: {e}"))
}

/// A log control: the harness's subscriber is installed first, so this one only answers
/// `/logging` reads (changing the level is a binary-test matter).
fn log_control() -> mesh_telemetry::logging::LogControl {
    mesh_telemetry::logging::LogControl::init(LOG)
}

fn file_name(name: &str) -> String {
    name.replace('/', "_")
}
