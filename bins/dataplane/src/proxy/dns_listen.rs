//! The DNS proxy's listeners in the listener plan: one in each in-pod workload's network
//! namespace on 127.0.0.1:15053 (UDP and TCP; Istio's ztunnel binds its DNS proxy on
//! localhost in the pod, where istio-cni redirects the pod's port-53 traffic) when DNS
//! capture is on, and one on the node address with `--dns-port`. Binding and starting them;
//! the DNS itself is `crate::dns`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

use super::ctx::Ctx;
use super::role::{InPodKind, ListenerAddrs, ListenerKey, NetnsKey};
use crate::Error;
use crate::dns::forward::{SocketFuture, UpstreamSockets, udp_socket};
use crate::dns::metrics::Source;
use crate::dns::proxy::source;
use crate::dns::{DnsListener, HostSockets, IN_POD_ADDR};
use crate::sockets::Netns;

/// Adds the DNS listeners `addrs` asks for: one per in-pod namespace among `desired`, and
/// the node one.
pub(super) fn plan(desired: &mut Vec<(ListenerKey, String)>, addrs: &ListenerAddrs) {
    if addrs.dns_in_pod {
        let mut add = Vec::new();
        for (key, what) in desired.iter() {
            let ListenerKey::InPod(ns, InPodKind::Hbone, _) = key else {
                continue;
            };
            let dns = ListenerKey::InPod(ns.clone(), InPodKind::Dns, IN_POD_ADDR);
            if !add.iter().any(|(k, _)| *k == dns) {
                add.push((dns, format!("{what} dns")));
            }
        }
        desired.extend(add);
    }
    if let Some(addr) = addrs.dns {
        desired.push((ListenerKey::Dns(addr), "node dns".to_owned()));
    }
}

/// A bound DNS listener, not yet serving.
pub(super) struct DnsPending {
    pub(super) tcp: TcpListener,
    udp: UdpSocket,
    /// The pod's namespace, for an in-pod listener.
    netns: Option<(NetnsKey, Arc<Netns>)>,
}

fn bind_error(addr: SocketAddr) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Bind { addr, source }
}

/// Binds UDP and TCP on the node address `addr`.
pub(super) async fn bind_node(addr: SocketAddr) -> Result<DnsPending, Error> {
    let udp = UdpSocket::bind(addr).await.map_err(bind_error(addr))?;
    let tcp = TcpListener::bind(addr).await.map_err(bind_error(addr))?;
    Ok(DnsPending {
        tcp,
        udp,
        netns: None,
    })
}

/// Binds UDP and TCP on `addr` inside the network namespace `netns` (the pod `key`).
pub(super) async fn bind_in_pod(
    key: &NetnsKey,
    netns: &Arc<Netns>,
    addr: SocketAddr,
) -> Result<DnsPending, Error> {
    let tcp = netns.bind(addr).await.map_err(bind_error(addr))?;
    let udp = netns
        .run(move || {
            let s = std::net::UdpSocket::bind(addr)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .await
        .and_then(UdpSocket::from_std)
        .map_err(bind_error(addr))?;
    Ok(DnsPending {
        tcp,
        udp,
        netns: Some((key.clone(), netns.clone())),
    })
}

/// Upstream sockets made in a pod's namespace (Istio's ztunnel forwards a pod's queries with
/// the pod's socket factory), marked so the pod's capture rules skip them.
struct PodSockets(Arc<Netns>);

impl UpstreamSockets for PodSockets {
    fn udp(&self, upstream: SocketAddr) -> SocketFuture<UdpSocket> {
        let netns = self.0.clone();
        Box::pin(async move {
            let mark = netns.mark();
            let s = netns.run(move || udp_socket(upstream, mark)).await?;
            UdpSocket::from_std(s)
        })
    }

    fn tcp(&self, upstream: SocketAddr) -> SocketFuture<tokio::net::TcpSocket> {
        mesh_hbone::SocketSource::socket(&*self.0, upstream)
    }
}

/// The asker of an in-pod listener: the namespace of the ZDS pod or of the workload the
/// node's `netns` map places in `path`, and that workload's metric labels.
fn asker_of(ctx: &Ctx, key: &NetnsKey) -> (Option<String>, Option<Source>) {
    let state = ctx.state.load();
    let workloads = state
        .node(&ctx.node_name)
        .map_or(&[][..], |n| n.workloads.as_slice());
    match key {
        NetnsKey::Pod(uid) => {
            let Some(pod) = ctx.pods.load().get(uid).cloned() else {
                return (None, None);
            };
            let w = workloads
                .iter()
                .find(|w| w.namespace == pod.info.namespace && w.name == pod.info.name);
            (Some(pod.info.namespace.clone()), w.map(|w| source(w)))
        }
        NetnsKey::Path(path) => {
            let w = workloads.iter().find(|w| w.netns.as_ref() == Some(path));
            (w.map(|w| w.namespace.clone()), w.map(|w| source(w)))
        }
    }
}

/// Starts serving `p` on `tasks` until `stop`.
pub(super) fn start(
    ctx: &Arc<Ctx>,
    tasks: &tokio_util::task::TaskTracker,
    p: DnsPending,
    stop: &CancellationToken,
) {
    let Some(proxy) = ctx.dns.clone() else {
        return;
    };
    let ((namespace, source), sockets): (_, Arc<dyn UpstreamSockets>) = match &p.netns {
        Some((key, netns)) => (asker_of(ctx, key), Arc::new(PodSockets(netns.clone()))),
        None => (
            (None, None),
            Arc::new(HostSockets {
                mark: ctx.cfg.socket_mark,
            }),
        ),
    };
    let addr = p.tcp.local_addr().ok();
    info!(?addr, namespace = ?namespace, "dns proxy listening (udp, tcp)");
    let listener = DnsListener::with_source(proxy, namespace, source, sockets);
    let span = tracing::info_span!("dns", addr = ?addr);
    tasks.spawn(
        listener
            .clone()
            .serve_udp(p.udp, stop.clone())
            .instrument(span.clone()),
    );
    tasks.spawn(listener.serve_tcp(p.tcp, stop.clone()).instrument(span));
}
