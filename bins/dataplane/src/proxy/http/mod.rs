//! HTTP/1.1 and HTTP/2 proxying, per request, for every L7 role (a waypoint, a sidecar's
//! captured outbound and its inbound): a stream is served by one stack of `mesh-l7` layers —
//! trace context, recording, request hygiene, JWT, authorization, routing — in front of the
//! upstream (mesh endpoints over HBONE, or the local app). What differs between roles is data
//! ([`Profile`](super::profiles::Profile)): the sources the layers ask and the upstream kind.
//! A direct response or redirect is answered here; a forwarded request's body is streamed,
//! never buffered; upstream HTTP connections are reused per endpoint and client.

mod affinity;
mod ext_authz;
pub(crate) mod mirror;
mod ratelimit;
mod record;
mod retry;
mod sources;
mod stream;
pub(crate) mod upgrade;
mod upstream;

use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_l7::layer::tower::{ServiceBuilder, ServiceExt, service_fn};
use mesh_l7::layer::{
    AuthzLayer, GuardLayer, JwtLayer, RecordLayer, RouteLayer, TraceContextLayer,
};
use tracing::debug;

pub(crate) use stream::{ReqBody, RespBody, Stream};

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
        .layer(mesh_l7::layer::ExtAuthzLayer::new(
            sources::Sources(s.clone()),
            ext_authz::Authorizer(s.clone()),
        ))
        .layer(AuthzLayer::new(sources::Sources(s.clone())))
        .layer(RouteLayer::new(sources::Sources(s.clone())))
        .layer(mesh_l7::layer::RateLimitLayer::new(ratelimit::Limits(s)))
        .layer(mesh_l7::layer::FaultLayer::<mesh_l7::layer::ThreadDice>::default())
        .layer(mesh_l7::layer::TimeoutLayer::new())
        .layer(mesh_l7::layer::RetryLayer::new(
            sources::Sources(up.clone()),
            retry::REPLAY_CAP,
        ))
        // Mirrored copies of first attempts, through the same upstream service.
        .layer(mesh_l7::layer::MirrorLayer::new(
            mesh_l7::layer::ThreadDice,
            mesh_l7::layer::MirrorLimits::default(),
            up.ctx.telemetry.mirrors.0.clone(),
        ))
        // The upstream call's future (a dial, a TLS handshake, hyper's send) is large: boxed
        // once here, so the layers' futures around it stay small and are cheap to move (left
        // inline, moving it through six layers cost ~70 000 instructions per request).
        .service(service_fn(move |u| Box::pin(upstream::call(up.clone(), u))));
    let svc =
        hyper::service::service_fn(move |req: http::Request<Incoming>| stack.clone().oneshot(req));
    let result = if h2 {
        super::hygiene::h2_server()
            .serve_connection(TokioIo::new(io), svc)
            .await
    } else {
        super::hygiene::h1_server(&limits)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP stream ended with error");
    }
}
