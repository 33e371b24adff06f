//! The listeners of a proxy: what a [`Plan`] asks for ([`ListenerKey`]), binding them before
//! a new state is swapped in (a failure leaves the running state untouched), and the accept
//! loop with its connection limits, which hands each connection to its data path.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::ctx::Ctx;
use super::pods::PodTable;
use super::role::{InPodKind, ListenerKey, NetnsKey};
use super::settings::{ListenerKind, Listening};
use super::{dns_listen, inbound, outbound, plaintext, waypoint};
use crate::Error;

/// A started listener: what it serves, its stop, and the abort of its open connections.
pub(super) struct ListenerHandle {
    pub(super) listening: Listening,
    pub(super) stop: CancellationToken,
    /// Aborts the connections it accepted (a child of the proxy's drain deadline): a deleted
    /// ZDS pod's connections end when its drain bound passes.
    pub(super) force: CancellationToken,
}

/// The open network namespaces of in-pod workloads, by path.
pub(super) type Namespaces = HashMap<std::path::PathBuf, Arc<crate::sockets::Netns>>;

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let bound = crate::sockets::listen(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    });
    bound.map_err(|source| Error::Bind { addr, source })
}

/// A listener bound for a new state, not yet serving.
pub(super) enum Pending {
    Hbone(TcpListener),
    Socks5(TcpListener),
    Service(TcpListener),
    Plaintext(TcpListener),
    Outbound(TcpListener),
    /// A captured-outbound listener inside a namespace: its source is that namespace's workload.
    PodOutbound(TcpListener, NetnsKey),
    Waypoint(TcpListener),
    Dns(Box<super::dns_listen::DnsPending>),
}

impl Pending {
    /// The bound address.
    pub(super) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Pending::Hbone(l)
            | Pending::Socks5(l)
            | Pending::Service(l)
            | Pending::Plaintext(l)
            | Pending::Outbound(l)
            | Pending::PodOutbound(l, _)
            | Pending::Waypoint(l) => l.local_addr().ok(),
            Pending::Dns(d) => d.tcp.local_addr().ok(),
        }
    }
}

/// The network namespaces of `desired`'s in-pod listeners: those already open are reused,
/// the others opened (a thread entering each) before their listeners bind.
pub(super) fn open_namespaces(
    ctx: &Ctx,
    desired: &[(ListenerKey, String)],
) -> Result<Namespaces, Error> {
    let mut namespaces = HashMap::new();
    let open = ctx.netns.load();
    for (key, _) in desired {
        if let ListenerKey::InPod(NetnsKey::Path(path), _, _) = key
            && !namespaces.contains_key(path)
        {
            let ns = match open.get(path) {
                Some(ns) => ns.clone(),
                None => crate::sockets::Netns::open(
                    path,
                    Some(
                        ctx.cfg
                            .socket_mark
                            .unwrap_or(crate::sockets::DEFAULT_SOCKET_MARK),
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
    Ok(namespaces)
}

/// Binds the listeners of `desired` not in `existing`; the first failure fails them all
/// (dropping what was bound).
pub(super) async fn bind_new(
    ctx: &Ctx,
    desired: &[(ListenerKey, String)],
    existing: &[ListenerKey],
    namespaces: &Namespaces,
    pods: &PodTable,
) -> Result<Vec<(ListenerKey, String, Pending)>, Error> {
    let mut pending = Vec::new();
    for (key, what) in desired {
        if existing.contains(key) {
            continue;
        }
        let p = match key {
            ListenerKey::Hbone(addr) => Pending::Hbone(bind(*addr).await?),
            ListenerKey::Socks5(addr) => Pending::Socks5(bind(*addr).await?),
            ListenerKey::Service(addr) => Pending::Service(bind(*addr).await?),
            ListenerKey::Plaintext(addr) if ctx.layers().transparent_inbound => {
                Pending::Plaintext(crate::sockets::bind_transparent(*addr).map_err(|source| {
                    Error::Bind {
                        addr: *addr,
                        source,
                    }
                })?)
            }
            ListenerKey::Plaintext(addr) => Pending::Plaintext(bind(*addr).await?),
            ListenerKey::Outbound(addr) => Pending::Outbound(bind(*addr).await?),
            ListenerKey::Dns(addr) => Pending::Dns(Box::new(dns_listen::bind_node(*addr).await?)),
            ListenerKey::InPod(ns, InPodKind::Dns, addr) => {
                let netns = match ns {
                    NetnsKey::Path(path) => namespaces.get(path),
                    NetnsKey::Pod(uid) => pods.get(uid).map(|p| &p.netns),
                }
                .ok_or_else(|| Error::Runtime(std::io::Error::other("netns not open")))?;
                Pending::Dns(Box::new(dns_listen::bind_in_pod(ns, netns, *addr).await?))
            }
            ListenerKey::InPod(ns, kind, addr) => {
                let (netns, transparent) = match ns {
                    NetnsKey::Path(path) => (namespaces.get(path), false),
                    // istio-cni TPROXYs a pod's inbound (15008, 15006) to these.
                    NetnsKey::Pod(uid) => (
                        pods.get(uid).map(|p| &p.netns),
                        *kind != InPodKind::Outbound,
                    ),
                };
                let l = match netns {
                    Some(ns) if transparent => {
                        ns.bind_transparent(*addr)
                            .await
                            .map_err(|source| Error::Bind {
                                addr: *addr,
                                source,
                            })?
                    }
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
                    InPodKind::Outbound => Pending::PodOutbound(l, ns.clone()),
                    InPodKind::Plaintext => Pending::Plaintext(l),
                    // Bound above, with its UDP socket.
                    InPodKind::Dns => continue,
                }
            }
            ListenerKey::Waypoint(addr) => Pending::Waypoint(bind(*addr).await?),
        };
        pending.push((key.clone(), what.clone(), p));
    }
    Ok(pending)
}

/// What starting a listener needs of the running proxy.
pub(super) struct Spawner<'a> {
    pub(super) ctx: &'a Arc<Ctx>,
    pub(super) tasks: &'a TaskTracker,
    /// The proxy's stop (listeners stop with it; HBONE connections drain on it).
    pub(super) cancel: &'a CancellationToken,
    /// The drain deadline: open connections are aborted.
    pub(super) force: &'a CancellationToken,
    /// One permit per open data connection of the proxy.
    pub(super) permits: &'a Arc<tokio::sync::Semaphore>,
}

/// Starts serving a bound listener: its accept loop hands each connection to its data path.
pub(super) fn start(s: &Spawner<'_>, what: String, p: Pending) -> Result<ListenerHandle, Error> {
    let ctx = s.ctx.clone();
    let stop = s.cancel.child_token();
    let force = s.force.child_token();
    let (kind, listener) = match &p {
        Pending::Hbone(l) => (ListenerKind::Hbone, l),
        Pending::Socks5(l) => (ListenerKind::Socks5, l),
        Pending::Service(l) => (ListenerKind::Service, l),
        Pending::Plaintext(l) => (ListenerKind::Plaintext, l),
        Pending::Outbound(l) | Pending::PodOutbound(l, _) => (ListenerKind::Outbound, l),
        Pending::Waypoint(l) => (ListenerKind::Waypoint, l),
        Pending::Dns(d) => (ListenerKind::Dns, &d.tcp),
    };
    let addr = listener.local_addr().map_err(Error::Runtime)?;
    info!(?kind, %addr, %what, "listening");
    let listening = Listening { kind, addr, what };
    match p {
        Pending::Hbone(l) => {
            let cancel = s.cancel.clone();
            accept_loop(s, l, "hbone", (&stop, &force), move |tcp, _peer| {
                inbound::serve(ctx.clone(), tcp, cancel.clone())
            });
        }
        Pending::Socks5(l) => {
            accept_loop(s, l, "socks5", (&stop, &force), move |tcp, peer| {
                outbound::socks5(ctx.clone(), tcp, peer)
            });
        }
        Pending::Service(l) => {
            accept_loop(s, l, "service", (&stop, &force), move |tcp, peer| {
                outbound::service(ctx.clone(), tcp, peer)
            });
        }
        Pending::Plaintext(l) => {
            accept_loop(s, l, "plaintext", (&stop, &force), move |tcp, peer| {
                plaintext::serve(ctx.clone(), tcp, peer)
            });
        }
        Pending::Outbound(l) => {
            accept_loop(s, l, "outbound", (&stop, &force), move |tcp, peer| {
                outbound::captured(ctx.clone(), tcp, peer, None)
            });
        }
        Pending::PodOutbound(l, ns) => {
            accept_loop(s, l, "outbound", (&stop, &force), move |tcp, peer| {
                outbound::captured(ctx.clone(), tcp, peer, Some(ns.clone()))
            });
        }
        Pending::Waypoint(l) => {
            let cancel = s.cancel.clone();
            accept_loop(s, l, "waypoint", (&stop, &force), move |tcp, _peer| {
                waypoint::serve(ctx.clone(), tcp, cancel.clone())
            });
        }
        Pending::Dns(d) => dns_listen::start(&ctx, s.tasks, *d, &stop),
    }
    Ok(ListenerHandle {
        listening,
        stop,
        force,
    })
}

/// Spawns the accept loop of `listener` until `stop`; each connection runs `handler` on its
/// own task, aborted when `force` (the drain deadline, or the listener's own abort) fires.
/// The loop's task lives until its connections have ended (it is what a drain waits for);
/// the connections are a `JoinSet` it aborts on `force`, so a connection's task never polls
/// a cancellation token itself (a shared token's lock on every wake-up of every connection).
fn accept_loop<F, Fut>(
    s: &Spawner<'_>,
    listener: TcpListener,
    kind: &'static str,
    (stop, force): (&CancellationToken, &CancellationToken),
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stop = stop.clone();
    let force = force.clone();
    let addr = listener.local_addr().ok();
    let span = tracing::info_span!("listener", kind, addr = ?addr);
    let admit = Admit {
        kind,
        proxy: s.permits.clone(),
        listener: Arc::new(tokio::sync::Semaphore::new(
            s.ctx
                .cfg
                .max_connections_per_listener
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        )),
        refused: s.ctx.telemetry.connections_refused.clone(),
    };
    let handler = Arc::new(handler);
    s.tasks.spawn(
        async move {
            let mut listener = Some(listener);
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    // Stop accepting (the socket closes); the connections go on.
                    () = stop.cancelled(), if listener.is_some() => listener = None,
                    r = accept(listener.as_ref()), if listener.is_some() => match r {
                        Ok((tcp, peer)) => {
                            let Some(permits) = admit.permits(&tcp, peer) else { continue };
                            let _ = tcp.set_nodelay(true);
                            let handler = handler.clone();
                            // debug level: an enabled span costs an enter/exit on every poll.
                            let span = tracing::debug_span!("conn", kind, %peer);
                            conns.spawn(
                                async move {
                                    let _permits = permits;
                                    handler(tcp, peer).await;
                                }
                                .instrument(span),
                            );
                        }
                        Err(e) => {
                            // Typically EMFILE: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    () = force.cancelled() => {
                        conns.abort_all();
                        break;
                    }
                }
                if listener.is_none() && conns.is_empty() {
                    break;
                }
            }
            // Aborted connections end (their state dropped) before the loop's task does.
            while conns.join_next().await.is_some() {}
        }
        .instrument(span),
    );
}

async fn accept(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The connection limits of one listener.
struct Admit {
    kind: &'static str,
    proxy: Arc<tokio::sync::Semaphore>,
    listener: Arc<tokio::sync::Semaphore>,
    refused: super::observe::ConnLimitFamily,
}

impl Admit {
    /// Permits for a new connection, before any work or memory for it; `None`: over a
    /// limit, counted, and the connection reset at once (no TIME_WAIT, the client learns now).
    fn permits(
        &self,
        tcp: &TcpStream,
        peer: SocketAddr,
    ) -> Option<(
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    )> {
        let permits = self
            .proxy
            .clone()
            .try_acquire_owned()
            .map_err(|_| "proxy")
            .and_then(|p| {
                self.listener
                    .clone()
                    .try_acquire_owned()
                    .map(|l| (p, l))
                    .map_err(|_| "listener")
            });
        match permits {
            Ok(p) => Some(p),
            Err(limit) => {
                self.refused
                    .get_or_create(&[("listener", self.kind), ("limit", limit)])
                    .inc();
                debug!(%peer, limit, "connection limit reached: closed");
                let _ = tcp.set_zero_linger();
                None
            }
        }
    }
}
