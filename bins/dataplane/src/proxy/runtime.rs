//! A running proxy ([`Proxy`]): start, apply a new state (certificates and binds first, then
//! one pointer swap), config-file watch, shutdown with drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_hbone::{Pool, PoolConfig};
use mesh_identity::{CertManager, CertProvider, RotationPolicy, TrustBundle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, warn};

use super::ctx::Ctx;
use super::listeners::{ListenerHandle, Spawner};
use super::live::LiveConns;
use super::pods::PodTable;
use super::role::ListenerKey;
use super::settings::{Listening, ProxyConfig};
use super::{admin, jwks, observe, own, upstreams};
use crate::Error;
use crate::config::MeshState;

/// The proxy-wide connection cap, within what a semaphore holds.
fn proxy_max_connections(cfg: &ProxyConfig) -> usize {
    cfg.max_connections
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

/// The readiness task istiod's follower holds until its first state is applied.
pub(super) const FIRST_STATE_TASK: &str = "first xDS state";

/// The readiness tasks followers named by `cfg` will hold: registered in [`Proxy::start`]
/// so `/healthz/ready` is never 200 between the start and the follower's own registration.
fn startup_waits(cfg: &ProxyConfig) -> Vec<&'static str> {
    let mut tasks = Vec::new();
    if cfg.follows_istiod {
        tasks.push(FIRST_STATE_TASK);
    }
    if cfg.zds_pods {
        tasks.push(crate::zds::READINESS_TASK);
    }
    tasks
}

impl Inner {
    /// Drops the start-up hold on `task` (its follower now holds the task itself).
    pub(super) fn release_startup(&self, task: &str) {
        let released: Vec<_> = {
            let mut held = self.startup_waits.lock().unwrap_or_else(|p| p.into_inner());
            let (gone, kept) = std::mem::take(&mut *held)
                .into_iter()
                .partition(|(t, _)| *t == task);
            *held = kept;
            gone
        };
        drop(released);
    }
}

pub(super) struct Inner {
    pub(super) ctx: Arc<Ctx>,
    pub(super) listeners: Mutex<HashMap<ListenerKey, ListenerHandle>>,
    // Serialises config applications (a reload and a shutdown never interleave binds).
    pub(super) applying: tokio::sync::Mutex<()>,
    pub(super) tasks: TaskTracker,
    pub(super) cancel: CancellationToken,
    pub(super) force: CancellationToken,
    pub(super) generation: AtomicU64,
    /// Cancelled by `POST /quitquitquit` on the admin port: the workload is done.
    pub(super) quit: CancellationToken,
    /// The xDS client's status, when the state comes from a control plane.
    pub(super) xds: Mutex<Option<tokio::sync::watch::Receiver<mesh_xds::Status>>>,
    /// `/healthz/ready`: what start-up still waits for.
    pub(super) readiness: mesh_telemetry::readiness::Readiness,
    /// Readiness tasks the config says a follower will hold (istiod's first state, the CNI
    /// agent's snapshot), registered before the readiness endpoint answers and released by
    /// that follower once it holds its own ([`Inner::release_startup`]).
    pub(super) startup_waits: Mutex<Vec<(&'static str, mesh_telemetry::readiness::Pending)>>,
    /// The admin, metrics and readiness addresses, as bound.
    pub(super) servers: Mutex<Vec<SocketAddr>>,
    /// Cancelled once the admin, metrics and readiness servers have stopped (their responses
    /// in flight, such as `POST /quitquitquit`'s, written).
    pub(super) servers_stopped: CancellationToken,
    /// One permit per open data connection (`max_connections`).
    pub(super) conn_permits: Arc<tokio::sync::Semaphore>,
}

/// A running node proxy.
pub struct Proxy {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("node", &self.inner.ctx.node_name)
            .field("listening", &self.listening())
            .finish_non_exhaustive()
    }
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
        cfg.role.serves().check(&state)?;
        if let Some(a) = cfg.admin_addr
            && !a.ip().is_loopback()
        {
            return Err(Error::AdminNotLoopback(a));
        }
        let access = mesh_telemetry::access::AccessLogger::new(cfg.access_log.clone())
            .map_err(Error::AccessLog)?;
        let readiness = mesh_telemetry::readiness::Readiness::new();
        let loading = readiness.register("config and certificates");
        let startup_waits = startup_waits(&cfg)
            .into_iter()
            .map(|task| (task, readiness.register(task)))
            .collect();
        let telemetry = observe::Telemetry::new(access, cfg.max_metric_series, cfg.role.name());
        let dns = cfg
            .dns
            .clone()
            .map(|s| crate::dns::DnsProxy::with_metrics(s, telemetry.dns.clone()))
            .transpose()
            .map_err(|e| Error::Runtime(std::io::Error::other(e.to_string())))?;
        let ctx = Arc::new(Ctx {
            telemetry,
            jwks: jwks::JwksCache::new(cfg.jwks_refresh, cfg.socket_mark),
            netns: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            pods: ArcSwap::from_pointee(PodTable::new(cfg.zds_pods)),
            dns,
            pool: Pool::new(
                PoolConfig {
                    socket_mark: cfg.socket_mark,
                    ..cfg.pool.clone()
                },
                bundle.clone(),
            ),
            state: ArcSwap::from_pointee(MeshState::empty()),
            node_name: cfg.role.serves_as().to_owned(),
            certs: CertManager::new(ca, RotationPolicy::default()),
            bundle,
            cfg,
            live: LiveConns::default(),
            server_tls: ArcSwap::from_pointee(HashMap::new()),
            upstreams: upstreams::Upstreams::default(),
            own: own::OwnAddrs::default(),
            endpoints: crate::config::EndpointRegistry::default(),
            ext_authz: Default::default(),
            rate_limit: Default::default(),
            health: Arc::default(),
            retry_budgets: Default::default(),
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
                startup_waits: Mutex::new(startup_waits),
                servers: Mutex::new(Vec::new()),
                servers_stopped: CancellationToken::new(),
                conn_permits,
            }),
        };
        let mut servers = Vec::new();
        if let Some(a) = proxy.inner.ctx.cfg.admin_addr {
            let log = proxy.inner.ctx.cfg.log.clone();
            servers.push((a, "admin", admin::admin_router(proxy.inner.clone(), log)));
        }
        if let Some(a) = proxy.inner.ctx.cfg.metrics_addr {
            let r = mesh_telemetry::metrics_router(proxy.inner.ctx.telemetry.registry.clone());
            servers.push((a, "metrics", r));
        }
        if let Some(a) = proxy.inner.ctx.cfg.readiness_addr {
            servers.push((a, "readiness", readiness.router()));
        }
        let names: Vec<&str> = servers.iter().map(|(_, n, _)| *n).collect();
        let bound = admin::spawn_servers(
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
            proxy.inner.ctx.cfg.role.name()
        );
        Ok(proxy)
    }

    /// Applies a new, validated state: fetch certificates and bind listeners it adds (failing
    /// without changing anything if that fails), swap it in, stop listeners it drops, close
    /// live connections its policies deny.
    pub async fn apply(&self, mut state: MeshState) -> Result<ApplyReport, Error> {
        let inner = &self.inner;
        let ctx = &inner.ctx;
        let _applying = inner.applying.lock().await;
        let pods = ctx.pods.load_full();
        let plan = self.plan(&state, &pods)?;
        // Certificates and binds first: a failure leaves the running config untouched.
        let staged = self.stage(&plan, &state.trust_domain, &pods).await?;
        // Swap: from here on new connections see the new state.
        ctx.server_tls.store(Arc::new(staged.server_tls));
        ctx.netns.store(Arc::new(staged.namespaces));
        // Endpoint choice: this proxy's locality layouts and the stats kept across swaps.
        ctx.endpoints.bind(&state, &ctx.node_name);
        crate::config::ratelimits::inherit(&mut state, &ctx.state.load());
        let old = ctx.state.swap(Arc::new(state));
        let state = ctx.state.load_full();
        if let Some(dns) = &ctx.dns {
            dns.update(&state, &ctx.node_name);
        }
        ctx.health.sync(&state);
        // Remote JWKS of the RequestAuthentications this proxy enforces.
        let role = &ctx.cfg.role;
        ctx.jwks
            .sync(role.serves().jwks(role.layers(), &state), &inner.cancel);
        let mut report = ApplyReport {
            generation: inner.generation.fetch_add(1, Ordering::Relaxed) + 1,
            ..ApplyReport::default()
        };
        ctx.telemetry
            .config_generation
            .set(i64::try_from(report.generation).unwrap_or(i64::MAX));
        let removed = self.switch_listeners(staged.pending, &plan.desired, &mut report)?;
        drop(removed);
        self.forget_certs(&old, &pods, &plan);
        report.connections_closed = ctx.live.reauthorize(&state);
        self.refresh_own_addrs(std::iter::empty());
        Ok(report)
    }

    /// Records every address this proxy listens on (plus `extra`, listeners about to start),
    /// for [`own::OwnAddrs::contains`].
    pub(super) fn refresh_own_addrs(&self, extra: impl Iterator<Item = SocketAddr>) {
        let inner = &self.inner;
        let mut addrs = inner
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let listeners = inner.listeners.lock().unwrap_or_else(|p| p.into_inner());
        addrs.extend(listeners.values().map(|h| h.listening.addr));
        addrs.extend(extra);
        // ZDS pods' inbound listeners are on the wildcard: their workloads' addresses are ours
        // too (port 0 matches no port; it makes the wildcard listeners' ports ours there).
        if inner.ctx.pods.load().enabled
            && let Some(node) = inner.ctx.state.load().node(&inner.ctx.node_name)
        {
            addrs.extend(node.workloads.iter().map(|w| SocketAddr::new(w.address, 0)));
        }
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
        admin::config_dump(&*self.inner)
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

impl Proxy {
    /// What starting a listener needs of this proxy.
    pub(super) fn spawner(&self) -> Spawner<'_> {
        let inner = &self.inner;
        Spawner {
            ctx: &inner.ctx,
            tasks: &inner.tasks,
            cancel: &inner.cancel,
            force: &inner.force,
            permits: &inner.conn_permits,
        }
    }
}

impl admin::Introspect for Inner {
    fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    fn listening(&self) -> Vec<Listening> {
        let l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Listening> = l.values().map(|h| h.listening.clone()).collect();
        v.sort_by_key(|l| l.addr);
        v
    }

    fn xds_status(&self) -> Option<mesh_xds::Status> {
        let xds = self.xds.lock().unwrap_or_else(|p| p.into_inner());
        xds.as_ref().map(|rx| rx.borrow().clone())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn quit(&self) {
        self.quit.cancel();
    }
}
