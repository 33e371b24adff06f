//! Routing: the addressed service's route table decides each request — a direct response or
//! redirect is answered here; a forwarded request gets its weighted destination, its
//! rewrites and header operations, and goes to the caller's upstream service with the
//! [`Target`] it must reach. Only destinations of the table (or the addressed service itself)
//! are ever targets: what the client writes in `Host` or the path picks a route of the
//! addressed service's table, never another service.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tower::{Layer, Service};

use super::{Body, Meta};
use crate::{Action, Destination, HttpRoute, RequestFacts, Rewrite, RouteTable};
use mesh_telemetry::metrics::ResponseFlags;

/// How requests of a stream are routed.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// No service was addressed: 503 (`NR`).
    NoService,
    /// No routing: straight to the upstream (e.g. a server-side proxy's local app).
    Direct,
    /// By the addressed service's route table (none: to the addressed service as is).
    Table {
        /// The table, if the service has one.
        table: Option<Arc<RouteTable>>,
        /// The addressed service port (routes may match on it).
        port: u16,
    },
}

/// The route tables of a stream.
pub trait RouteSource: Clone + Send + 'static {
    /// How requests are routed now (from the current config).
    fn lookup(&self) -> Lookup;
}

/// Where a forwarded request goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Unrouted ([`Lookup::Direct`]).
    Direct,
    /// The addressed service (no route matched, or it has no table).
    Addressed,
    /// A route's destination.
    Picked(Picked),
}

/// A route and the destination it picked.
#[derive(Debug, Clone)]
pub struct Picked {
    table: Arc<RouteTable>,
    route: usize,
    dest: usize,
    /// A mirrored copy: the route's mirror at this index is the destination.
    mirror: Option<usize>,
}

impl Picked {
    /// The route (valid by construction: indices from the table's own selection).
    pub fn route(&self) -> Option<&HttpRoute> {
        self.table.routes.get(self.route)
    }

    /// The same route with its mirror `i` as the destination (for a mirrored copy).
    pub fn mirror(&self, i: usize) -> Picked {
        Picked {
            mirror: Some(i),
            ..self.clone()
        }
    }

    /// Whether this is a mirrored copy's target.
    pub fn is_mirror(&self) -> bool {
        self.mirror.is_some()
    }

    /// The destination (a mirror's, for a mirrored copy).
    pub fn destination(&self) -> Option<&Destination> {
        if let Some(i) = self.mirror {
            return self.route()?.mirrors.get(i).map(|m| &m.destination);
        }
        match &self.route()?.action {
            Action::Forward { destinations, .. } => destinations.get(self.dest),
            _ => None,
        }
    }
}

/// A request for the upstream service, with where it must go.
#[derive(Debug)]
pub struct UpstreamRequest<B> {
    /// Where.
    pub target: Target,
    /// The request, rewritten for the upstream.
    pub request: Request<B>,
}

/// Routes requests with a [`RouteSource`] ([`Route`]).
#[derive(Debug, Clone)]
pub struct RouteLayer<R> {
    source: R,
}

impl<R> RouteLayer<R> {
    /// A layer routing with `source`.
    pub fn new(source: R) -> Self {
        RouteLayer { source }
    }
}

impl<S, R: Clone> Layer<S> for RouteLayer<R> {
    type Service = Route<S, R>;

    fn layer(&self, upstream: S) -> Self::Service {
        Route {
            upstream,
            source: self.source.clone(),
        }
    }
}

/// Routing in front of the upstream service `S`.
#[derive(Debug, Clone)]
pub struct Route<S, R> {
    upstream: S,
    source: R,
}

pin_project_lite::pin_project! {
    /// The future of [`Route`].
    pub struct RouteFuture<F, U> {
        #[pin]
        state: RouteState<F, U>,
    }
}

pin_project_lite::pin_project! {
    /// The state of [`Route`].
    #[project = RouteProj]
    enum RouteState<F, U> {
        /// Forwarded: the upstream's response, with the route's response header operations.
        Forward { #[pin] fut: F, picked: Option<Picked>, route: Option<String> },
        /// Answered here.
        Local { resp: Option<Response<Body<U>>> },
    }
}

impl<F, U> From<RouteState<F, U>> for RouteFuture<F, U> {
    fn from(state: RouteState<F, U>) -> Self {
        RouteFuture { state }
    }
}

impl<F, U, E> Future for RouteFuture<F, U>
where
    F: Future<Output = Result<Response<Body<U>>, E>>,
{
    type Output = Result<Response<Body<U>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            RouteProj::Forward { fut, picked, route } => {
                let mut resp = std::task::ready!(fut.poll(cx))?;
                // Operations apply to what the upstream answered, not to the proxy's 503s.
                if let Some(p) = picked.take()
                    && resp.body().is_upstream()
                    && let (Some(r), Some(d)) = (p.route(), p.destination())
                {
                    r.headers.response.apply(resp.headers_mut());
                    d.headers.response.apply(resp.headers_mut());
                }
                if let Some(r) = route.take() {
                    Meta::of(&mut resp).route = Some(r);
                }
                Poll::Ready(Ok(resp))
            }
            RouteProj::Local { resp } => match resp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S, R, B, U> Service<Request<B>> for Route<S, R>
where
    S: Service<UpstreamRequest<B>, Response = Response<Body<U>>>,
    R: RouteSource,
{
    type Response = Response<Body<U>>;
    type Error = S::Error;
    type Future = RouteFuture<S::Future, U>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.upstream.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let (table, port) = match self.source.lookup() {
            Lookup::NoService => {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no such service\n",
                    ResponseFlags::NoRoute,
                    None,
                );
            }
            Lookup::Direct => return self.forward(Target::Direct, req, None),
            Lookup::Table { table, port } => (table, port),
        };
        let selected = table.and_then(|t| {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let i = t.select_index(&RequestFacts {
                method: req.method().as_str(),
                path: pq,
                authority: authority(&req),
                port,
                headers: req.headers(),
            })?;
            Some((t, i))
        });
        let Some((table, i)) = selected else {
            return self.forward(Target::Addressed, req, None);
        };
        let Some(route) = table.routes.get(i) else {
            return self.forward(Target::Addressed, req, None);
        };
        let name = Some(route.name.clone());
        match &route.action {
            Action::DirectResponse { status, body } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                local(
                    status,
                    Bytes::from(body.clone()),
                    ResponseFlags::DirectResponse,
                    name,
                )
            }
            Action::Redirect(r) => {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let location = format!(
                    "http://{}{}",
                    r.authority.as_deref().unwrap_or(authority(&req)),
                    r.uri.as_deref().unwrap_or(pq)
                );
                let status =
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
                let mut resp = answer(status, Bytes::new(), ResponseFlags::DirectResponse, name);
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                RouteState::Local { resp: Some(resp) }.into()
            }
            Action::Forward { rewrite, .. } => {
                let Some(dest) = route.pick_index(rand::random()) else {
                    let body = "no route destination\n";
                    return local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        body,
                        ResponseFlags::NoRoute,
                        name,
                    );
                };
                // The request as the destination sees it: rewritten path and authority,
                // the route's and the destination's header operations.
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                if let Some(new) = route.rewrite_path(pq)
                    && let Ok(uri) = new.parse()
                {
                    *req.uri_mut() = uri;
                }
                if let Some(Rewrite {
                    authority: Some(a), ..
                }) = rewrite
                    && let Ok(v) = HeaderValue::from_str(a)
                {
                    req.headers_mut().insert(header::HOST, v);
                }
                route.headers.request.apply(req.headers_mut());
                let picked = Picked {
                    table: table.clone(),
                    route: i,
                    dest,
                    mirror: None,
                };
                if let Some(d) = picked.destination() {
                    d.headers.request.apply(req.headers_mut());
                }
                self.forward(Target::Picked(picked), req, name)
            }
        }
    }
}

impl<S, R> Route<S, R> {
    fn forward<B, U>(
        &mut self,
        target: Target,
        request: Request<B>,
        route: Option<String>,
    ) -> RouteFuture<S::Future, U>
    where
        S: Service<UpstreamRequest<B>, Response = Response<Body<U>>>,
    {
        let picked = match &target {
            Target::Picked(p) => Some(p.clone()),
            _ => None,
        };
        RouteState::Forward {
            fut: self.upstream.call(UpstreamRequest { target, request }),
            picked,
            route,
        }
        .into()
    }
}

/// The request's authority: `Host`, else the URI's.
fn authority<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

/// A response made here, with its flags and route.
fn answer<U>(
    status: StatusCode,
    body: impl Into<Bytes>,
    flags: ResponseFlags,
    route: Option<String>,
) -> Response<Body<U>> {
    let mut resp = super::local(status, body, flags);
    if route.is_some() {
        Meta::of(&mut resp).route = route;
    }
    resp
}

fn local<F, U>(
    status: StatusCode,
    body: impl Into<Bytes>,
    flags: ResponseFlags,
    route: Option<String>,
) -> RouteFuture<F, U> {
    RouteState::Local {
        resp: Some(answer(status, body, flags, route)),
    }
    .into()
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
