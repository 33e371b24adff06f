//! Telemetry of a mesh proxy, usable on its own:
//!
//! - [`metrics`]: Istio's standard TCP metrics (`istio_tcp_connections_opened_total`, …) with
//!   Istio's exact label set, bounded cardinality and live byte counting, registered into a
//!   `prometheus-client` registry the caller owns (no global registry);
//! - [`requests`]: Istio's HTTP request metrics (`istio_requests_total`, duration and size
//!   histograms with Istio's buckets);
//! - [`process`]: the standard `process_*` metrics;
//! - [`access`]: a non-blocking JSON access log, one line per connection;
//! - [`http`]: a small HTTP/1.1 server with exact-path routes for the admin (15000), metrics
//!   (15020) and readiness (15021) endpoints, plus [`metrics_router`];
//! - [`readiness`]: `/healthz/ready`, ready once registered start-up tasks finish;
//! - [`logging`]: the stderr subscriber with a filter changeable at run time (`/logging`).
//!
//! ```
//! use mesh_telemetry::metrics::*;
//! let mut registry = prometheus_client::registry::Registry::default();
//! let tcp = TcpMetrics::new(&mut registry, DEFAULT_MAX_SERIES);
//! let labels = ConnectionLabels::tcp(
//!     Reporter::Destination,
//!     &PeerLabels::unknown(),
//!     &PeerLabels::unknown(),
//!     &ServiceLabels::unknown(),
//!     SecurityPolicy::MutualTls,
//!     ResponseFlags::None,
//! );
//! let conn = tcp.open(&labels);
//! conn.request_bytes(1024); // counted now, not at close
//! drop(conn); // istio_tcp_connections_closed_total += 1
//! let text = mesh_telemetry::encode(&registry);
//! assert!(text.contains("istio_tcp_received_bytes_total{reporter=\"destination\""));
//! ```

#![warn(missing_docs)]

pub mod access;
pub mod build_info;
mod error;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod readiness;
pub mod requests;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use error::Error;

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail; an encoding error would be a bug in a collector.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut s, registry) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    s
}

/// `/metrics` and `/stats/prometheus` (Istio's path) serving `registry`.
pub fn metrics_router(registry: Arc<Registry>) -> http::Router {
    let render = move |_req: &http::Request| http::Response {
        status: ::http::StatusCode::OK,
        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body: bytes::Bytes::from(encode(&registry)),
    };
    http::Router::new()
        .route("/metrics", render.clone())
        .route("/stats/prometheus", render)
}
