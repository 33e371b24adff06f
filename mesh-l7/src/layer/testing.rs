//! Test fixtures shared by the layers' tests.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use tower::service_fn;

use super::TraceIds;

/// Fixed ids, validated as the mesh does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FakeIds;

impl FakeIds {
    pub(crate) const REQUEST_ID: &'static str = "11111111-2222-4333-8444-555555555555";
    pub(crate) const TRACEPARENT: &'static str =
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
}

impl TraceIds for FakeIds {
    fn request_id(&self) -> HeaderValue {
        HeaderValue::from_static(Self::REQUEST_ID)
    }

    fn traceparent(&self) -> HeaderValue {
        HeaderValue::from_static(Self::TRACEPARENT)
    }

    fn valid_traceparent(&self, v: &str) -> bool {
        mesh_hbone::headers::valid_traceparent(v)
    }
}

/// A service answering with the request's headers as its body.
pub(crate) fn echo_headers<B>() -> impl tower::Service<
    Request<B>,
    Response = Response<HeaderMap>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<HeaderMap>, Infallible>>,
> + Clone {
    service_fn(|req: Request<B>| async move { Ok(Response::new(req.headers().clone())) })
}

/// A service answering 200 with the request's path and query as its body, and the request's
/// headers copied onto the response.
pub(crate) fn echo<B>() -> impl tower::Service<
    Request<B>,
    Response = Response<Bytes>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Bytes>, Infallible>> + Send,
> + Clone
+ Send
where
    B: Send + 'static,
{
    service_fn(|req: Request<B>| async move {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut resp = Response::new(Bytes::from(pq));
        *resp.headers_mut() = req.headers().clone();
        Ok(resp)
    })
}
