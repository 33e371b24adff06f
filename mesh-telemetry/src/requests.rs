//! Istio's standard HTTP/gRPC request metrics: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`, with
//! the standard labels plus `response_code` and `grpc_response_status`. The label-set cap of
//! [`crate::metrics`] applies here too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::{ConnectionLabels, SeriesCap, Str};

/// Istio's default duration buckets (milliseconds).
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's default size buckets (bytes).
pub const SIZE_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1000.0, 1e4, 1e5, 1e6, 1e7, 1e8];

/// The labels of a request: the connection's standard set (with `request_protocol` `http` or
/// `grpc`) plus the response's code and gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// Standard labels.
    #[prometheus(flatten)]
    pub standard: ConnectionLabels,
    /// HTTP status, e.g. `200`.
    pub response_code: Str,
    /// gRPC status, e.g. `0`; empty for plain HTTP.
    pub grpc_response_status: Str,
}

type Histograms = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn durations() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

fn sizes() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

/// Istio's request metrics.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    total: Family<RequestLabels, Counter>,
    duration: Histograms,
    request_bytes: Histograms,
    response_bytes: Histograms,
    cap: SeriesCap,
    /// The four metrics of each admitted label set, found with one fast hash per request
    /// instead of five SipHashes of the ~17 labels (the families' own maps).
    handles: Arc<RwLock<HashMap<RequestLabels, Handles, foldhash::fast::RandomState>>>,
}

#[derive(Debug, Clone)]
struct Handles {
    total: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Handles {
    fn record(&self, f: Finished) {
        self.total.inc();
        self.duration.observe(f.duration_ms);
        self.request_bytes.observe(f.request_bytes as f64);
        self.response_bytes.observe(f.response_bytes as f64);
    }
}

/// One finished request, as [`RequestMetrics::record`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Milliseconds from request head to the end of the response.
    pub duration_ms: f64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

impl RequestMetrics {
    /// Registers the metrics (with the `istio_` prefix) in `registry`; at most `max_series`
    /// label sets.
    pub fn new(registry: &mut Registry, max_series: usize) -> RequestMetrics {
        let m = RequestMetrics {
            total: Family::default(),
            duration: Family::new_with_constructor(durations),
            request_bytes: Family::new_with_constructor(sizes),
            response_bytes: Family::new_with_constructor(sizes),
            cap: SeriesCap::new(max_series),
            handles: Arc::default(),
        };
        let r = registry.sub_registry_with_prefix("istio");
        r.register("requests", "Total requests", m.total.clone());
        r.register(
            "request_duration_milliseconds",
            "Request duration in milliseconds",
            m.duration.clone(),
        );
        r.register(
            "request_bytes",
            "Request body sizes in bytes",
            m.request_bytes.clone(),
        );
        r.register(
            "response_bytes",
            "Response body sizes in bytes",
            m.response_bytes.clone(),
        );
        r.register(
            "request_label_overflow",
            "Requests recorded under the overflow label set because the label-set cap was reached",
            m.cap.overflow.clone(),
        );
        m
    }

    /// Records one finished request.
    pub fn record(&self, labels: &RequestLabels, f: Finished) {
        {
            let cache = self.handles.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = cache.get(labels) {
                return h.record(f);
            }
        }
        let admitted = self.cap.admit(self.total.get(labels).is_some());
        let overflow;
        let key = if admitted {
            labels
        } else {
            overflow = RequestLabels {
                standard: labels.standard.overflow(),
                response_code: labels.response_code.clone(),
                grpc_response_status: labels.grpc_response_status.clone(),
            };
            &overflow
        };
        let h = Handles {
            total: self.total.get_or_create(key).clone(),
            duration: self.duration.get_or_create(key).clone(),
            request_bytes: self.request_bytes.get_or_create(key).clone(),
            response_bytes: self.response_bytes.get_or_create(key).clone(),
        };
        h.record(f);
        // Only admitted label sets are cached: the cache stays bounded by the cap.
        if admitted {
            self.handles
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(labels.clone(), h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::*;

    #[test]
    fn records_counts_and_histograms() {
        let mut reg = Registry::default();
        let m = RequestMetrics::new(&mut reg, 100);
        let mut standard = ConnectionLabels::tcp(
            Reporter::Waypoint,
            &PeerLabels::unknown(),
            &PeerLabels::unknown(),
            &ServiceLabels::unknown(),
            SecurityPolicy::MutualTls,
            ResponseFlags::None,
        );
        standard.request_protocol = Str::from("http");
        let labels = RequestLabels {
            standard,
            response_code: Str::from("200"),
            grpc_response_status: Str::from(""),
        };
        for _ in 0..3 {
            m.record(
                &labels,
                Finished {
                    duration_ms: 3.0,
                    request_bytes: 0,
                    response_bytes: 120,
                },
            );
        }
        let text = crate::encode(&reg);
        assert!(
            text.contains("istio_requests_total{reporter=\"waypoint\""),
            "{text}"
        );
        assert!(
            text.contains("response_code=\"200\",grpc_response_status=\"\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("istio_request_duration_milliseconds_bucket{"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l
                .starts_with("istio_request_duration_milliseconds_bucket{le=\"5.0\"")
                && l.ends_with(" 3")),
            "{text}"
        );
        assert!(text.contains("istio_response_bytes_sum{"), "{text}");
    }
}
