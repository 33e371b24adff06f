//! What a request went through ([`Meta`], in the response's extensions) and responses the
//! proxy makes itself ([`local`]).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use mesh_telemetry::metrics::ResponseFlags;

/// What a request went through, for its metrics and access log line: kept in the response's
/// extensions by the layer that knows it, read by the recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Envoy-style response flags (`-`, `DPE`, `RBAC`, `NR`, `UH`, `UF`, `DR`).
    pub flags: ResponseFlags,
    /// The route that matched, by name.
    pub route: Option<String>,
    /// The upstream address the request was sent to.
    pub upstream: Option<SocketAddr>,
    /// The `AUDIT` policy (`namespace/name`) that marked the request.
    pub audit: Option<String>,
    /// The path as logged, when it differs from the request's (a token in the query
    /// redacted).
    pub logged_path: Option<String>,
    /// Why the upstream gave no response, when it did not (set by the upstream service).
    pub failure: Option<UpstreamFailure>,
}

/// Why the upstream gave no response: typed, so retries, outlier detection and the access
/// log's flags ask it instead of matching error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamFailure {
    /// No connection could be opened (`UF`).
    ConnectFailure,
    /// The upstream reset the stream (`UR`).
    Reset,
    /// The connection ended before the response (`UC`).
    ConnectionTermination,
    /// HTTP/2 `REFUSED_STREAM`: the upstream did not process the request (`UR`).
    RefusedStream,
}

impl UpstreamFailure {
    /// The Envoy response flag it is logged with.
    pub fn flag(self) -> ResponseFlags {
        match self {
            UpstreamFailure::ConnectFailure => ResponseFlags::UpstreamConnectionFailure,
            UpstreamFailure::Reset | UpstreamFailure::RefusedStream => {
                ResponseFlags::UpstreamRemoteReset
            }
            UpstreamFailure::ConnectionTermination => ResponseFlags::UpstreamConnectionTermination,
        }
    }
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            flags: ResponseFlags::None,
            route: None,
            upstream: None,
            audit: None,
            logged_path: None,
            failure: None,
        }
    }
}

impl Meta {
    /// The response's [`Meta`], inserted if it has none yet.
    pub fn of<B>(resp: &mut Response<B>) -> &mut Meta {
        resp.extensions_mut().get_or_insert_default::<Meta>()
    }
}

/// A `text/plain` response made by the proxy itself, marked with response `flags`.
pub fn local<B: From<Bytes>>(
    status: StatusCode,
    body: impl Into<Bytes>,
    flags: ResponseFlags,
) -> Response<B> {
    let mut r = Response::new(B::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if flags != ResponseFlags::None {
        Meta::of(&mut r).flags = flags;
    }
    r
}
