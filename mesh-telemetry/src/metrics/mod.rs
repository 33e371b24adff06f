//! Istio's standard TCP metrics (`istio_tcp_*`), with Istio's exact names and label set, so
//! Istio's Grafana dashboards and Kiali read them unchanged.
//!
//! Label values come only from the mesh config (workload, service and identity names), never
//! from addresses, ports or error text, and the number of label sets per metric is capped
//! ([`TcpMetrics::new`]'s `max_series`): past the cap, new connections are recorded under one
//! overflow label set whose peer labels are `unknown`, and `istio_tcp_label_overflow_total`
//! counts them. Bytes are counted while a connection is open, through the counters a
//! [`ConnectionRecorder`] holds (one atomic add per chunk), not only when it closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A cheaply cloned label value.
pub type Str = Arc<str>;

/// The value Istio reports for a label it cannot determine.
pub const UNKNOWN: &str = "unknown";

fn unknown() -> Str {
    Str::from(UNKNOWN)
}

/// Which end of the connection records the metric (Istio's `reporter` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client side's proxy.
    Source,
    /// The server side's proxy.
    Destination,
    /// A waypoint between them (Istio labels its waypoint's metrics so).
    Waypoint,
}

/// Istio's `connection_security_policy` label. As Istio's ztunnel: `mutual_tls` for HBONE,
/// `unknown` for plaintext (there is no `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// Mutual TLS (HBONE).
    MutualTls,
    /// Plaintext, or not known to this reporter.
    Unknown,
}

macro_rules! label_values {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

mod flags;
pub use flags::ResponseFlags;

label_values!(Reporter {
    Source => "source",
    Destination => "destination",
    Waypoint => "waypoint",
});
label_values!(SecurityPolicy { MutualTls => "mutual_tls", Unknown => "unknown" });
/// The labels describing one side (workload) of a connection. Build one per workload when the
/// config is loaded and share it: a connection clones `Arc`s, never strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    /// Workload name.
    pub workload: Str,
    /// Workload namespace.
    pub namespace: Str,
    /// SPIFFE identity, `spiffe://…`.
    pub principal: Str,
    /// `app` label.
    pub app: Str,
    /// `version` label.
    pub version: Str,
    /// Canonical service.
    pub canonical_service: Str,
    /// Canonical revision.
    pub canonical_revision: Str,
    /// Cluster.
    pub cluster: Str,
    /// Locality region (Istio's `source_region` / `destination_region`).
    pub region: Str,
    /// Locality zone (Istio's `source_zone` / `destination_zone`).
    pub zone: Str,
}

impl PeerLabels {
    /// Every label `unknown` (a peer the mesh does not know).
    pub fn unknown() -> PeerLabels {
        PeerLabels {
            workload: unknown(),
            namespace: unknown(),
            principal: unknown(),
            app: unknown(),
            version: unknown(),
            canonical_service: unknown(),
            canonical_revision: unknown(),
            cluster: unknown(),
            region: unknown(),
            zone: unknown(),
        }
    }
}

/// The labels describing the destination service, if the client addressed one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    /// Host name (`destination_service`).
    pub host: Str,
    /// Service name.
    pub name: Str,
    /// Service namespace.
    pub namespace: Str,
}

impl ServiceLabels {
    /// All `unknown`: the client addressed a workload, not a service.
    pub fn unknown() -> ServiceLabels {
        ServiceLabels {
            host: unknown(),
            name: unknown(),
            namespace: unknown(),
        }
    }
}

/// The full Istio label set of `istio_tcp_*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
#[allow(missing_docs)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: Str,
    pub source_workload_namespace: Str,
    pub source_principal: Str,
    pub source_app: Str,
    pub source_version: Str,
    pub source_canonical_service: Str,
    pub source_canonical_revision: Str,
    pub source_cluster: Str,
    pub destination_workload: Str,
    pub destination_workload_namespace: Str,
    pub destination_principal: Str,
    pub destination_app: Str,
    pub destination_version: Str,
    pub destination_service: Str,
    pub destination_service_name: Str,
    pub destination_service_namespace: Str,
    pub destination_canonical_service: Str,
    pub destination_canonical_revision: Str,
    pub destination_cluster: Str,
    // Istio's ztunnel locality labels (istio/ztunnel `src/proxy/metrics.rs` `LocalityLabels`:
    // region and zone, no subzone). Istio encodes them last; label order means nothing to
    // Prometheus.
    pub source_region: Str,
    pub source_zone: Str,
    pub destination_region: Str,
    pub destination_zone: Str,
    pub request_protocol: Str,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

impl ConnectionLabels {
    /// The label set of a TCP connection from `src` to `dst` (addressed via `service`).
    pub fn tcp(
        reporter: Reporter,
        src: &PeerLabels,
        dst: &PeerLabels,
        service: &ServiceLabels,
        security: SecurityPolicy,
        flags: ResponseFlags,
    ) -> ConnectionLabels {
        ConnectionLabels {
            reporter,
            source_workload: src.workload.clone(),
            source_workload_namespace: src.namespace.clone(),
            source_principal: src.principal.clone(),
            source_app: src.app.clone(),
            source_version: src.version.clone(),
            source_canonical_service: src.canonical_service.clone(),
            source_canonical_revision: src.canonical_revision.clone(),
            source_cluster: src.cluster.clone(),
            destination_workload: dst.workload.clone(),
            destination_workload_namespace: dst.namespace.clone(),
            destination_principal: dst.principal.clone(),
            destination_app: dst.app.clone(),
            destination_version: dst.version.clone(),
            destination_service: service.host.clone(),
            destination_service_name: service.name.clone(),
            destination_service_namespace: service.namespace.clone(),
            destination_canonical_service: dst.canonical_service.clone(),
            destination_canonical_revision: dst.canonical_revision.clone(),
            destination_cluster: dst.cluster.clone(),
            request_protocol: Str::from("tcp"),
            response_flags: flags,
            connection_security_policy: security,
            source_region: src.region.clone(),
            source_zone: src.zone.clone(),
            destination_region: dst.region.clone(),
            destination_zone: dst.zone.clone(),
        }
    }

    /// The overflow label set: only reporter, protocol, flags and security policy kept.
    pub(crate) fn overflow(&self) -> ConnectionLabels {
        let u = PeerLabels::unknown();
        let mut l = ConnectionLabels::tcp(
            self.reporter,
            &u,
            &u,
            &ServiceLabels::unknown(),
            self.connection_security_policy,
            self.response_flags,
        );
        l.request_protocol = self.request_protocol.clone();
        l
    }
}

/// Istio's TCP connection metrics.
#[derive(Debug, Clone)]
pub struct TcpMetrics {
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    sent: Family<ConnectionLabels, Counter>,
    received: Family<ConnectionLabels, Counter>,
    cap: SeriesCap,
}

/// A cap on the label sets of a metric family: admits a set that exists or fits, and counts
/// the connections or requests it turns away.
#[derive(Debug, Clone)]
pub(crate) struct SeriesCap {
    pub(crate) overflow: Counter,
    max: usize,
    // Label sets created so far (approximate under races; only a cap).
    series: Arc<AtomicUsize>,
}

impl SeriesCap {
    pub(crate) fn new(max: usize) -> SeriesCap {
        SeriesCap {
            overflow: Counter::default(),
            max: max.max(1),
            series: Arc::default(),
        }
    }

    /// Whether a label set may be used: it exists already, or the cap allows a new one.
    /// Counts an overflow when not.
    pub(crate) fn admit(&self, exists: bool) -> bool {
        if exists {
            return true;
        }
        if self.series.fetch_add(1, Ordering::Relaxed) < self.max {
            return true;
        }
        self.series.fetch_sub(1, Ordering::Relaxed);
        self.overflow.inc();
        false
    }
}

/// Default cap on label sets per metric.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

impl TcpMetrics {
    /// Registers the metrics in `registry` (names get the `istio_` prefix here, so pass the
    /// root or an unprefixed sub-registry). At most `max_series` label sets per metric.
    pub fn new(registry: &mut Registry, max_series: usize) -> TcpMetrics {
        let m = TcpMetrics {
            opened: Family::default(),
            closed: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            cap: SeriesCap::new(max_series),
        };
        let r = registry.sub_registry_with_prefix("istio");
        r.register(
            "tcp_connections_opened",
            "Total TCP connections opened",
            m.opened.clone(),
        );
        r.register(
            "tcp_connections_closed",
            "Total TCP connections closed",
            m.closed.clone(),
        );
        r.register(
            "tcp_sent_bytes",
            "Bytes sent during the response of a TCP connection (destination to source)",
            m.sent.clone(),
        );
        r.register(
            "tcp_received_bytes",
            "Bytes received during the request of a TCP connection (source to destination)",
            m.received.clone(),
        );
        r.register(
            "tcp_label_overflow",
            "Connections recorded under the overflow label set because the label-set cap was reached",
            m.cap.overflow.clone(),
        );
        m
    }

    /// Records a connection opening; the returned recorder counts its bytes live and records
    /// the close when dropped.
    pub fn open(&self, labels: &ConnectionLabels) -> ConnectionRecorder {
        let overflow;
        let labels = if self.admit(&self.opened, labels) {
            labels
        } else {
            overflow = labels.overflow();
            &overflow
        };
        self.opened.get_or_create(labels).inc();
        ConnectionRecorder {
            received: self.received.get_or_create_owned(labels),
            sent: self.sent.get_or_create_owned(labels),
            closed: Some(self.closed.get_or_create_owned(labels)),
            request_total: AtomicU64::new(0),
            response_total: AtomicU64::new(0),
        }
    }

    /// Records a connection that failed before it carried bytes. As Istio's ztunnel, it
    /// counts as opened with `response_flags="-"` and closed with `flags`.
    pub fn refused(&self, labels: &ConnectionLabels, flags: ResponseFlags) {
        let mut rec = self.open(labels);
        if flags != labels.response_flags {
            let mut closed = labels.clone();
            closed.response_flags = flags;
            rec.closed = Some(self.family_counter(&self.closed, &closed));
        }
    }

    fn family_counter(
        &self,
        f: &Family<ConnectionLabels, Counter>,
        labels: &ConnectionLabels,
    ) -> Counter {
        if self.admit(f, labels) {
            f.get_or_create_owned(labels)
        } else {
            f.get_or_create_owned(&labels.overflow())
        }
    }

    /// Whether `labels` may be used in `f`: it exists already, or the cap allows a new set.
    /// Counts an overflow when not.
    fn admit(&self, f: &Family<ConnectionLabels, Counter>, labels: &ConnectionLabels) -> bool {
        self.cap.admit(f.get(labels).is_some())
    }

    /// The current value of `istio_tcp_connections_opened_total{labels}` (for tests and
    /// benchmarks).
    pub fn opened(&self, labels: &ConnectionLabels) -> u64 {
        self.opened.get(labels).map_or(0, |c| c.get())
    }
}

/// Counts one connection's bytes and records its close when dropped.
#[derive(Debug)]
pub struct ConnectionRecorder {
    received: Counter,
    sent: Counter,
    closed: Option<Counter>,
    // This connection's own totals (the counters above are shared by its label set).
    request_total: AtomicU64,
    response_total: AtomicU64,
}

impl ConnectionRecorder {
    /// `n` request bytes (source to destination) went through.
    #[inline]
    pub fn request_bytes(&self, n: u64) {
        self.received.inc_by(n);
        self.request_total.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` response bytes (destination to source) went through.
    #[inline]
    pub fn response_bytes(&self, n: u64) {
        self.sent.inc_by(n);
        self.response_total.fetch_add(n, Ordering::Relaxed);
    }

    /// This connection's (request, response) bytes so far, also when it ended in an error.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.request_total.load(Ordering::Relaxed),
            self.response_total.load(Ordering::Relaxed),
        )
    }
}

impl Drop for ConnectionRecorder {
    fn drop(&mut self) {
        if let Some(c) = self.closed.take() {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str) -> PeerLabels {
        let s = Str::from(name);
        PeerLabels {
            workload: s.clone(),
            namespace: Str::from("ns"),
            principal: Str::from(format!("spiffe://td/ns/ns/sa/{name}").as_str()),
            app: s.clone(),
            version: Str::from("v1"),
            canonical_service: s,
            canonical_revision: Str::from("v1"),
            cluster: Str::from("Kubernetes"),
            region: Str::from("r1"),
            zone: Str::from("z1"),
        }
    }

    fn scrape(r: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    }

    #[test]
    fn counts_live_and_on_close() {
        let mut reg = Registry::default();
        let m = TcpMetrics::new(&mut reg, 100);
        let labels = ConnectionLabels::tcp(
            Reporter::Destination,
            &peer("a"),
            &peer("b"),
            &ServiceLabels::unknown(),
            SecurityPolicy::MutualTls,
            ResponseFlags::None,
        );
        let rec = m.open(&labels);
        rec.request_bytes(10);
        rec.response_bytes(3);
        let text = scrape(&reg);
        assert!(
            text.contains(
                "istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"a\""
            ),
            "{text}"
        );
        assert!(
            text.contains("connection_security_policy=\"mutual_tls\"} 1"),
            "{text}"
        );
        // Istio's locality labels (region and zone of each side).
        assert!(
            text.contains("source_region=\"r1\",source_zone=\"z1\",destination_region=\"r1\",destination_zone=\"z1\""),
            "{text}"
        );
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        assert_eq!(
            line("istio_tcp_received_bytes_total{").as_deref(),
            Some("10")
        );
        assert_eq!(line("istio_tcp_sent_bytes_total{").as_deref(), Some("3"));
        assert_eq!(
            line("istio_tcp_connections_closed_total{").as_deref(),
            Some("0")
        );
        drop(rec);
        let text = scrape(&reg);
        assert!(
            text.lines()
                .any(|l| l.starts_with("istio_tcp_connections_closed_total{") && l.ends_with(" 1"))
        );
    }

    #[test]
    fn caps_label_sets() {
        let mut reg = Registry::default();
        let m = TcpMetrics::new(&mut reg, 2);
        for i in 0..5 {
            let l = ConnectionLabels::tcp(
                Reporter::Source,
                &peer(&format!("w{i}")),
                &peer("b"),
                &ServiceLabels::unknown(),
                SecurityPolicy::MutualTls,
                ResponseFlags::None,
            );
            m.refused(&l, ResponseFlags::None);
        }
        let text = scrape(&reg);
        let opened = text
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .count();
        assert_eq!(
            opened, 3,
            "two real label sets and the overflow set:\n{text}"
        );
        assert!(text.contains("istio_tcp_label_overflow_total 3"), "{text}");
        assert!(text.contains("source_workload=\"unknown\""));
    }

    #[test]
    fn refusals_open_plain_and_close_with_the_flag() {
        let mut reg = Registry::default();
        let m = TcpMetrics::new(&mut reg, 100);
        let l = ConnectionLabels::tcp(
            Reporter::Destination,
            &peer("a"),
            &peer("b"),
            &ServiceLabels::unknown(),
            SecurityPolicy::MutualTls,
            ResponseFlags::None,
        );
        m.refused(&l, ResponseFlags::Deny);
        let text = scrape(&reg);
        assert!(
            text.lines()
                .any(|x| x.starts_with("istio_tcp_connections_opened_total{")
                    && x.contains("response_flags=\"-\"")
                    && x.ends_with(" 1")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|x| x.starts_with("istio_tcp_connections_closed_total{")
                    && x.contains("response_flags=\"DENY\"")
                    && x.ends_with(" 1")),
            "{text}"
        );
    }
}
