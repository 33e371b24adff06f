//! The L4 proxy of a node: inbound HBONE listeners (one per local workload address, so the
//! certificate presented is chosen by the destination address, as Istio's ztunnel does), the
//! SOCKS5 listener and service-VIP listeners for outbound traffic, and their connection tasks.
//!
//! Every task is spawned on the proxy's `TaskTracker` with a span; `shutdown` stops accepting,
//! lets open connections finish until the drain deadline, then force-closes the rest.

mod inbound;
mod outbound;
pub mod route;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_hbone::{Pool, PoolConfig};
use mesh_identity::{CertManager, CertProvider, RotationPolicy, TrustBundle};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

use crate::Error;
use crate::config::{MeshState, Node};

/// Settings of one node proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The `Node` of the mesh config this proxy runs as.
    pub node: String,
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
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            node: String::new(),
            socks5_addr: None,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            pool: PoolConfig::default(),
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
    pub(crate) node: Arc<Node>,
    pub(crate) certs: CertManager,
    pub(crate) bundle: TrustBundle,
    pub(crate) pool: Pool,
    pub(crate) cfg: ProxyConfig,
}

/// A running node proxy.
pub struct Proxy {
    ctx: Arc<Ctx>,
    listening: Vec<Listening>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    force: CancellationToken,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("node", &self.ctx.node.name)
            .field("listening", &self.listening)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl Proxy {
    /// Fetches the local workloads' certificates, binds every listener and starts serving.
    pub async fn start(
        cfg: ProxyConfig,
        state: MeshState,
        ca: Arc<dyn CertProvider>,
        bundle: TrustBundle,
    ) -> Result<Proxy, Error> {
        let node = state
            .node(&cfg.node)
            .cloned()
            .ok_or_else(|| Error::UnknownNode(cfg.node.clone()))?;
        let certs = CertManager::new(ca, RotationPolicy::default());
        for w in &node.workloads {
            certs.store(&w.identity).await?;
        }
        let ctx = Arc::new(Ctx {
            pool: Pool::new(cfg.pool.clone(), bundle.clone()),
            state: ArcSwap::from_pointee(state),
            node: node.clone(),
            certs,
            bundle,
            cfg,
        });
        let mut proxy = Proxy {
            ctx: ctx.clone(),
            listening: Vec::new(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            force: CancellationToken::new(),
        };
        // Bind everything first so a port conflict fails start-up before anything serves.
        let mut hbone = Vec::new();
        for w in &node.workloads {
            let addr = SocketAddr::new(w.address, node.hbone_port);
            let l = bind(addr).await?;
            let tls = mesh_identity::server_config(
                ctx.certs.store(&w.identity).await?,
                &ctx.bundle,
                vec![ctx.state.load().trust_domain.clone()],
            )?;
            proxy.note(ListenerKind::Hbone, &l, w.key())?;
            hbone.push((l, tls));
        }
        let socks = match ctx.cfg.socks5_addr {
            Some(addr) => {
                let l = bind(addr).await?;
                proxy.note(ListenerKind::Socks5, &l, format!("node {}", node.name))?;
                Some(l)
            }
            None => None,
        };
        let mut services = Vec::new();
        if node.service_listeners {
            let state = ctx.state.load_full();
            let mut vips: Vec<_> = state.vips().collect();
            vips.sort_by_key(|(a, _)| **a);
            for (addr, sp) in vips {
                let l = bind(*addr).await?;
                let what = format!(
                    "{}/{} ({})",
                    sp.service.namespace,
                    sp.service.name,
                    sp.service.hosts.first().map_or("", String::as_str)
                );
                proxy.note(ListenerKind::Service, &l, what)?;
                services.push(l);
            }
        }
        for (l, tls) in hbone {
            let ctx = ctx.clone();
            let cancel = proxy.cancel.clone();
            proxy.serve(l, "hbone", move |tcp, _peer| {
                inbound::serve(ctx.clone(), tcp, tls.clone(), cancel.clone())
            });
        }
        if let Some(l) = socks {
            let ctx = ctx.clone();
            proxy.serve(l, "socks5", move |tcp, peer| {
                outbound::socks5(ctx.clone(), tcp, peer)
            });
        }
        for l in services {
            let ctx = ctx.clone();
            proxy.serve(l, "service", move |tcp, peer| {
                outbound::service(ctx.clone(), tcp, peer)
            });
        }
        info!(node = %node.name, listeners = proxy.listening.len(), "ztunnel ready");
        Ok(proxy)
    }

    fn note(&mut self, kind: ListenerKind, l: &TcpListener, what: String) -> Result<(), Error> {
        let addr = l.local_addr().map_err(Error::Runtime)?;
        info!(?kind, %addr, %what, "listening");
        self.listening.push(Listening { kind, addr, what });
        Ok(())
    }

    /// Spawns the accept loop of `listener`; each connection runs `handler` on its own task,
    /// aborted when the drain deadline passes.
    fn serve<F, Fut>(&self, listener: TcpListener, kind: &'static str, handler: F)
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tasks = self.tasks.clone();
        let cancel = self.cancel.clone();
        let force = self.force.clone();
        let addr = listener.local_addr().ok();
        let span = tracing::info_span!("listener", kind, addr = ?addr);
        self.tasks.spawn(
            async move {
                loop {
                    let accepted = tokio::select! {
                        () = cancel.cancelled() => break,
                        r = listener.accept() => r,
                    };
                    match accepted {
                        Ok((tcp, peer)) => {
                            let _ = tcp.set_nodelay(true);
                            let conn = handler(tcp, peer);
                            let force = force.clone();
                            // debug level: an enabled span costs an enter/exit on every poll.
                            let span = tracing::debug_span!("conn", kind, %peer);
                            tasks.spawn(
                                async move {
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

    /// The bound listeners.
    pub fn listening(&self) -> &[Listening] {
        &self.listening
    }

    /// The current mesh state.
    pub fn state(&self) -> Arc<MeshState> {
        self.ctx.state.load_full()
    }

    /// Open HBONE client connections.
    pub fn hbone_connections(&self) -> usize {
        self.ctx.pool.connection_count()
    }

    /// Stops accepting, drains open connections for the drain timeout, then closes the rest.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.ctx.cfg.drain_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("drain timeout: closing remaining connections");
            self.force.cancel();
            self.tasks.wait().await;
        }
        self.ctx.pool.shutdown().await;
        self.ctx.certs.shutdown().await;
        info!("ztunnel stopped");
    }
}
