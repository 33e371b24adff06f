//! HTTP/1.1 and HTTP/2 proxying, per request, for every L7 role (a waypoint, a sidecar's
//! captured outbound and its inbound): a stream is served by one stack of `mesh-l7` layers —
//! trace context, recording, request hygiene, JWT, authorization, routing — in front of the
//! upstream (mesh endpoints over HBONE, or the local app). What differs between roles is data
//! ([`Profile`](super::profiles::Profile)): the sources the layers ask and the upstream kind.
//! A direct response or redirect is answered here; a forwarded request's body is streamed,
//! never buffered; upstream HTTP connections are reused per endpoint and client.

mod record;
mod sources;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_l7::layer::tower::{ServiceBuilder, ServiceExt, service_fn};
use mesh_l7::layer::{
    AuthzLayer, GuardLayer, JwtLayer, RecordLayer, RouteLayer, TraceContextLayer,
};
use tracing::debug;

use super::Ctx;
use super::profiles::Profile;
use crate::config::ServicePort;

/// A request body on its way upstream (counted for the metrics).
pub(crate) type ReqBody = mesh_l7::layer::CountedBody<Incoming>;
/// A response body: the upstream's, or the proxy's own.
pub(crate) type RespBody = mesh_l7::layer::Body<Incoming>;

/// What the proxy knows of the stream a request arrived on.
pub(crate) struct Stream {
    pub(crate) ctx: Arc<Ctx>,
    /// What the proxy is on this stream.
    pub(crate) profile: Profile,
    /// The service the client addressed (none for a sidecar's inbound to a bare port).
    pub(crate) service: Option<Arc<ServicePort>>,
    /// The original client address (from `Forwarded`).
    pub(crate) client: Option<SocketAddr>,
    /// The client's identity (the source ztunnel's peer).
    pub(crate) src_identity: Option<mesh_identity::SpiffeId>,
    /// The client's metric labels.
    pub(crate) src_labels: mesh_telemetry::metrics::PeerLabels,
    /// HTTP/2 (prior knowledge) on both legs, for `HTTP2` and `GRPC` ports; else HTTP/1.1.
    pub(crate) h2: bool,
}

/// Serves HTTP requests on one stream until it ends.
pub(crate) async fn serve<IO>(io: IO, stream: Stream)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let h2 = stream.h2;
    let limits = stream.ctx.cfg.l7;
    let s = Arc::new(stream);
    let up = s.clone();
    // Outermost first; one stack per stream, cloned (reference counts only) per request.
    let stack = ServiceBuilder::new()
        .layer(TraceContextLayer::new(sources::Ids))
        .layer(RecordLayer::new(record::Recorder(s.clone())))
        .layer(GuardLayer::new(super::hygiene::Hygiene))
        .layer(JwtLayer::new(sources::Sources(s.clone())))
        .layer(AuthzLayer::new(sources::Sources(s.clone())))
        .layer(RouteLayer::new(sources::Sources(s)))
        .service(service_fn(move |u| upstream::call(up.clone(), u)));
    let svc =
        hyper::service::service_fn(move |req: http::Request<Incoming>| stack.clone().oneshot(req));
    let result = if h2 {
        super::hygiene::h2_server()
            .serve_connection(TokioIo::new(io), svc)
            .await
    } else {
        super::hygiene::h1_server(&limits)
            .serve_connection(TokioIo::new(io), svc)
            .await
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP stream ended with error");
    }
}
