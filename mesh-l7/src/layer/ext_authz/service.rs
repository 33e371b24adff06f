//! The tower layer of external authorization: which providers a request goes to (the
//! `CUSTOM` policies of the [`AuthzSource`] matching it), the checks one after the other
//! (each bounded by its provider's timeout), and the request changed or refused as
//! [`decide`] says.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use mesh_authz::http::HttpFacts;
use mesh_telemetry::metrics::ResponseFlags;
use tower::{Layer, Service};

use super::core::{Verdict, apply_upstream, decide};
use super::types::{Authorizer, CheckError, CheckInput, Provider, protocol_name};
use crate::layer::authz::{AuthzSource, Scope};
use crate::layer::jwt::Authenticated;

/// Asks external authorizers about requests ([`ExtAuthz`]).
#[derive(Debug, Clone)]
pub struct ExtAuthzLayer<P, A> {
    source: P,
    authorizer: A,
}

impl<P, A> ExtAuthzLayer<P, A> {
    /// A layer reading `CUSTOM` policies from `source` and asking `authorizer`.
    pub fn new(source: P, authorizer: A) -> Self {
        ExtAuthzLayer { source, authorizer }
    }
}

impl<S, P: Clone, A: Clone> Layer<S> for ExtAuthzLayer<P, A> {
    type Service = ExtAuthz<S, P, A>;

    fn layer(&self, inner: S) -> Self::Service {
        ExtAuthz {
            inner,
            source: self.source.clone(),
            authorizer: self.authorizer.clone(),
        }
    }
}

/// External authorization in front of `S`.
#[derive(Debug, Clone)]
pub struct ExtAuthz<S, P, A> {
    inner: S,
    source: P,
    authorizer: A,
}

/// The checks and the inner call after them: boxed, only for requests a `CUSTOM` policy
/// matches.
type Checking<RB, E> = Pin<Box<dyn Future<Output = Result<Response<RB>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`ExtAuthz`].
    pub struct ExtAuthzFuture<F, RB, E> {
        #[pin]
        state: State<F, RB, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, RB, E> {
        /// No check: the inner service's response.
        Inner { #[pin] fut: F },
        /// Refused before any check (an unknown provider).
        Refused { resp: Option<Response<RB>> },
        /// Checks, then the inner call.
        Checking { fut: Checking<RB, E> },
    }
}

impl<F, RB, E> From<State<F, RB, E>> for ExtAuthzFuture<F, RB, E> {
    fn from(state: State<F, RB, E>) -> Self {
        ExtAuthzFuture { state }
    }
}

impl<F, RB, E> Future for ExtAuthzFuture<F, RB, E>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut } => fut.poll(cx),
            StateProj::Refused { resp } => match resp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                // Polled after completion: never ready again, as a fused future.
                None => Poll::Pending,
            },
            StateProj::Checking { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// The providers to ask about a request (names, in policy order, once each) and the
/// normalized path the rules matched.
struct Plan {
    providers: Vec<Arc<str>>,
    path: String,
}

impl<S, P, A, B, RB> Service<Request<B>> for ExtAuthz<S, P, A>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    P: AuthzSource,
    A: Authorizer + Sync,
    B: Send + 'static,
    RB: From<Bytes> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ExtAuthzFuture<S::Future, RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !self.authorizer.active() {
            return State::Inner {
                fut: self.inner.call(req),
            }
            .into();
        }
        let plan = self.source.with_scope(|scope| plan(scope, &req));
        let Some(plan) = plan else {
            return State::Inner {
                fut: self.inner.call(req),
            }
            .into();
        };
        let mut providers = Vec::with_capacity(plan.providers.len());
        for name in &plan.providers {
            match self.authorizer.provider(name) {
                Some(p) => providers.push(p),
                None => {
                    // A policy naming a provider the mesh does not have: fail closed.
                    self.authorizer
                        .refused(&req, name, "unknown extension provider");
                    let resp = refusal(StatusCode::FORBIDDEN, Vec::new(), Bytes::new());
                    return State::Refused { resp: Some(resp) }.into();
                }
            }
        }
        let authorizer = self.authorizer.clone();
        // The service that was polled ready handles the request later.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        State::Checking {
            fut: Box::pin(check_then_call(
                authorizer, providers, plan.path, req, inner,
            )),
        }
        .into()
    }
}

/// Asks each provider in turn; the first refusal answers, else the request goes on changed.
async fn check_then_call<S, A, B, RB>(
    authorizer: A,
    providers: Vec<Provider>,
    path: String,
    mut req: Request<B>,
    mut inner: S,
) -> Result<Response<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>>,
    A: Authorizer,
    RB: From<Bytes>,
{
    let mut downstream = Vec::new();
    for p in &providers {
        let input = input(&req, &path);
        let answer = match tokio::time::timeout(p.timeout, authorizer.check(p, input)).await {
            Ok(a) => a,
            Err(_) => Err(CheckError::Timeout {
                provider: p.name.clone(),
            }),
        };
        let why = answer.as_ref().err().map(ToString::to_string);
        match decide(p, answer) {
            Verdict::Refuse {
                status,
                headers,
                body,
            } => {
                let reason = why.as_deref().unwrap_or("denied by the authorizer");
                authorizer.refused(&req, &p.name, reason);
                return Ok(refusal(status, headers, body));
            }
            Verdict::Allow {
                upstream,
                remove,
                downstream: d,
            } => {
                apply_upstream(req.headers_mut(), &upstream, &remove);
                downstream.extend(d);
            }
        }
    }
    let mut resp = inner.call(req).await?;
    for (n, v) in downstream {
        resp.headers_mut().append(n, v);
    }
    Ok(resp)
}

/// The request as the provider sees it.
fn input<B>(req: &Request<B>, path: &str) -> CheckInput {
    CheckInput {
        method: req.method().clone(),
        path: path.to_owned(),
        host: authority(req).to_owned(),
        scheme: "http",
        protocol: protocol_name(req.version()),
        headers: req.headers().clone(),
    }
}

fn authority<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

/// The providers of the `CUSTOM` policies matching the request; `None` when none matches, or
/// when the authorization layer refuses the request anyway (no scope, a path that cannot be
/// normalized, a connection refused before any policy).
fn plan<B>(scope: Scope<'_>, req: &Request<B>) -> Option<Plan> {
    let Scope::Check(check) = scope else {
        return None;
    };
    if check.deny || check.policies.is_empty() {
        return None;
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let (raw, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let normalized = mesh_authz::http::normalize_path(raw, check.normalization)?;
    let headers = req.headers();
    let header = |n: &str| mesh_authz::headers::header_value(headers, n);
    let facts = HttpFacts {
        conn: check.conn,
        host: host_of(authority(req)),
        method: req.method().as_str(),
        path: &normalized,
        header: &header,
        auth: req.extensions().get::<Authenticated>().map(|a| &a.0),
    };
    let mut providers: Vec<Arc<str>> = Vec::new();
    mesh_authz::http::custom_matches(check.policies, &facts, |p| {
        if let Some(name) = p.provider.as_deref()
            && !providers.iter().any(|n| &**n == name)
        {
            providers.push(Arc::from(name));
        }
        true
    });
    if providers.is_empty() {
        return None;
    }
    let path = match query {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    Some(Plan { providers, path })
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

/// The response to a refused request, flagged `UAEX`.
fn refusal<RB: From<Bytes>>(
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
) -> Response<RB> {
    let mut resp =
        crate::layer::local::<RB>(status, body, ResponseFlags::UnauthorizedExternalService);
    // The authorizer's headers replace the proxy's (`content-type`); a name it repeats (e.g.
    // `set-cookie`) keeps every value.
    let mut set: Vec<HeaderName> = Vec::new();
    for (n, v) in headers {
        if set.contains(&n) {
            resp.headers_mut().append(n, v);
        } else {
            resp.headers_mut().insert(n.clone(), v);
            set.push(n);
        }
    }
    resp
}
