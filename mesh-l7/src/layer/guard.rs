//! A guard: the caller's check of each request as it arrives (e.g. request hygiene), which
//! may fix the request up or refuse it with a small local response, before any later layer
//! reads it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

/// Why a request is refused: the status, body and response flags of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Status.
    pub status: StatusCode,
    /// `text/plain` body.
    pub body: &'static str,
    /// Response flags (e.g. `DPE`).
    pub flags: mesh_telemetry::metrics::ResponseFlags,
}

/// Checks (and may change) a request.
pub trait Guard: Clone {
    /// `Err`: answer with the refusal instead of calling the inner service.
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Refusal>;
}

/// Guards requests with a [`Guard`] ([`Guarded`]).
#[derive(Debug, Clone)]
pub struct GuardLayer<G> {
    guard: G,
}

impl<G> GuardLayer<G> {
    /// A layer checking with `guard`.
    pub fn new(guard: G) -> Self {
        GuardLayer { guard }
    }
}

impl<S, G: Clone> Layer<S> for GuardLayer<G> {
    type Service = Guarded<S, G>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// `S` behind a guard.
#[derive(Debug, Clone)]
pub struct Guarded<S, G> {
    inner: S,
    guard: G,
}

pin_project_lite::pin_project! {
    /// The future of [`Guarded`].
    pub struct GuardFuture<F, RB> {
        #[pin]
        state: GuardState<F, RB>,
    }
}

pin_project_lite::pin_project! {
    #[project = GuardProj]
    enum GuardState<F, RB> {
        Inner { #[pin] fut: F },
        Refused { resp: Option<Response<RB>> },
    }
}

impl<F, RB, E> Future for GuardFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            GuardProj::Inner { fut } => fut.poll(cx),
            GuardProj::Refused { resp } => match resp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S, G, B, RB> Service<Request<B>> for Guarded<S, G>
where
    S: Service<Request<B>, Response = Response<RB>>,
    G: Guard,
    RB: From<Bytes>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let state = match self.guard.check(&mut req) {
            Ok(()) => GuardState::Inner {
                fut: self.inner.call(req),
            },
            Err(r) => GuardState::Refused {
                resp: Some(super::local(r.status, r.body, r.flags)),
            },
        };
        GuardFuture { state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Meta, testing::echo};
    use mesh_telemetry::metrics::ResponseFlags;
    use tower::ServiceExt;

    /// Refuses lower-case methods, removes `x-envoy-*` headers.
    #[derive(Clone)]
    struct Hygiene;

    impl Guard for Hygiene {
        fn check<B>(&self, req: &mut Request<B>) -> Result<(), Refusal> {
            if req
                .method()
                .as_str()
                .bytes()
                .any(|b| b.is_ascii_lowercase())
            {
                return Err(Refusal {
                    status: StatusCode::BAD_REQUEST,
                    body: "method must be upper case\n",
                    flags: ResponseFlags::DownstreamProtocolError,
                });
            }
            req.headers_mut().remove("x-envoy-original-path");
            Ok(())
        }
    }

    /// Attacker: a header only the mesh may set is removed before the inner service sees
    /// it, and a refused request never reaches it.
    #[tokio::test]
    async fn guards() {
        let svc = GuardLayer::new(Hygiene).layer(echo());
        let req = Request::get("/")
            .header("x-envoy-original-path", "/admin")
            .body(())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert!(resp.headers().get("x-envoy-original-path").is_none());
        let req = Request::builder()
            .method(http::Method::from_bytes(b"get").unwrap())
            .body(())
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            resp.extensions().get::<Meta>().unwrap().flags,
            ResponseFlags::DownstreamProtocolError
        );
        assert_eq!(resp.into_body(), "method must be upper case\n");
    }
}
