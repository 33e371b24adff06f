//! JWT authentication (Istio `RequestAuthentication`, over [`mesh_authz::jwt`]): a request
//! without a token passes without a principal; an invalid token gets 401 with a
//! `WWW-Authenticate` challenge. Keys missing from the caller's cache (not fetched yet, or
//! rotated at the issuer) are refetched once before the request is refused. A verified token
//! travels on in the request's extensions ([`Authenticated`]) for authorization; headers the
//! rules write from claims are removed from what the client sent, so they cannot be forged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use mesh_authz::jwt::{
    Authenticator, FoundToken, JwtError, KeySet, KeySource, RequestAuth, TokenLocation,
};
use tower::{Layer, Service};

use super::meta::Meta;
use mesh_telemetry::metrics::ResponseFlags;

/// The verified JWT of a request, in its extensions.
#[derive(Debug, Clone)]
pub struct Authenticated(pub RequestAuth);

/// The `RequestAuthentication` rules of a stream and the keys to check tokens with.
pub trait JwtSource: Clone + Send + Sync + 'static {
    /// The rules that apply to requests now (`None`: no JWT authentication here).
    fn authenticator(&self) -> Option<Arc<Authenticator>>;
    /// The cached keys of a remote source (`None`: not available).
    fn keys(&self, src: &KeySource) -> Option<Arc<KeySet>>;
    /// Fetches `src` again (keys missing or rotated); resolves when the attempt ended.
    fn refetch(&self, src: KeySource) -> impl Future<Output = ()> + Send + 'static;
    /// Told of each refused request, e.g. to log it.
    fn refused<B>(&self, req: &Request<B>, reason: &JwtError) {
        let _ = (req, reason);
    }
}

/// Authenticates requests with a [`JwtSource`] ([`Jwt`]).
#[derive(Debug, Clone)]
pub struct JwtLayer<J> {
    source: J,
}

impl<J> JwtLayer<J> {
    /// A layer authenticating with `source`.
    pub fn new(source: J) -> Self {
        JwtLayer { source }
    }
}

impl<S, J: Clone> Layer<S> for JwtLayer<J> {
    type Service = Jwt<S, J>;

    fn layer(&self, inner: S) -> Self::Service {
        Jwt {
            inner,
            source: self.source.clone(),
        }
    }
}

/// JWT authentication in front of `S`.
#[derive(Debug, Clone)]
pub struct Jwt<S, J> {
    inner: S,
    source: J,
}

/// The slow path (keys refetched first): rare, boxed.
type Slow<RB, E> = Pin<Box<dyn Future<Output = Result<Response<RB>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`Jwt`].
    pub struct JwtFuture<F, RB, E> {
        #[pin]
        state: JwtState<F, RB, E>,
    }
}

pin_project_lite::pin_project! {
    /// The state of [`Jwt`].
    #[project = JwtProj]
    enum JwtState<F, RB, E> {
        /// Authenticated (or no token): the inner service's response.
        Inner { #[pin] fut: F, logged_path: Option<String> },
        /// Refused.
        Refused { resp: Option<Response<RB>> },
        /// Keys refetched before deciding.
        Refetch { fut: Slow<RB, E> },
    }
}

impl<F, RB, E> From<JwtState<F, RB, E>> for JwtFuture<F, RB, E> {
    fn from(state: JwtState<F, RB, E>) -> Self {
        JwtFuture { state }
    }
}

impl<F, RB, E> Future for JwtFuture<F, RB, E>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            JwtProj::Inner { fut, logged_path } => {
                let mut resp = std::task::ready!(fut.poll(cx))?;
                if let Some(p) = logged_path.take() {
                    Meta::of(&mut resp).logged_path = Some(p);
                }
                Poll::Ready(Ok(resp))
            }
            JwtProj::Refused { resp } => match resp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                // Polled after completion: never ready again, as a fused future.
                None => Poll::Pending,
            },
            JwtProj::Refetch { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S, J, B, RB> Service<Request<B>> for Jwt<S, J>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    J: JwtSource,
    B: Send + 'static,
    RB: From<Bytes> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = JwtFuture<S::Future, RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(authn) = self.source.authenticator() else {
            return JwtState::Inner {
                fut: self.inner.call(req),
                logged_path: None,
            }
            .into();
        };
        let logged_path = redacted_path(&authn, req.uri());
        let found = match authn.find_token(req.headers(), req.uri().query()) {
            Ok(Some(found)) => found,
            Ok(None) => {
                authn.rewrite_headers(req.headers_mut(), None);
                return JwtState::Inner {
                    fut: self.inner.call(req),
                    logged_path,
                }
                .into();
            }
            Err(e) => return refuse(&self.source, &req, &e, logged_path),
        };
        let source = &self.source;
        match authn.verify(&found, &|s| source.keys(s)) {
            Ok(auth) => {
                accept(&mut req, &authn, &found, auth);
                JwtState::Inner {
                    fut: self.inner.call(req),
                    logged_path,
                }
                .into()
            }
            Err(e) => match e.refetch() {
                Some(src) => {
                    let refetch = self.source.refetch(src.clone());
                    let source = self.source.clone();
                    // The service that was polled ready handles the request later.
                    let fresh = self.inner.clone();
                    let mut inner = std::mem::replace(&mut self.inner, fresh);
                    JwtState::Refetch {
                        fut: Box::pin(async move {
                            refetch.await;
                            match authn.verify(&found, &|s| source.keys(s)) {
                                Ok(auth) => {
                                    accept(&mut req, &authn, &found, auth);
                                    let mut resp = inner.call(req).await?;
                                    if let Some(p) = logged_path {
                                        Meta::of(&mut resp).logged_path = Some(p);
                                    }
                                    Ok(resp)
                                }
                                Err(e) => Ok(refused(&source, &req, &e, logged_path)),
                            }
                        }),
                    }
                    .into()
                }
                None => refuse(&self.source, &req, &e, logged_path),
            },
        }
    }
}

/// Rewrites the headers for a verified token and hands it on.
fn accept<B>(req: &mut Request<B>, authn: &Authenticator, found: &FoundToken, auth: RequestAuth) {
    authn.rewrite_headers(req.headers_mut(), Some((found, &auth)));
    req.extensions_mut().insert(Authenticated(auth));
}

fn refuse<F, RB: From<Bytes>, E, J: JwtSource, B>(
    source: &J,
    req: &Request<B>,
    e: &JwtError,
    logged_path: Option<String>,
) -> JwtFuture<F, RB, E> {
    JwtState::Refused {
        resp: Some(refused(source, req, e, logged_path)),
    }
    .into()
}

/// 401 with Envoy's wording and a `WWW-Authenticate` challenge for the request's URL.
fn refused<RB: From<Bytes>, J: JwtSource, B>(
    source: &J,
    req: &Request<B>,
    e: &JwtError,
    logged_path: Option<String>,
) -> Response<RB> {
    source.refused(req, e);
    let mut resp = super::local(StatusCode::UNAUTHORIZED, e.to_string(), ResponseFlags::None);
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let realm = format!(
        "Bearer realm=\"http://{authority}{}\", error=\"invalid_token\"",
        req.uri().path()
    );
    if let Ok(v) = HeaderValue::from_str(&realm) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    if let Some(p) = logged_path {
        Meta::of(&mut resp).logged_path = Some(p);
    }
    resp
}

/// The path to log when a token may travel in the query: the rules' query parameters
/// redacted (`None`: log the path as it is).
fn redacted_path(authn: &Authenticator, uri: &Uri) -> Option<String> {
    let q = uri.query()?;
    let is_param = |k: &str| {
        authn
            .locations()
            .iter()
            .any(|l| matches!(l, TokenLocation::Param(p) if p == k))
    };
    if !authn
        .locations()
        .iter()
        .any(|l| matches!(l, TokenLocation::Param(_)))
    {
        return None;
    }
    let mut out = String::with_capacity(uri.path().len() + 1 + q.len());
    out.push_str(uri.path());
    out.push('?');
    for (i, kv) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match kv.split_once('=') {
            Some((k, _)) if is_param(k) => {
                out.push_str(k);
                out.push_str("=<redacted>");
            }
            _ => out.push_str(kv),
        }
    }
    Some(out)
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
