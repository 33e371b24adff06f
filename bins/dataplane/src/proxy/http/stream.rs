//! What the proxy knows of the stream a request arrived on ([`Stream`]), and the body types
//! of the HTTP path.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;

use crate::config::ServicePort;
use crate::proxy::Ctx;
use crate::proxy::profiles::Profile;

/// A request body on its way upstream (counted for the metrics).
pub(crate) use crate::proxy::upstreams::ReqBody;
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
