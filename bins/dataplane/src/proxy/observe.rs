//! The proxy's telemetry: Istio TCP metrics and the access log for each connection, the
//! config counters, and the admin (15000, loopback only), metrics (15020) and readiness
//! (15021) servers, which run on their own small runtime so a busy data plane never delays a
//! scrape or a readiness probe, and the reverse.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use mesh_telemetry::access::{AccessLogger, ConnectionRecord, Outcome};
use mesh_telemetry::metrics::{
    ConnectionLabels, ConnectionRecorder, PeerLabels, Reporter, ResponseFlags, SecurityPolicy,
    ServiceLabels, Str, TcpMetrics,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Workload;

/// `mesh_connections_refused_total{listener, limit}`.
pub(crate) type ConnLimitFamily =
    prometheus_client::metrics::family::Family<[(&'static str, &'static str); 2], Counter>;

/// Telemetry shared by every connection of a proxy.
pub(crate) struct Telemetry {
    pub(crate) registry: Arc<Registry>,
    pub(crate) tcp: TcpMetrics,
    pub(crate) requests: mesh_telemetry::requests::RequestMetrics,
    pub(crate) access: AccessLogger,
    pub(crate) config_rejected: Counter,
    pub(crate) config_generation: Gauge,
    /// Connections refused at accept because a connection limit was reached, by listener
    /// kind and limit (`proxy`, `listener`).
    pub(crate) connections_refused: ConnLimitFamily,
    /// The last rejected config: when and why (for `/config_dump`).
    pub(crate) last_rejection: Mutex<Option<(String, String)>>,
    /// Upgraded (WebSocket) connections of the L7 proxies.
    pub(crate) upgrades: super::http::upgrade::websocket::UpgradeMetrics,
    /// Mirrored request copies of the L7 proxies.
    pub(crate) mirrors: super::http::mirror::MirrorMetrics,
    /// Istio's ztunnel DNS metrics (`istio_dns_*`).
    pub(crate) dns: crate::dns::DnsMetrics,
}

impl Telemetry {
    /// The metrics of a proxy whose role is `role` (`ztunnel`, `waypoint`, `sidecar`).
    pub(crate) fn new(access: AccessLogger, max_series: usize, role: &str) -> Telemetry {
        let mut registry = Registry::default();
        mesh_telemetry::build_info::register(
            &mut registry,
            mesh_telemetry::build_info::istio_component(role),
            env!("CARGO_PKG_VERSION"),
        );
        let tcp = TcpMetrics::new(&mut registry, max_series);
        let requests = mesh_telemetry::requests::RequestMetrics::new(&mut registry, max_series);
        registry.register_collector(Box::new(mesh_telemetry::process::ProcessCollector));
        let dns = crate::dns::DnsMetrics::register(&mut registry);
        let config_rejected = Counter::default();
        let config_generation = Gauge::default();
        let mesh = registry.sub_registry_with_prefix("mesh");
        mesh.register(
            "config_rejected",
            "Mesh config versions rejected (invalid file, or certificates/listeners for it failed); the last good config kept serving",
            config_rejected.clone(),
        );
        mesh.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer fell behind or its sink failed",
            access.dropped_counter(),
        );
        mesh.register(
            "config_generation",
            "Generation of the mesh config in force (1 at start, +1 per applied change)",
            config_generation.clone(),
        );
        let connections_refused = ConnLimitFamily::default();
        mesh.register(
            "connections_refused",
            "Connections closed at accept because a connection limit (--max-connections, --max-connections-per-listener) was reached",
            connections_refused.clone(),
        );
        let upgrades = super::http::upgrade::websocket::UpgradeMetrics::register(mesh);
        let mirrors = super::http::mirror::MirrorMetrics::register(mesh);
        Telemetry {
            dns,
            upgrades,
            mirrors,
            connections_refused,
            registry: Arc::new(registry),
            tcp,
            requests,
            access,
            config_rejected,
            config_generation,
            last_rejection: Mutex::new(None),
        }
    }

    pub(crate) fn rejected(&self, error: String) {
        self.config_rejected.inc();
        *self
            .last_rejection
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some((mesh_telemetry::access::now_rfc3339(), error));
    }
}

/// The `baggage` describing workload `w`, as Istio's ztunnel sends it on the CONNECT (the
/// source) and, Istio 1.29+, on the 200 (the destination): istio/ztunnel
/// `Workload::baggage` and `src/baggage.rs`. Labels we do not know (`unknown`) are left out,
/// as Istio leaves out empty ones. The workload kind is `deployment`, the kind Istio gives
/// the workload API's default `workload_type`.
pub(crate) fn baggage(w: &Workload) -> mesh_hbone::headers::Baggage {
    let t = &w.telemetry;
    let known = |v: &Str| {
        (!v.is_empty() && &**v != mesh_telemetry::metrics::UNKNOWN).then(|| v.to_string())
    };
    mesh_hbone::headers::Baggage {
        cluster: known(&t.cluster),
        namespace: Some(w.namespace.clone()).filter(|n| !n.is_empty()),
        workload_kind: Some("deployment".into()),
        workload_name: known(&t.workload),
        service_name: known(&t.canonical_service),
        service_version: known(&t.canonical_revision),
        region: known(&t.region),
        zone: known(&t.zone),
    }
}

/// Labels for a source known only by its mTLS identity (not a workload in the config).
pub(crate) fn identity_labels(identity: &str, namespace: &str) -> PeerLabels {
    PeerLabels {
        principal: Str::from(identity),
        namespace: Str::from(namespace),
        ..PeerLabels::unknown()
    }
}

/// The label set of one connection.
pub(crate) fn labels(
    reporter: Reporter,
    src: &PeerLabels,
    dst: &PeerLabels,
    service: Option<&ServiceLabels>,
    security: SecurityPolicy,
) -> ConnectionLabels {
    let unknown;
    let service = match service {
        Some(s) => s,
        None => {
            unknown = ServiceLabels::unknown();
            &unknown
        }
    };
    ConnectionLabels::tcp(reporter, src, dst, service, security, ResponseFlags::None)
}

/// Counts HBONE tunnel bytes into a connection's metrics as they pass. On the destination
/// side bytes out of the tunnel are the request; on the source side bytes into it are.
pub(crate) struct TunnelBytes<'a> {
    pub(crate) rec: &'a ConnectionRecorder,
    pub(crate) reporter: Reporter,
}

impl mesh_hbone::ByteCounter for TunnelBytes<'_> {
    #[inline]
    fn plain_to_tunnel(&self, n: u64) {
        match self.reporter {
            Reporter::Source => self.rec.request_bytes(n),
            Reporter::Destination | Reporter::Waypoint => self.rec.response_bytes(n),
        }
    }
    #[inline]
    fn tunnel_to_plain(&self, n: u64) {
        match self.reporter {
            Reporter::Source => self.rec.response_bytes(n),
            Reporter::Destination | Reporter::Waypoint => self.rec.request_bytes(n),
        }
    }
}

/// A plain stream whose reads are counted as request (client side) or response (server side)
/// bytes, for TCP-to-TCP forwarding.
pub(crate) struct Counted<'a, S> {
    pub(crate) inner: S,
    pub(crate) rec: &'a ConnectionRecorder,
    pub(crate) request: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            if self.request {
                self.rec.request_bytes(n);
            } else {
                self.rec.response_bytes(n);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Fills the common fields of an access-log record.
pub(crate) fn record<'a>(
    direction: &'a str,
    src: Option<SocketAddr>,
    src_workload: Option<&'a Workload>,
    src_identity: Option<&'a str>,
    dst: Option<SocketAddr>,
    dst_workload: Option<&'a Workload>,
    security: SecurityPolicy,
) -> ConnectionRecord<'a> {
    ConnectionRecord {
        timestamp: mesh_telemetry::access::now_rfc3339(),
        direction,
        src_addr: src,
        src_workload: src_workload.map(|w| w.name.as_str()),
        src_namespace: src_workload.map(|w| w.namespace.as_str()),
        src_identity,
        dst_addr: dst,
        dst_workload: dst_workload.map(|w| w.name.as_str()),
        dst_namespace: dst_workload.map(|w| w.namespace.as_str()),
        dst_identity: dst_workload.map(|w| w.identity.as_str()),
        security: security.as_str(),
        outcome: Some(Outcome::Complete),
        ..ConnectionRecord::default()
    }
}

/// Milliseconds as the access log writes durations.
pub(crate) fn duration(start: tokio::time::Instant) -> String {
    format!("{}ms", start.elapsed().as_millis())
}

/// A refused connection, counted and logged once: the TCP metrics with `flags` (when the
/// connection's labels are known) and one access-log line with `reason`.
pub(crate) fn refuse<'a>(
    telemetry: &Telemetry,
    counted: Option<(&ConnectionLabels, ResponseFlags)>,
    rec: ConnectionRecord<'a>,
    reason: &'a str,
    start: tokio::time::Instant,
) {
    if let Some((labels, flags)) = counted {
        telemetry.tcp.refused(labels, flags);
    }
    log_refusal(&telemetry.access, rec, reason, start);
}

/// Logs a refused or failed connection to the access log.
pub(crate) fn log_refusal<'a>(
    access: &AccessLogger,
    mut rec: ConnectionRecord<'a>,
    reason: &'a str,
    start: tokio::time::Instant,
) {
    rec.outcome = Some(Outcome::Refused);
    rec.reason = Some(reason);
    rec.duration = duration(start);
    access.log(&rec);
}

/// Logs a copied connection: bytes each way (the recorder's `totals` when it has one, which
/// stay right after an error; else the copy's result plus `early` request bytes sent before
/// it), duration, and the error if the copy failed.
pub(crate) fn log_copied(
    access: &AccessLogger,
    rec: ConnectionRecord<'_>,
    result: &std::io::Result<(u64, u64)>,
    early: u64,
    totals: Option<(u64, u64)>,
    start: tokio::time::Instant,
) {
    fn finish<'b>(
        access: &AccessLogger,
        mut rec: ConnectionRecord<'b>,
        error: Option<&'b str>,
        (sent, recv): (u64, u64),
        start: tokio::time::Instant,
    ) {
        // `(sent, recv)` are (request, response) bytes. Istio's ztunnel logs each proxy's
        // own view: the destination sent the response and received the request (its metrics
        // keep request bytes as `received` on both reporters: istio/istio#32399; istio/ztunnel
        // `src/proxy/metrics.rs` "unflip for logs").
        let (sent, recv) = if rec.direction == "inbound" {
            (recv, sent)
        } else {
            (sent, recv)
        };
        rec.bytes_sent = sent;
        rec.bytes_recv = recv;
        rec.duration = duration(start);
        if error.is_some() {
            rec.outcome = Some(Outcome::Error);
            rec.reason = error;
        }
        access.log(&rec);
    }
    if !access.enabled() {
        return;
    }
    let error = result.as_ref().err().map(ToString::to_string);
    let bytes = totals.unwrap_or_else(|| {
        let (sent, recv) = result.as_ref().map_or((0, 0), |x| *x);
        (sent + early, recv)
    });
    finish(access, rec, error.as_deref(), bytes, start);
}

/// Copies both ways between a client and a server stream, counting the client's bytes as
/// request and the server's as response bytes while they pass.
pub(crate) async fn copy_counted<A, B>(
    client: &mut A,
    server: &mut B,
    rec: &ConnectionRecorder,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Counted {
        inner: client,
        rec,
        request: true,
    };
    let mut server = Counted {
        inner: server,
        rec,
        request: false,
    };
    tokio::io::copy_bidirectional(&mut client, &mut server).await
}
