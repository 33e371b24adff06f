//! The L4 proxy of a node: inbound HBONE listeners (one per local workload address, so the
//! certificate presented is chosen by the destination address, as Istio's ztunnel does), the
//! SOCKS5 listener and service-VIP listeners for outbound traffic, and their connection tasks.
//!
//! Every task is spawned on the proxy's `TaskTracker` with a span; `shutdown` stops accepting,
//! lets open connections finish until the drain deadline, then force-closes the rest.
//!
//! A new config is applied with [`Proxy::apply`]: certificates for new local workloads are
//! fetched and new listeners bound first (any failure rejects the config and keeps the old one
//! serving), then the state is swapped with one pointer store, listeners no longer wanted stop
//! accepting, and live inbound connections that the new policies deny are closed.

mod connect;
mod http;
mod hygiene;
mod inbound;
mod jwks;
mod live;
mod observe;
mod outbound;
mod own;
mod plaintext;
mod reset;
pub mod route;
mod sniff;
mod upstreams;
mod waypoint;
mod xds;

pub use hygiene::L7Limits;
pub(crate) use live::{LiveConns, LiveGuard, LiveInbound};
pub use xds::XdsFollower;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_hbone::{Pool, PoolConfig};
use mesh_identity::{CertManager, CertProvider, RotationPolicy, TrustBundle};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};

use crate::Error;
use crate::config::MeshState;

/// Settings of one node proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The `Node` of the mesh config this proxy runs as (a ztunnel).
    pub node: String,
    /// The waypoint `Gateway` (`namespace/name`) this proxy runs as instead of a node.
    pub waypoint: Option<String>,
    /// SOCKS5 listen address; `None` disables SOCKS5.
    pub socks5_addr: Option<SocketAddr>,
    /// Limit for connecting to a destination (HBONE peer or local app).
    pub connect_timeout: Duration,
    /// Limit for an inbound TLS handshake.
    pub handshake_timeout: Duration,
    /// How long open connections may finish after shutdown begins.
    pub drain_timeout: Duration,
    /// HBONE client pool settings.
    pub pool: PoolConfig,
    /// Plaintext inbound listener (Istio's 15006): connections redirected here by capture
    /// rules are delivered to the local workload they were addressed to, unless its
    /// `PeerAuthentication` is STRICT. `None` disables it.
    pub plaintext_addr: Option<SocketAddr>,
    /// Captured outbound listener (Istio's 15001): connections that capture rules (iptables
    /// REDIRECT in the workload's network namespace) sent here go to their original
    /// destination through the mesh. `None` disables it.
    pub outbound_addr: Option<SocketAddr>,
    /// The IPv6 twin of `outbound_addr` (`[::1]:15001`, where ip6tables REDIRECT sends
    /// locally generated IPv6 connections).
    pub outbound_addr_v6: Option<SocketAddr>,
    /// `SO_MARK` set on every socket the proxy opens (Istio's 1337), so capture rules can
    /// leave the proxy's own traffic alone. `None`: unmarked.
    pub socket_mark: Option<u32>,
    /// Admin endpoint (`/config_dump`, `/certs`, `/logging`); must be a loopback address.
    pub admin_addr: Option<SocketAddr>,
    /// Prometheus endpoint (`/metrics`, `/stats/prometheus`).
    pub metrics_addr: Option<SocketAddr>,
    /// Readiness endpoint (`/healthz/ready`).
    pub readiness_addr: Option<SocketAddr>,
    /// Where the JSON access log goes.
    pub access_log: mesh_telemetry::access::Sink,
    /// Cap on label sets per metric.
    pub max_metric_series: usize,
    /// Run-time log control for `/logging` (installed by the binary).
    pub log: Option<mesh_telemetry::logging::LogControl>,
    /// Refresh interval of remote JWKS (waypoint).
    pub jwks_refresh: Duration,
    /// HTTP on captured outbound connections to services without a waypoint is routed here,
    /// per request (a sidecar's client-side L7).
    pub l7_outbound: bool,
    /// HBONE to a local workload's declared HTTP port is served per request when the
    /// workload has policies with HTTP fields or a `RequestAuthentication` (a sidecar's
    /// server-side L7).
    pub l7_inbound: bool,
    /// Inbound by TPROXY (`meshctl capture install --tproxy`): the plaintext listener is
    /// transparent, and connections to the app come from the client's own address.
    pub tproxy: bool,
    /// Limits of the L7 (HTTP) servers.
    pub l7: hygiene::L7Limits,
    /// Most connections open at once over all data listeners; more are closed at accept
    /// (counted in `mesh_connections_refused_total`).
    pub max_connections: usize,
    /// Most connections open at once on one listener.
    pub max_connections_per_listener: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            node: String::new(),
            waypoint: None,
            socks5_addr: None,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            pool: PoolConfig::default(),
            plaintext_addr: None,
            outbound_addr: None,
            outbound_addr_v6: None,
            socket_mark: None,
            admin_addr: None,
            metrics_addr: None,
            readiness_addr: None,
            access_log: mesh_telemetry::access::Sink::Off,
            max_metric_series: mesh_telemetry::metrics::DEFAULT_MAX_SERIES,
            log: None,
            jwks_refresh: Duration::from_secs(20 * 60),
            l7_outbound: false,
            l7_inbound: false,
            tproxy: false,
            l7: hygiene::L7Limits::default(),
            max_connections: 50_000,
            max_connections_per_listener: 20_000,
        }
    }
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Inbound HBONE for one local workload.
    Hbone,
    /// SOCKS5 outbound.
    Socks5,
    /// A service VIP:port.
    Service,
    /// Plaintext inbound (captured connections to local workloads).
    Plaintext,
    /// Captured outbound (connections of local workloads to anywhere).
    Outbound,
    /// A waypoint's HBONE listener.
    Waypoint,
}

/// A bound listener.
#[derive(Debug, Clone)]
pub struct Listening {
    /// Its purpose.
    pub kind: ListenerKind,
    /// Its address.
    pub addr: SocketAddr,
    /// What it serves (workload or service name).
    pub what: String,
}

pub(crate) struct Ctx {
    pub(crate) state: ArcSwap<MeshState>,
    pub(crate) node_name: String,
    pub(crate) certs: CertManager,
    pub(crate) bundle: TrustBundle,
    pub(crate) pool: Pool,
    pub(crate) cfg: ProxyConfig,
    pub(crate) live: LiveConns,
    /// Server TLS configuration per local workload address, rebuilt with each config: the
    /// certificate presented on an HBONE connection is chosen by the address it arrived on, so
    /// a workload that changes identity at the same address presents the new one.
    pub(crate) server_tls: ArcSwap<HashMap<std::net::IpAddr, Arc<rustls::ServerConfig>>>,
    pub(crate) telemetry: observe::Telemetry,
    /// Idle upstream HTTP connections (waypoint).
    pub(crate) upstreams: upstreams::Upstreams,
    /// Remote JWKS for JWT authentication (waypoint).
    pub(crate) jwks: jwks::JwksCache,
    /// The network namespaces of in-pod workloads, by path.
    pub(crate) netns: arc_swap::ArcSwap<HashMap<std::path::PathBuf, Arc<crate::sockets::Netns>>>,
    /// This proxy's own listening addresses: never a destination of the data path.
    pub(crate) own: own::OwnAddrs,
}

impl Ctx {
    /// Where connections made for `w` are created: its network namespace when it is served
    /// in-pod, else here, bound to its own address (so HBONE peers see the workload as the
    /// TCP source).
    pub(crate) fn socket_source(
        &self,
        w: &crate::config::Workload,
    ) -> Option<Arc<dyn mesh_hbone::SocketSource>> {
        let Some(ns) = w.netns.as_ref() else {
            return Some(crate::sockets::SourceAddr::new(w.address));
        };
        let netns = self.netns.load().get(ns)?.clone();
        Some(netns)
    }

    /// This node's HBONE port in the current state.
    pub(crate) fn hbone_port(&self, state: &MeshState) -> u16 {
        state
            .node(&self.node_name)
            .map_or(crate::config::DEFAULT_HBONE_PORT, |n| n.hbone_port)
    }
}

/// The proxy-wide connection cap, within what a semaphore holds.
fn proxy_max_connections(cfg: &ProxyConfig) -> usize {
    cfg.max_connections
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

/// The listeners and identities `state` asks of this proxy: a node's workloads, SOCKS5,
/// plaintext and VIP listeners; or a waypoint's one HBONE listener.
fn plan(cfg: &ProxyConfig, node_name: &str, state: &MeshState) -> Result<Plan, Error> {
    if let Some(key) = &cfg.waypoint {
        let wp = state
            .waypoints
            .get(key)
            .ok_or_else(|| Error::UnknownWaypoint(key.clone()))?;
        return Ok(Plan {
            desired: vec![(
                ListenerKey::Waypoint(wp.hbone_addr()),
                format!("waypoint {key}"),
            )],
            identities: vec![(wp.address, wp.identity.clone())],
        });
    }
    let node = state
        .node(node_name)
        .ok_or_else(|| Error::UnknownNode(node_name.to_owned()))?;
    let mut desired: Vec<(ListenerKey, String)> = Vec::new();
    for w in &node.workloads {
        let addr = SocketAddr::new(w.address, node.hbone_port);
        let Some(ns) = &w.netns else {
            desired.push((ListenerKey::Hbone(addr), w.key()));
            continue;
        };
        // In-pod: the workload's own listeners, inside its network namespace.
        let in_pod = |kind, addr| ListenerKey::InPod(ns.clone(), kind, addr);
        desired.push((
            in_pod(InPodKind::Hbone, addr),
            format!("{} (in-pod)", w.key()),
        ));
        let outbound = in_pod(
            InPodKind::Outbound,
            SocketAddr::new(LOCALHOST, OUTBOUND_PORT),
        );
        if !desired.iter().any(|(k, _)| *k == outbound) {
            desired.push((outbound, format!("{} captured outbound (in-pod)", w.key())));
        }
        desired.push((
            in_pod(
                InPodKind::Plaintext,
                SocketAddr::new(w.address, PLAINTEXT_PORT),
            ),
            format!("{} plaintext inbound (in-pod)", w.key()),
        ));
    }
    if let Some(addr) = cfg.socks5_addr {
        desired.push((ListenerKey::Socks5(addr), format!("node {}", node.name)));
    }
    if let Some(addr) = cfg.plaintext_addr {
        desired.push((
            ListenerKey::Plaintext(addr),
            format!("node {} plaintext inbound", node.name),
        ));
    }
    for addr in [cfg.outbound_addr, cfg.outbound_addr_v6]
        .into_iter()
        .flatten()
    {
        desired.push((
            ListenerKey::Outbound(addr),
            format!("node {} captured outbound", node.name),
        ));
    }
    if node.service_listeners {
        let mut vips: Vec<_> = state.vips().collect();
        vips.sort_by_key(|(a, _)| **a);
        for (addr, sp) in vips {
            let what = format!(
                "{}/{} ({})",
                sp.service.namespace,
                sp.service.name,
                sp.service.hosts.first().map_or("", String::as_str)
            );
            desired.push((ListenerKey::Service(*addr), what));
        }
    }
    Ok(Plan {
        desired,
        identities: node
            .workloads
            .iter()
            .map(|w| (w.address, w.identity.clone()))
            .collect(),
    })
}

/// Istio's captured-outbound port, inside each in-pod workload's namespace.
const OUTBOUND_PORT: u16 = 15001;
/// Istio's plaintext inbound port, inside each in-pod workload's namespace.
const PLAINTEXT_PORT: u16 = 15006;
const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A listener opened inside a workload's network namespace (in-pod mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum InPodKind {
    Hbone,
    Outbound,
    Plaintext,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ListenerKey {
    InPod(std::path::PathBuf, InPodKind, SocketAddr),
    Hbone(SocketAddr),
    Socks5(SocketAddr),
    Service(SocketAddr),
    Plaintext(SocketAddr),
    Outbound(SocketAddr),
    Waypoint(SocketAddr),
}

struct ListenerHandle {
    listening: Listening,
    stop: CancellationToken,
}

struct Inner {
    ctx: Arc<Ctx>,
    listeners: Mutex<HashMap<ListenerKey, ListenerHandle>>,
    // Serialises config applications (a reload and a shutdown never interleave binds).
    applying: tokio::sync::Mutex<()>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    force: CancellationToken,
    generation: AtomicU64,
    /// Cancelled by `POST /quitquitquit` on the admin port: the workload is done.
    quit: CancellationToken,
    /// The xDS client's status, when the state comes from a control plane.
    xds: Mutex<Option<tokio::sync::watch::Receiver<mesh_xds::Status>>>,
    /// `/healthz/ready`: what start-up still waits for.
    readiness: mesh_telemetry::readiness::Readiness,
    /// The admin, metrics and readiness addresses, as bound.
    servers: Mutex<Vec<SocketAddr>>,
    /// Cancelled once the admin, metrics and readiness servers have stopped (their responses
    /// in flight, such as `POST /quitquitquit`'s, written).
    servers_stopped: CancellationToken,
    /// One permit per open data connection (`max_connections`).
    conn_permits: Arc<tokio::sync::Semaphore>,
}

/// A running node proxy.
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("node", &self.inner.ctx.node_name)
            .field("listening", &self.listening())
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let bound = crate::sockets::listen(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    });
    bound.map_err(|source| Error::Bind { addr, source })
}

/// A listener bound for a new state, not yet serving.
enum Pending {
    Hbone(TcpListener),
    Socks5(TcpListener),
    Service(TcpListener),
    Plaintext(TcpListener),
    Outbound(TcpListener),
    Waypoint(TcpListener),
}

impl Pending {
    /// The bound address.
    fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Pending::Hbone(l)
            | Pending::Socks5(l)
            | Pending::Service(l)
            | Pending::Plaintext(l)
            | Pending::Outbound(l)
            | Pending::Waypoint(l) => l.local_addr().ok(),
        }
    }
}

/// What a config asks of this proxy: listeners, and the identity presented on each local
/// address.
struct Plan {
    desired: Vec<(ListenerKey, String)>,
    identities: Vec<(std::net::IpAddr, mesh_identity::SpiffeId)>,
}

/// What applying a config changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The config generation now serving (1 for the start-up config, +1 per applied change).
    pub generation: u64,
    /// Listeners started.
    pub listeners_added: usize,
    /// Listeners stopped.
    pub listeners_removed: usize,
    /// Live connections closed because the new policies deny them.
    pub connections_closed: usize,
}

impl Proxy {
    /// Fetches the local workloads' certificates, binds every listener and starts serving.
    pub async fn start(
        cfg: ProxyConfig,
        state: MeshState,
        ca: Arc<dyn CertProvider>,
        bundle: TrustBundle,
    ) -> Result<Proxy, Error> {
        match &cfg.waypoint {
            Some(w) if !state.waypoints.contains_key(w) => {
                return Err(Error::UnknownWaypoint(w.clone()));
            }
            None if state.node(&cfg.node).is_none() => {
                return Err(Error::UnknownNode(cfg.node.clone()));
            }
            _ => {}
        }
        if let Some(a) = cfg.admin_addr
            && !a.ip().is_loopback()
        {
            return Err(Error::AdminNotLoopback(a));
        }
        let access = mesh_telemetry::access::AccessLogger::new(cfg.access_log.clone())
            .map_err(Error::AccessLog)?;
        let readiness = mesh_telemetry::readiness::Readiness::new();
        let loading = readiness.register("config and certificates");
        let telemetry = observe::Telemetry::new(access, cfg.max_metric_series);
        let ctx = Arc::new(Ctx {
            telemetry,
            jwks: jwks::JwksCache::new(cfg.jwks_refresh, cfg.socket_mark),
            netns: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            pool: Pool::new(
                PoolConfig {
                    socket_mark: cfg.socket_mark,
                    ..cfg.pool.clone()
                },
                bundle.clone(),
            ),
            state: ArcSwap::from_pointee(MeshState::empty()),
            node_name: cfg.waypoint.clone().unwrap_or_else(|| cfg.node.clone()),
            certs: CertManager::new(ca, RotationPolicy::default()),
            bundle,
            cfg,
            live: LiveConns::default(),
            server_tls: ArcSwap::from_pointee(HashMap::new()),
            upstreams: upstreams::Upstreams::default(),
            own: own::OwnAddrs::default(),
        });
        let conn_permits = Arc::new(tokio::sync::Semaphore::new(proxy_max_connections(&ctx.cfg)));
        let proxy = Proxy {
            inner: Arc::new(Inner {
                ctx,
                listeners: Mutex::new(HashMap::new()),
                applying: tokio::sync::Mutex::new(()),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
                force: CancellationToken::new(),
                generation: AtomicU64::new(0),
                quit: CancellationToken::new(),
                xds: Mutex::new(None),
                readiness: readiness.clone(),
                servers: Mutex::new(Vec::new()),
                servers_stopped: CancellationToken::new(),
                conn_permits,
            }),
        };
        let mut servers = Vec::new();
        if let Some(a) = proxy.inner.ctx.cfg.admin_addr {
            let log = proxy.inner.ctx.cfg.log.clone();
            servers.push((a, "admin", observe::admin_router(proxy.inner.clone(), log)));
        }
        if let Some(a) = proxy.inner.ctx.cfg.metrics_addr {
            let r = mesh_telemetry::metrics_router(proxy.inner.ctx.telemetry.registry.clone());
            servers.push((a, "metrics", r));
        }
        if let Some(a) = proxy.inner.ctx.cfg.readiness_addr {
            servers.push((a, "readiness", readiness.router()));
        }
        let names: Vec<&str> = servers.iter().map(|(_, n, _)| *n).collect();
        let bound = observe::spawn_servers(
            servers.into_iter().map(|(a, _, r)| (a, r)).collect(),
            proxy.inner.cancel.clone(),
            proxy.inner.servers_stopped.clone(),
        )?;
        for (name, addr) in names.iter().zip(&bound) {
            info!(%addr, "{name} endpoint listening");
        }
        *proxy
            .inner
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = bound;
        if let Err(e) = proxy.apply(state).await {
            proxy.inner.cancel.cancel();
            return Err(e);
        }
        loading.done();
        info!(
            node = %proxy.inner.ctx.node_name,
            listeners = proxy.listening().len(),
            "{} ready",
            if proxy.inner.ctx.cfg.waypoint.is_some() {
                "waypoint"
            } else if proxy.inner.ctx.node_name.starts_with("sidecar/") {
                "sidecar"
            } else {
                "ztunnel"
            }
        );
        Ok(proxy)
    }

    /// Applies a new, validated state: fetch certificates and bind listeners it adds (failing
    /// without changing anything if that fails), swap it in, stop listeners it drops, close
    /// live connections its policies deny.
    pub async fn apply(&self, state: MeshState) -> Result<ApplyReport, Error> {
        let inner = &self.inner;
        let ctx = &inner.ctx;
        let _applying = inner.applying.lock().await;
        let Plan {
            desired,
            identities,
        } = plan(&ctx.cfg, &ctx.node_name, &state)?;
        // Certificates and binds first: a failure leaves the running config untouched.
        let mut server_tls = HashMap::new();
        for (ip, id) in &identities {
            let tls = mesh_identity::server_config(
                ctx.certs.store(id).await?,
                &ctx.bundle,
                vec![state.trust_domain.clone()],
            )?;
            server_tls.insert(*ip, tls);
        }
        // In-pod namespaces: opened (a thread entering each) before their listeners bind.
        let mut namespaces = HashMap::new();
        {
            let open = ctx.netns.load();
            for (key, _) in &desired {
                if let ListenerKey::InPod(path, _, _) = key
                    && !namespaces.contains_key(path)
                {
                    let ns = match open.get(path) {
                        Some(ns) => ns.clone(),
                        None => crate::sockets::Netns::open(
                            path,
                            Some(
                                ctx.cfg
                                    .socket_mark
                                    .unwrap_or(crate::ztunnel::DEFAULT_SOCKET_MARK),
                            ),
                        )
                        .map_err(|source| Error::Netns {
                            path: path.clone(),
                            source,
                        })?,
                    };
                    namespaces.insert(path.clone(), ns);
                }
            }
        }
        let existing: Vec<ListenerKey> = {
            let l = inner.listeners.lock().unwrap_or_else(|p| p.into_inner());
            l.keys().cloned().collect()
        };
        let mut pending = Vec::new();
        for (key, what) in &desired {
            if existing.contains(key) {
                continue;
            }
            let p = match key {
                ListenerKey::Hbone(addr) => Pending::Hbone(bind(*addr).await?),
                ListenerKey::Socks5(addr) => Pending::Socks5(bind(*addr).await?),
                ListenerKey::Service(addr) => Pending::Service(bind(*addr).await?),
                ListenerKey::Plaintext(addr) if ctx.cfg.tproxy => Pending::Plaintext(
                    crate::sockets::bind_transparent(*addr).map_err(|source| Error::Bind {
                        addr: *addr,
                        source,
                    })?,
                ),
                ListenerKey::Plaintext(addr) => Pending::Plaintext(bind(*addr).await?),
                ListenerKey::Outbound(addr) => Pending::Outbound(bind(*addr).await?),
                ListenerKey::InPod(path, kind, addr) => {
                    let l = match namespaces.get(path) {
                        Some(ns) => ns.bind(*addr).await.map_err(|source| Error::Bind {
                            addr: *addr,
                            source,
                        })?,
                        None => {
                            return Err(Error::Runtime(std::io::Error::other("netns not open")));
                        }
                    };
                    match kind {
                        InPodKind::Hbone => Pending::Hbone(l),
                        InPodKind::Outbound => Pending::Outbound(l),
                        InPodKind::Plaintext => Pending::Plaintext(l),
                    }
                }
                ListenerKey::Waypoint(addr) => Pending::Waypoint(bind(*addr).await?),
            };
            pending.push((key.clone(), what.clone(), p));
        }
        // Swap: from here on new connections see the new state.
        ctx.server_tls.store(Arc::new(server_tls));
        ctx.netns.store(Arc::new(namespaces));
        let old = ctx.state.swap(Arc::new(state));
        let state = ctx.state.load_full();
        // Remote JWKS of the RequestAuthentications this proxy enforces.
        if ctx.cfg.waypoint.is_some() {
            ctx.jwks.sync(
                state
                    .waypoint_authn
                    .values()
                    .flat_map(|a| a.rules())
                    .map(|r| (r.keys.clone(), r.timeout)),
                &inner.cancel,
            );
        } else if ctx.cfg.l7_inbound
            && let Some(node) = state.node(&ctx.node_name)
        {
            ctx.jwks.sync(
                node.workloads
                    .iter()
                    .filter_map(|w| state.sidecar_authn.get(&w.key()))
                    .flat_map(|a| a.rules())
                    .map(|r| (r.keys.clone(), r.timeout)),
                &inner.cancel,
            );
        }
        let mut report = ApplyReport {
            generation: inner.generation.fetch_add(1, Ordering::Relaxed) + 1,
            ..ApplyReport::default()
        };
        ctx.telemetry
            .config_generation
            .set(i64::try_from(report.generation).unwrap_or(i64::MAX));
        // New listeners are our own addresses before they accept anything.
        self.refresh_own_addrs(pending.iter().filter_map(|(_, _, p)| p.local_addr()));
        for (key, what, p) in pending {
            self.start_listener(key, what, p)?;
            report.listeners_added += 1;
        }
        {
            let mut listeners = inner.listeners.lock().unwrap_or_else(|p| p.into_inner());
            let wanted: Vec<&ListenerKey> = desired.iter().map(|(k, _)| k).collect();
            listeners.retain(|k, h| {
                let keep = wanted.contains(&k);
                if !keep {
                    info!(addr = %h.listening.addr, what = %h.listening.what, "listener removed");
                    h.stop.cancel();
                    report.listeners_removed += 1;
                }
                keep
            });
        }
        // Certificates of identities this proxy no longer serves.
        if let Ok(before) = plan(&ctx.cfg, &ctx.node_name, &old) {
            for (_, id) in &before.identities {
                if !identities.iter().any(|(_, x)| x == id) {
                    ctx.certs.remove(id);
                }
            }
        }
        report.connections_closed = ctx.live.reauthorize(&state);
        self.refresh_own_addrs(std::iter::empty());
        Ok(report)
    }

    /// Records every address this proxy listens on (plus `extra`, listeners about to start),
    /// for [`own::OwnAddrs::contains`].
    fn refresh_own_addrs(&self, extra: impl Iterator<Item = SocketAddr>) {
        let inner = &self.inner;
        let mut addrs = inner
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let listeners = inner.listeners.lock().unwrap_or_else(|p| p.into_inner());
        addrs.extend(listeners.values().map(|h| h.listening.addr));
        addrs.extend(extra);
        inner.ctx.own.set(addrs);
    }

    /// Applies `state` from `source` (the config file, xDS), logging the outcome; a failure
    /// is counted as a rejected config and the last good state keeps serving.
    /// Returns whether it applied.
    pub(crate) async fn apply_logged(&self, state: MeshState, source: &str) -> bool {
        match self.apply(state).await {
            Ok(r) => {
                info!(
                    generation = r.generation,
                    listeners_added = r.listeners_added,
                    listeners_removed = r.listeners_removed,
                    connections_closed = r.connections_closed,
                    "{source} applied"
                );
                true
            }
            Err(e) => {
                self.inner.ctx.telemetry.rejected(e.to_string());
                error!(error = %e, "{source} not applied; the last good state keeps serving");
                false
            }
        }
    }

    fn start_listener(&self, key: ListenerKey, what: String, p: Pending) -> Result<(), Error> {
        let inner = &self.inner;
        let ctx = inner.ctx.clone();
        let stop = inner.cancel.child_token();
        let (kind, listener) = match &p {
            Pending::Hbone(l) => (ListenerKind::Hbone, l),
            Pending::Socks5(l) => (ListenerKind::Socks5, l),
            Pending::Service(l) => (ListenerKind::Service, l),
            Pending::Plaintext(l) => (ListenerKind::Plaintext, l),
            Pending::Outbound(l) => (ListenerKind::Outbound, l),
            Pending::Waypoint(l) => (ListenerKind::Waypoint, l),
        };
        let addr = listener.local_addr().map_err(Error::Runtime)?;
        info!(?kind, %addr, %what, "listening");
        let listening = Listening { kind, addr, what };
        match p {
            Pending::Hbone(l) => {
                let cancel = inner.cancel.clone();
                self.serve(l, "hbone", stop.clone(), move |tcp, _peer| {
                    inbound::serve(ctx.clone(), tcp, cancel.clone())
                });
            }
            Pending::Socks5(l) => {
                self.serve(l, "socks5", stop.clone(), move |tcp, peer| {
                    outbound::socks5(ctx.clone(), tcp, peer)
                });
            }
            Pending::Service(l) => {
                self.serve(l, "service", stop.clone(), move |tcp, peer| {
                    outbound::service(ctx.clone(), tcp, peer)
                });
            }
            Pending::Plaintext(l) => {
                self.serve(l, "plaintext", stop.clone(), move |tcp, peer| {
                    plaintext::serve(ctx.clone(), tcp, peer)
                });
            }
            Pending::Outbound(l) => {
                self.serve(l, "outbound", stop.clone(), move |tcp, peer| {
                    outbound::captured(ctx.clone(), tcp, peer)
                });
            }
            Pending::Waypoint(l) => {
                let cancel = inner.cancel.clone();
                self.serve(l, "waypoint", stop.clone(), move |tcp, _peer| {
                    waypoint::serve(ctx.clone(), tcp, cancel.clone())
                });
            }
        }
        let mut listeners = inner.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.insert(key, ListenerHandle { listening, stop });
        Ok(())
    }

    /// Spawns the accept loop of `listener` until `stop`; each connection runs `handler` on
    /// its own task, aborted when the drain deadline passes.
    fn serve<F, Fut>(
        &self,
        listener: TcpListener,
        kind: &'static str,
        stop: CancellationToken,
        handler: F,
    ) where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tasks = self.inner.tasks.clone();
        let force = self.inner.force.clone();
        let addr = listener.local_addr().ok();
        let span = tracing::info_span!("listener", kind, addr = ?addr);
        let proxy_permits = self.inner.conn_permits.clone();
        let listener_permits = Arc::new(tokio::sync::Semaphore::new(
            self.inner
                .ctx
                .cfg
                .max_connections_per_listener
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let refused = self.inner.ctx.telemetry.connections_refused.clone();
        self.inner.tasks.spawn(
            async move {
                loop {
                    let accepted = tokio::select! {
                        () = stop.cancelled() => break,
                        r = listener.accept() => r,
                    };
                    match accepted {
                        Ok((tcp, peer)) => {
                            // Limits first, before any work or memory for the connection.
                            let permits = proxy_permits
                                .clone()
                                .try_acquire_owned()
                                .map_err(|_| "proxy")
                                .and_then(|p| {
                                    listener_permits
                                        .clone()
                                        .try_acquire_owned()
                                        .map(|l| (p, l))
                                        .map_err(|_| "listener")
                                });
                            let permits = match permits {
                                Ok(p) => p,
                                Err(limit) => {
                                    refused
                                        .get_or_create(&[("listener", kind), ("limit", limit)])
                                        .inc();
                                    debug!(%peer, limit, "connection limit reached: closed");
                                    // An RST, at once: no TIME_WAIT, the client learns now.
                                    let _ = tcp.set_zero_linger();
                                    continue;
                                }
                            };
                            let _ = tcp.set_nodelay(true);
                            let conn = handler(tcp, peer);
                            let force = force.clone();
                            // debug level: an enabled span costs an enter/exit on every poll.
                            let span = tracing::debug_span!("conn", kind, %peer);
                            tasks.spawn(
                                async move {
                                    let _permits = permits;
                                    tokio::select! {
                                        () = force.cancelled() => {}
                                        () = conn => {}
                                    }
                                }
                                .instrument(span),
                            );
                        }
                        Err(e) => {
                            // Typically EMFILE: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Resolves when `POST /quitquitquit` asked the proxy to exit (Istio's endpoint for a
    /// workload that finished, so batch jobs complete).
    pub async fn quit_requested(&self) {
        self.inner.quit.cancelled().await;
    }

    /// Watches `path` (polling every `interval`) and applies each changed, valid version. A
    /// file that fails validation is logged with file, field and reason, counted, and the last
    /// good config keeps serving.
    pub fn watch_config(&self, path: std::path::PathBuf, interval: Duration) {
        let proxy = Proxy {
            inner: self.inner.clone(),
        };
        let cancel = self.inner.cancel.clone();
        let span = tracing::info_span!("config_watch", file = %path.display());
        self.inner.tasks.spawn(
            async move {
                let mut last = std::fs::read(&path).ok();
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(interval) => {}
                    }
                    let p = path.clone();
                    let now = tokio::task::spawn_blocking(move || std::fs::read(p))
                        .await
                        .ok()
                        .and_then(Result::ok);
                    if now.is_none() || now == last {
                        continue;
                    }
                    last = now.clone();
                    let text = String::from_utf8_lossy(now.as_deref().unwrap_or_default()).into_owned();
                    // Parsing a large mesh takes CPU time: off the async workers.
                    let p = path.clone();
                    let parsed = match tokio::task::spawn_blocking(move || crate::config::parse(&p, &text)).await {
                        Ok(r) => r,
                        Err(e) => {
                            error!(error = %e, "config parsing panicked; the last good config keeps serving");
                            continue;
                        }
                    };
                    match parsed {
                        Ok(state) => {
                            proxy.apply_logged(state, "config").await;
                        }
                        Err(e) => {
                            proxy.inner.ctx.telemetry.rejected(e.to_string());
                            error!("config rejected; the last good config keeps serving:\n{e}");
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Configs rejected since start.
    pub fn rejected_configs(&self) -> u64 {
        self.inner.ctx.telemetry.config_rejected.get()
    }

    /// The current state as `/config_dump` serves it.
    pub fn config_dump(&self) -> serde_json::Value {
        observe::config_dump(&self.inner)
    }

    /// The metrics in Prometheus text format, as `/metrics` serves them.
    pub fn metrics_text(&self) -> String {
        mesh_telemetry::encode(&self.inner.ctx.telemetry.registry)
    }

    /// The bound listeners.
    pub fn listening(&self) -> Vec<Listening> {
        let l = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Listening> = l.values().map(|h| h.listening.clone()).collect();
        v.sort_by_key(|l| l.addr);
        v
    }

    /// The current mesh state.
    pub fn state(&self) -> Arc<MeshState> {
        self.inner.ctx.state.load_full()
    }

    /// Open HBONE client connections.
    pub fn hbone_connections(&self) -> usize {
        self.inner.ctx.pool.connection_count()
    }

    /// Live inbound connections.
    pub fn live_inbound(&self) -> usize {
        self.inner.ctx.live.len()
    }

    /// Stops accepting, drains open connections for the drain timeout, then closes the rest.
    pub async fn shutdown(self) {
        let inner = &self.inner;
        inner.cancel.cancel();
        inner.tasks.close();
        if tokio::time::timeout(inner.ctx.cfg.drain_timeout, inner.tasks.wait())
            .await
            .is_err()
        {
            warn!("drain timeout: closing remaining connections");
            inner.force.cancel();
            inner.tasks.wait().await;
        }
        inner.ctx.pool.shutdown().await;
        inner.ctx.certs.shutdown().await;
        // The admin servers stop on `cancel` and finish their responses within 2 s.
        let stopped = inner.servers_stopped.cancelled();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), stopped).await;
        info!("ztunnel stopped");
    }
}
