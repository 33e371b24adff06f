//! Istio's ztunnel DNS metrics (`src/dns/metrics.rs`, registered under the `istio` prefix):
//! `istio_dns_requests_total`, `istio_dns_upstream_requests_total`,
//! `istio_dns_upstream_failures_total` and `istio_dns_upstream_request_duration_seconds`, with
//! Istio's labels `request_query_type`, `request_protocol`, `source_canonical_service`,
//! `source_canonical_revision`. The query type is one of a fixed set (anything else is
//! `other`), so a client cannot grow the series by asking odd types.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The labels of every DNS metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// `a`, `aaaa`, `srv`, … or `other`.
    pub request_query_type: &'static str,
    /// `udp` or `tcp`.
    pub request_protocol: &'static str,
    /// The asking workload's canonical service (`unknown` when not known).
    pub source_canonical_service: Arc<str>,
    /// The asking workload's canonical revision (`unknown` when not known).
    pub source_canonical_revision: Arc<str>,
}

/// Who asks, for the source labels.
#[derive(Clone, Debug)]
pub struct Source {
    /// Canonical service.
    pub service: Arc<str>,
    /// Canonical revision.
    pub revision: Arc<str>,
}

impl Default for Source {
    fn default() -> Self {
        Source {
            service: Arc::from("unknown"),
            revision: Arc::from("unknown"),
        }
    }
}

/// A bounded name for `ty`.
pub fn query_type(ty: RecordType) -> &'static str {
    match ty {
        RecordType::A => "a",
        RecordType::AAAA => "aaaa",
        RecordType::SRV => "srv",
        RecordType::CNAME => "cname",
        RecordType::TXT => "txt",
        RecordType::PTR => "ptr",
        RecordType::MX => "mx",
        RecordType::NS => "ns",
        RecordType::SOA => "soa",
        RecordType::HTTPS => "https",
        RecordType::SVCB => "svcb",
        RecordType::ANY => "any",
        _ => "other",
    }
}

/// The DNS metrics of one proxy.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    requests: Family<DnsLabels, Counter>,
    upstream_requests: Family<DnsLabels, Counter>,
    upstream_failures: Family<DnsLabels, Counter>,
    upstream_duration: Family<DnsLabels, Histogram, fn() -> Histogram>,
}

impl Default for DnsMetrics {
    /// Metrics registered nowhere (recorded, never exported).
    fn default() -> Self {
        DnsMetrics {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            upstream_duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

fn duration_histogram() -> Histogram {
    // Istio's buckets.
    Histogram::new([0.005, 0.001, 0.01, 0.1, 1.0, 5.0])
}

impl DnsMetrics {
    /// Registers the metrics in `registry` (the proxy's root: names get the `istio_` prefix
    /// here).
    pub fn register(registry: &mut Registry) -> DnsMetrics {
        let m = DnsMetrics::default();
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "dns_requests",
            "Total number of DNS requests (unstable)",
            m.requests.clone(),
        );
        istio.register(
            "dns_upstream_requests",
            "Total number of DNS requests forwarded to upstream (unstable)",
            m.upstream_requests.clone(),
        );
        istio.register(
            "dns_upstream_failures",
            "Total number of DNS requests that failed to forward upstream (unstable)",
            m.upstream_failures.clone(),
        );
        istio.register_with_unit(
            "dns_upstream_request_duration",
            "Total time in seconds Istio takes to get DNS response from upstream (unstable)",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        m
    }

    /// One query answered or relayed.
    pub fn request(&self, labels: &DnsLabels) {
        self.requests.get_or_create(labels).inc();
    }

    /// One relayed query, how long it took and whether it failed.
    pub fn upstream(&self, labels: &DnsLabels, took: Duration, failed: bool) {
        self.upstream_requests.get_or_create(labels).inc();
        if failed {
            self.upstream_failures.get_or_create(labels).inc();
        }
        self.upstream_duration
            .get_or_create(labels)
            .observe(took.as_secs_f64());
    }
}
