//! One DNS listener ([`DnsListener`]): the UDP and TCP loops on a port, their bounds, and the
//! step from bytes to an answer (decode with hickory-proto, [`resolve`](super::resolve), encode,
//! truncate for UDP) or to a forwarded query.
//!
//! Bounds, per listener: a query larger than `max_query_bytes` is dropped; at most
//! `max_forwarded` queries are with the upstreams at once (one more is answered SERVFAIL at
//! once, no task and no socket made for it); at most `max_tcp_connections` TCP clients (one
//! more is reset), each closed after `tcp_idle_timeout` without a complete query. The proxy
//! bounds all its listeners together the same way (`max_forwarded_total`,
//! `max_tcp_connections_total`): a slot takes a permit of the listener and one of the proxy. Garbage
//! and responses (QR set) get no answer, so the listener cannot be used as a reflector.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use super::answer::{EDNS_PAYLOAD, Outcome, error, resolve};
use super::forward::UpstreamSockets;
use super::metrics::{DnsLabels, Source, query_type};
use super::proxy::DnsProxy;
use super::settings::DnsLimits;

/// Smallest UDP answer every client accepts (RFC 1035 without EDNS).
const MIN_UDP: usize = 512;
/// Largest DNS message over TCP (its 16-bit length prefix).
const MAX_TCP: usize = 65_535;

/// Counters of one listener (for tests and logs).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Queries answered SERVFAIL because `max_forwarded` (or, all listeners together,
    /// `max_forwarded_total`) were already upstream.
    pub over_forward_cap: AtomicU64,
    /// Datagrams or TCP messages dropped unanswered (too large, garbage, responses).
    pub dropped: AtomicU64,
    /// TCP connections reset because `max_tcp_connections` (or, all listeners together,
    /// `max_tcp_connections_total`) were open.
    pub tcp_refused: AtomicU64,
}

/// What to do with one message from a client.
pub(super) enum Step {
    Reply(Vec<u8>),
    Forward(Box<Message>, usize, Box<DnsLabels>),
    Drop,
}

/// A DNS listener: the pod it answers for (in-pod) or the client's address decides the asking
/// namespace.
pub struct DnsListener {
    proxy: Arc<DnsProxy>,
    /// The asking pod's namespace (in-pod listener); `None`: looked up by client address.
    namespace: Option<String>,
    /// The asking pod's metric labels (in-pod listener); `None`: looked up by address.
    source: Option<Source>,
    sockets: Arc<dyn UpstreamSockets>,
    forwarding: Arc<Semaphore>,
    stats: ListenerStats,
}

impl std::fmt::Debug for DnsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsListener")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl DnsListener {
    /// A listener of `proxy` for the pod in `namespace` (or, with `None`, for local workloads
    /// by their address), forwarding through `sockets`.
    pub fn new(
        proxy: Arc<DnsProxy>,
        namespace: Option<String>,
        sockets: Arc<dyn UpstreamSockets>,
    ) -> Arc<DnsListener> {
        DnsListener::with_source(proxy, namespace, None, sockets)
    }

    /// [`DnsListener::new`] for a pod whose metric labels are `source`.
    pub fn with_source(
        proxy: Arc<DnsProxy>,
        namespace: Option<String>,
        source: Option<Source>,
        sockets: Arc<dyn UpstreamSockets>,
    ) -> Arc<DnsListener> {
        let cap = proxy
            .limits()
            .max_forwarded
            .clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(DnsListener {
            proxy,
            namespace,
            source,
            sockets,
            forwarding: Arc::new(Semaphore::new(cap)),
            stats: ListenerStats::default(),
        })
    }

    /// Its counters.
    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    fn limits(&self) -> &DnsLimits {
        self.proxy.limits()
    }

    /// The answer to `bytes` from `peer`, or the query to forward, or nothing.
    pub(super) fn decide(&self, bytes: &[u8], peer: IpAddr, udp: bool) -> Step {
        if bytes.len() > self.limits().max_query_bytes {
            return self.drop_one();
        }
        let Ok(query) = Message::from_vec(bytes) else {
            return self.drop_one();
        };
        if query.metadata.message_type != MessageType::Query {
            return self.drop_one();
        }
        let limit = if udp { udp_limit(&query) } else { MAX_TCP };
        let ns = match &self.namespace {
            Some(ns) => Some(ns.clone()),
            None => self.proxy.namespace_of(peer),
        };
        // Istio ztunnel: a client that is not a known workload gets SERVFAIL.
        let Some(ns) = ns else {
            return reply(&error(&query, ResponseCode::ServFail), limit);
        };
        let source = match &self.source {
            Some(s) => s.clone(),
            None => self.proxy.source_of(peer),
        };
        let labels = DnsLabels {
            request_query_type: query_type(
                query
                    .queries
                    .first()
                    .map_or(RecordType::Unknown(0), |q| q.query_type()),
            ),
            request_protocol: if udp { "udp" } else { "tcp" },
            source_canonical_service: source.service,
            source_canonical_revision: source.revision,
        };
        self.proxy.metrics().request(&labels);
        match resolve(&self.proxy.index(), &ns, &query) {
            Outcome::Answer(m) => reply(&m, limit),
            Outcome::Forward => Step::Forward(Box::new(query), limit, Box::new(labels)),
        }
    }

    fn drop_one(&self) -> Step {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        Step::Drop
    }

    /// A forwarded-query slot: the listener's, then the proxy's.
    fn permit(&self) -> Option<Permits> {
        let p = slot(&self.forwarding, self.proxy.forwarding());
        if p.is_none() {
            self.stats.over_forward_cap.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// The encoded upstream answer to `query`, or SERVFAIL.
    async fn forwarded(
        &self,
        query: &Message,
        tcp: bool,
        limit: usize,
        labels: &DnsLabels,
    ) -> Option<Vec<u8>> {
        let fwd = self.proxy.forwarder();
        let start = tokio::time::Instant::now();
        let result = fwd.forward(query, tcp, &*self.sockets).await;
        let metrics = self.proxy.metrics();
        metrics.upstream(labels, start.elapsed(), result.is_err());
        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "dns forward failed");
                error(query, ResponseCode::ServFail)
            }
        };
        encode(&answer, limit)
    }

    /// Serves UDP on `socket` until `stop`.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket, stop: CancellationToken) {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; self.limits().max_query_bytes + 1];
        let mut inflight = JoinSet::new();
        loop {
            let (n, peer) = tokio::select! {
                () = stop.cancelled() => break,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => continue,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    // ICMP errors of earlier sends surface here: not fatal for a UDP server.
                    Err(_) => continue,
                },
            };
            match self.decide(&buf[..n], peer.ip(), true) {
                Step::Reply(b) => {
                    let _ = socket.send_to(&b, peer).await;
                }
                Step::Drop => {}
                Step::Forward(q, limit, labels) => {
                    let Some(permit) = self.permit() else {
                        if let Step::Reply(b) = reply(&error(&q, ResponseCode::ServFail), limit) {
                            let _ = socket.send_to(&b, peer).await;
                        }
                        continue;
                    };
                    let me = self.clone();
                    let socket = socket.clone();
                    let span = tracing::debug_span!("dns_forward", %peer);
                    inflight.spawn(
                        async move {
                            let _permit = permit;
                            if let Some(b) = me.forwarded(&q, false, limit, &labels).await {
                                let _ = socket.send_to(&b, peer).await;
                            }
                        }
                        .instrument(span),
                    );
                }
            }
        }
    }

    /// Serves TCP on `listener` until `stop`.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let conns = Arc::new(Semaphore::new(
            self.limits()
                .max_tcp_connections
                .clamp(1, Semaphore::MAX_PERMITS),
        ));
        let mut open = JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                () = stop.cancelled() => break,
                Some(_) = open.join_next(), if !open.is_empty() => continue,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => {
                        // Typically EMFILE: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(permit) = slot(&conns, self.proxy.tcp_clients()) else {
                self.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_zero_linger();
                continue;
            };
            let me = self.clone();
            let span = tracing::debug_span!("dns_tcp", %peer);
            open.spawn(
                async move {
                    let _permit = permit;
                    me.tcp_conn(tcp, peer).await;
                }
                .instrument(span),
            );
        }
    }

    /// One TCP client: length-prefixed queries, one at a time, until idle or closed.
    async fn tcp_conn(&self, mut tcp: TcpStream, peer: SocketAddr) {
        let idle = self.limits().tcp_idle_timeout;
        let max = self.limits().max_query_bytes;
        loop {
            let read = async {
                let len = usize::from(tcp.read_u16().await?);
                if len > max {
                    return Err(std::io::ErrorKind::InvalidData.into());
                }
                let mut buf = vec![0u8; len];
                tcp.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            };
            let Ok(Ok(buf)) = tokio::time::timeout(idle, read).await else {
                return;
            };
            let answer = match self.decide(&buf, peer.ip(), false) {
                Step::Reply(b) => b,
                Step::Drop => return,
                Step::Forward(q, limit, labels) => {
                    let bytes = match self.permit() {
                        Some(_permit) => self.forwarded(&q, true, limit, &labels).await,
                        None => encode(&error(&q, ResponseCode::ServFail), limit),
                    };
                    let Some(b) = bytes else { return };
                    b
                }
            };
            let Ok(len) = u16::try_from(answer.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(answer.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&answer);
            if !matches!(
                tokio::time::timeout(idle, tcp.write_all(&framed)).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }
}

/// A listener's permit and the proxy's, held together.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A permit of `own` and one of `all`, or neither.
fn slot(own: &Arc<Semaphore>, all: &Arc<Semaphore>) -> Option<Permits> {
    let mine = own.clone().try_acquire_owned().ok()?;
    let shared = all.clone().try_acquire_owned().ok()?;
    Some((mine, shared))
}

/// The UDP answer size for `query`: its EDNS payload size (at most ours), else 512.
fn udp_limit(query: &Message) -> usize {
    query.edns.as_ref().map_or(MIN_UDP, |e| {
        usize::from(e.max_payload().min(EDNS_PAYLOAD)).max(MIN_UDP)
    })
}

fn reply(m: &Message, limit: usize) -> Step {
    encode(m, limit).map_or(Step::Drop, Step::Reply)
}

/// `m` encoded within `limit` bytes: whole, or (too large) its header and question with TC
/// set, so the client retries over TCP (RFC 1035 4.2.1, RFC 7766).
pub(crate) fn encode(m: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    m.truncate().to_vec().ok().filter(|b| b.len() <= limit)
}
