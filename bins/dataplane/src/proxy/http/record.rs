//! Each finished request in the metrics (Istio's standard request metrics) and the access log.

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use mesh_l7::layer::Finished;
use mesh_l7::layer::trace::{TRACEPARENT, X_REQUEST_ID, trace_id};
use mesh_telemetry::metrics::{PeerLabels, Str};

use super::Stream;
use crate::config::{ServicePort, Workload};

/// The workload (and service) a request was sent to: in the response's extensions, from the
/// upstream.
#[derive(Clone)]
pub(super) struct Dst(
    pub(super) Arc<Workload>,
    pub(super) Option<Arc<ServicePort>>,
);

/// Records a stream's requests.
#[derive(Clone)]
pub(super) struct Recorder(pub(super) Arc<Stream>);

/// What is kept of a request until its response ends.
pub(super) struct Started {
    /// For the access log, when it is on.
    head: Option<Head>,
    dst: Option<Dst>,
}

/// The request as the access log shows it.
struct Head {
    method: http::Method,
    /// The path and query as the client sent them.
    path: String,
    /// The authority the request was handled with (empty if it was refused for it).
    authority: String,
    traceparent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
}

impl mesh_l7::layer::Recorder for Recorder {
    type Request = Started;

    fn start<B>(&self, req: &Request<B>) -> Started {
        // The metrics need nothing of the request head: it is only kept for the log.
        let head = self.0.ctx.telemetry.access.enabled().then(|| Head {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            authority: crate::proxy::hygiene::checked_authority(req).unwrap_or_default(),
            traceparent: req.headers().get(TRACEPARENT).cloned(),
            request_id: req.headers().get(X_REQUEST_ID).cloned(),
        });
        Started { head, dst: None }
    }

    fn respond<B>(&self, req: &mut Started, resp: &mut Response<B>) {
        req.dst = resp.extensions_mut().remove::<Dst>();
    }

    fn finish(&self, req: Started, done: &Finished<'_>) {
        let s = &self.0;
        let t = &s.ctx.telemetry;
        let grpc_status = done.grpc_status.unwrap_or_default();
        let unknown = PeerLabels::unknown();
        let (dst, service) = match &req.dst {
            Some(Dst(w, sp)) => (&w.telemetry, sp.as_ref().map(|sp| &sp.service.telemetry)),
            None => (&unknown, None),
        };
        let mut standard = crate::proxy::observe::labels(
            s.profile.reporter,
            &s.src_labels,
            dst,
            service.or(s.service.as_ref().map(|sp| &sp.service.telemetry)),
            s.profile.security,
        );
        // Istio's request metrics carry the response flags (the access log's too).
        standard.response_flags = done.meta.flags;
        standard.request_protocol = Str::from(if grpc_status.is_empty() {
            "http"
        } else {
            "grpc"
        });
        let labels = mesh_telemetry::requests::RequestLabels {
            standard,
            response_code: Str::from(done.status.as_str()),
            grpc_response_status: Str::from(grpc_status),
        };
        t.requests.record(
            &labels,
            mesh_telemetry::requests::Finished {
                duration_ms: done.duration.as_secs_f64() * 1000.0,
                request_bytes: done.request_bytes,
                response_bytes: done.response_bytes,
            },
        );
        let Some(head) = &req.head else {
            return;
        };
        let meta = done.meta;
        let host = req
            .dst
            .as_ref()
            .and_then(|Dst(_, sp)| sp.as_ref())
            .and_then(|sp| sp.service.hosts.first().map(String::as_str));
        t.access.log(&mesh_telemetry::access::RequestRecord {
            timestamp: mesh_telemetry::access::now_rfc3339(),
            reporter: s.profile.log_reporter,
            src_addr: s.client,
            src_identity: s.src_identity.as_ref().map(|i| i.as_str()),
            method: head.method.as_str(),
            authority: &head.authority,
            path: meta.logged_path.as_deref().unwrap_or(&head.path),
            protocol: if s.h2 { "HTTP/2" } else { "HTTP/1.1" },
            status: done.status.as_u16(),
            bytes_received: done.request_bytes,
            bytes_sent: done.response_bytes,
            duration_ms: done.duration.as_millis() as u64,
            route: meta.route.as_deref(),
            upstream: meta.upstream,
            dst_service: host,
            response_flags: meta.flags.as_str(),
            trace_id: text(&head.traceparent).and_then(trace_id),
            request_id: text(&head.request_id),
            audit_policy: meta.audit.as_deref(),
        });
    }
}

/// A header value as text, if it is.
fn text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}
