//! Authorization (Istio `AuthorizationPolicy` on HTTP fields, over [`mesh_authz::http`]):
//! the path is normalized (400 if it cannot be a request path), `AUDIT` policies mark the
//! request, and a DENY match or no ALLOW match is refused with 403 — deny on any doubt. The
//! request then goes on in origin form with the path that was evaluated, so the upstream
//! sees exactly what the policy saw. Which policies apply, and the connection's facts (peer
//! identity, addresses), come from the caller's [`AuthzSource`].

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use mesh_authz::http::{HttpDecision, HttpFacts, PathNormalization};
use mesh_authz::{Connection, Policy};
use tower::{Layer, Service};

use super::jwt::Authenticated;
use super::meta::Meta;
use mesh_telemetry::metrics::ResponseFlags;

/// What authorization applies to a request.
#[derive(Debug)]
pub enum Scope<'a> {
    /// None here (a client-side proxy: the server's proxy decides); the path goes on as sent.
    Open,
    /// Policies to check.
    Check(Check<'a>),
}

/// The policies and connection facts a request is checked against.
#[derive(Debug)]
pub struct Check<'a> {
    /// How paths are normalized before matching.
    pub normalization: PathNormalization,
    /// Refuse every request before any policy (e.g. plaintext to a workload that became
    /// STRICT while the connection was open).
    pub deny: bool,
    /// The policies that apply (none: allowed).
    pub policies: &'a [&'a Policy],
    /// The connection's facts.
    pub conn: Connection<'a>,
}

/// The authorization policies of a stream.
pub trait AuthzSource: Clone + Send + 'static {
    /// Calls `f` with the scope that applies now (from the current config).
    fn with_scope<R>(&self, f: impl FnOnce(Scope<'_>) -> R) -> R;
    /// Told of each request refused by a policy, e.g. to log it.
    fn denied<B>(&self, req: &Request<B>, path: &str, reason: &str) {
        let _ = (req, path, reason);
    }
}

/// Authorizes requests with an [`AuthzSource`] ([`Authz`]).
#[derive(Debug, Clone)]
pub struct AuthzLayer<P> {
    source: P,
}

impl<P> AuthzLayer<P> {
    /// A layer authorizing with `source`.
    pub fn new(source: P) -> Self {
        AuthzLayer { source }
    }
}

impl<S, P: Clone> Layer<S> for AuthzLayer<P> {
    type Service = Authz<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            source: self.source.clone(),
        }
    }
}

/// Authorization in front of `S`.
#[derive(Debug, Clone)]
pub struct Authz<S, P> {
    inner: S,
    source: P,
}

pin_project_lite::pin_project! {
    /// The future of [`Authz`].
    pub struct AuthzFuture<F, RB> {
        #[pin]
        state: AuthzState<F, RB>,
    }
}

pin_project_lite::pin_project! {
    /// The state of [`Authz`].
    #[project = AuthzProj]
    enum AuthzState<F, RB> {
        /// Allowed: the inner service's response.
        Inner { #[pin] fut: F, audit: Option<String> },
        /// Refused.
        Refused { resp: Option<Response<RB>> },
    }
}

impl<F, RB> From<AuthzState<F, RB>> for AuthzFuture<F, RB> {
    fn from(state: AuthzState<F, RB>) -> Self {
        AuthzFuture { state }
    }
}

impl<F, RB, E> Future for AuthzFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            AuthzProj::Inner { fut, audit } => {
                let mut resp = std::task::ready!(fut.poll(cx))?;
                if let Some(a) = audit.take() {
                    Meta::of(&mut resp).audit = Some(a);
                }
                Poll::Ready(Ok(resp))
            }
            AuthzProj::Refused { resp } => match resp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

/// A refusal: status, body, response flags.
type Refusal = (StatusCode, &'static str, ResponseFlags);

/// The decision on one request.
struct Outcome {
    /// The evaluated path with its query (`None`: unchanged).
    path: Option<String>,
    audit: Option<String>,
    refused: Option<Refusal>,
}

impl<S, P, B, RB> Service<Request<B>> for Authz<S, P>
where
    S: Service<Request<B>, Response = Response<RB>>,
    P: AuthzSource,
    RB: From<Bytes>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = AuthzFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let out = self
            .source
            .with_scope(|scope| decide(&self.source, scope, &req));
        if let Some((status, body, flags)) = out.refused {
            let mut resp = super::local(status, body, flags);
            if out.audit.is_some() {
                Meta::of(&mut resp).audit = out.audit;
            }
            return AuthzState::Refused { resp: Some(resp) }.into();
        }
        // Origin form, with the evaluated path (the authority that goes upstream is the
        // `Host` that was evaluated).
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let path = out.path.as_deref().unwrap_or(pq);
        if (path != pq || req.uri().authority().is_some())
            && let Ok(uri) = path.parse::<Uri>()
        {
            *req.uri_mut() = uri;
        }
        AuthzState::Inner {
            fut: self.inner.call(req),
            audit: out.audit,
        }
        .into()
    }
}

/// Normalizes the path and evaluates the policies.
fn decide<P: AuthzSource, B>(source: &P, scope: Scope<'_>, req: &Request<B>) -> Outcome {
    let mut out = Outcome {
        path: None,
        audit: None,
        refused: None,
    };
    let Scope::Check(check) = scope else {
        return out;
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let (raw, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let Some(normalized) = mesh_authz::http::normalize_path(raw, check.normalization) else {
        out.refused = Some((
            StatusCode::BAD_REQUEST,
            "invalid request path\n",
            ResponseFlags::DownstreamProtocolError,
        ));
        return out;
    };
    if check.deny {
        out.refused = Some((
            StatusCode::FORBIDDEN,
            "RBAC: access denied",
            ResponseFlags::Rbac,
        ));
        return out;
    }
    if !check.policies.is_empty() {
        let authority = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let headers = req.headers();
        // A repeated header is matched joined (and per value where that denies).
        let header =
            |n: &str| -> Option<Cow<'_, str>> { mesh_authz::headers::header_value(headers, n) };
        let facts = HttpFacts {
            conn: check.conn,
            host: host_of(authority),
            method: req.method().as_str(),
            path: &normalized,
            header: &header,
            auth: req.extensions().get::<Authenticated>().map(|a| &a.0),
        };
        // Istio AUDIT: marks the request for the log, never changes the decision.
        out.audit = mesh_authz::http::audited(check.policies, &facts)
            .map(|p| format!("{}/{}", p.namespace, p.name));
        let decision = mesh_authz::http::evaluate_http(check.policies, &facts);
        if !decision.is_allowed() {
            let why = match decision {
                HttpDecision::DeniedBy(p) => format!("denied by {}/{}", p.namespace, p.name),
                _ => "no ALLOW policy matched".to_owned(),
            };
            source.denied(req, &normalized, &why);
            out.refused = Some((
                StatusCode::FORBIDDEN,
                "RBAC: access denied",
                ResponseFlags::Rbac,
            ));
            return out;
        }
    }
    out.path = Some(match query {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    });
    out
}

/// The host of an authority, without a numeric port.
fn host_of(authority: &str) -> &str {
    authority.rsplit_once(':').map_or(authority, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    })
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
