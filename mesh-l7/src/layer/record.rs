//! Recording: each request is counted (bytes both ways, duration, status, gRPC status) and
//! handed to the caller's [`Recorder`] exactly once, when its response body ends, or when it
//! is dropped (the client went away, the stream was reset) — so metrics and access logs see
//! every request, however it ended.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::meta::Meta;

/// `grpc-status`, in response headers (trailers-only responses) or trailers.
const GRPC_STATUS: &str = "grpc-status";

/// Receives each finished request.
pub trait Recorder: Clone + Send + 'static {
    /// What the recorder keeps of a request until its response ends (method, path, ids…).
    type Request: Send + 'static;

    /// Called when the request arrives, before any inner layer changes it.
    fn start<B>(&self, req: &Request<B>) -> Self::Request;

    /// Called with the response head, before it is sent: takes what the recorder needs from
    /// the response (its extensions) into `req`.
    fn respond<B>(&self, req: &mut Self::Request, resp: &mut Response<B>) {
        let _ = (req, resp);
    }

    /// Called once, when the response body ended or was dropped.
    fn finish(&self, req: Self::Request, done: &Finished<'_>);
}

/// How a request ended.
#[derive(Debug)]
pub struct Finished<'a> {
    /// The response status.
    pub status: StatusCode,
    /// The gRPC status (from the trailers, else the response headers).
    pub grpc_status: Option<&'a str>,
    /// Request body bytes read from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// From the request's arrival to the end of the response.
    pub duration: Duration,
    /// What the layers noted ([`Meta`]: flags, route, upstream, audit).
    pub meta: &'a Meta,
}

/// Records requests with a [`Recorder`] ([`Record`]).
#[derive(Debug, Clone)]
pub struct RecordLayer<R> {
    recorder: R,
}

impl<R> RecordLayer<R> {
    /// A layer recording with `recorder`.
    pub fn new(recorder: R) -> Self {
        RecordLayer { recorder }
    }
}

impl<S, R: Clone> Layer<S> for RecordLayer<R> {
    type Service = Record<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Record {
            inner,
            recorder: self.recorder.clone(),
        }
    }
}

/// Counts the request body, and records the request when its response ends.
#[derive(Debug, Clone)]
pub struct Record<S, R> {
    inner: S,
    recorder: R,
}

impl<S, R, B, RB> Service<Request<B>> for Record<S, R>
where
    S: Service<Request<CountedBody<B>>, Response = Response<RB>>,
    R: Recorder,
{
    type Response = Response<RecordedBody<RB, R>>;
    type Error = S::Error;
    type Future = RecordFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let recorded = self.recorder.start(&req);
        let request_bytes = Arc::new(AtomicU64::new(0));
        let req = req.map(|inner| CountedBody {
            inner,
            bytes: request_bytes.clone(),
        });
        RecordFuture {
            inner: self.inner.call(req),
            pending: Some(Pending {
                recorder: self.recorder.clone(),
                req: recorded,
                start,
                request_bytes,
            }),
        }
    }
}

struct Pending<R: Recorder> {
    recorder: R,
    req: R::Request,
    start: Instant,
    request_bytes: Arc<AtomicU64>,
}

pin_project_lite::pin_project! {
    /// The future of [`Record`]: the inner response with its body recorded.
    pub struct RecordFuture<F, R>
    where
        R: Recorder,
    {
        #[pin]
        inner: F,
        pending: Option<Pending<R>>,
    }
}

impl<F, R, RB, E> Future for RecordFuture<F, R>
where
    F: Future<Output = Result<Response<RB>, E>>,
    R: Recorder,
{
    type Output = Result<Response<RecordedBody<RB, R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.inner.poll(cx))?;
        // Polled again after completion: a contract violation of the caller; the response
        // is passed on unrecorded rather than panicking.
        let done = this.pending.take().map(|mut p| {
            p.recorder.respond(&mut p.req, &mut resp);
            Done {
                meta: resp.extensions_mut().remove::<Meta>().unwrap_or_default(),
                status: resp.status(),
                grpc_status: resp.headers().get(GRPC_STATUS).cloned(),
                pending: p,
            }
        });
        Poll::Ready(Ok(resp.map(|inner| RecordedBody {
            inner,
            bytes: 0,
            done,
        })))
    }
}

/// What is recorded when the response ends.
struct Done<R: Recorder> {
    pending: Pending<R>,
    status: StatusCode,
    grpc_status: Option<HeaderValue>,
    meta: Meta,
}

impl<R: Recorder> Done<R> {
    fn finish(self, response_bytes: u64) {
        let p = self.pending;
        p.recorder.finish(
            p.req,
            &Finished {
                status: self.status,
                grpc_status: self.grpc_status.as_ref().and_then(|v| v.to_str().ok()),
                request_bytes: p.request_bytes.load(Ordering::Relaxed),
                response_bytes,
                duration: p.start.elapsed(),
                meta: &self.meta,
            },
        );
    }
}

/// A request body that counts its bytes as they pass.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts its bytes and records the request when it ends or is
/// dropped.
pub struct RecordedBody<B, R: Recorder> {
    inner: B,
    bytes: u64,
    done: Option<Done<R>>,
}

impl<B: std::fmt::Debug, R: Recorder> std::fmt::Debug for RecordedBody<B, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedBody")
            .field("inner", &self.inner)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

// No field is structurally pinned: the inner body is required to be `Unpin`.
impl<B: Unpin, R: Recorder> Unpin for RecordedBody<B, R> {}

impl<B, R: Recorder> Drop for RecordedBody<B, R> {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            d.finish(self.bytes);
        }
    }
}

impl<B, R> http_body::Body for RecordedBody<B, R>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    R: Recorder,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref()
                    && let (Some(done), Some(v)) = (this.done.as_mut(), t.get(GRPC_STATUS))
                {
                    done.grpc_status = Some(v.clone());
                }
            }
            Poll::Ready(None) => {
                if let Some(d) = this.done.take() {
                    d.finish(this.bytes);
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Body;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tower::{ServiceExt, service_fn};

    /// Keeps what it was told.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl Recorder for Log {
        type Request = String;

        fn start<B>(&self, req: &Request<B>) -> String {
            format!("{} {}", req.method(), req.uri().path())
        }

        fn finish(&self, req: String, d: &Finished<'_>) {
            self.0.lock().unwrap().push(format!(
                "{req} {} grpc={:?} in={} out={} flags={} route={:?}",
                d.status,
                d.grpc_status,
                d.request_bytes,
                d.response_bytes,
                d.meta.flags,
                d.meta.route
            ));
        }
    }

    type Up = Body<Full<Bytes>>;

    fn upstream() -> impl Service<
        Request<CountedBody<Full<Bytes>>>,
        Response = Response<Up>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Up>, Infallible>>,
    > + Clone {
        service_fn(|req: Request<CountedBody<Full<Bytes>>>| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut resp = Response::new(Body::Upstream(Full::new(body)));
            Meta::of(&mut resp).route = Some("r1".into());
            Ok(resp)
        })
    }

    #[tokio::test]
    async fn records_once_when_the_body_ends() {
        let log = Log::default();
        let svc = RecordLayer::new(log.clone()).layer(upstream());
        let req = Request::post("/a")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert!(log.0.lock().unwrap().is_empty(), "not before the body ends");
        assert!(
            resp.extensions().get::<Meta>().is_none(),
            "meta taken by the recorder"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        assert_eq!(
            *log.0.lock().unwrap(),
            ["POST /a 200 OK grpc=None in=5 out=5 flags=- route=Some(\"r1\")"]
        );
    }

    #[tokio::test]
    async fn records_when_dropped_and_takes_trailer_grpc_status() {
        let log = Log::default();
        let svc = RecordLayer::new(log.clone()).layer(service_fn(
            |_req: Request<CountedBody<Full<Bytes>>>| async move {
                let mut trailers = http::HeaderMap::new();
                trailers.insert(GRPC_STATUS, HeaderValue::from_static("7"));
                let body = Frames(
                    [
                        Frame::data(Bytes::from_static(b"xy")),
                        Frame::trailers(trailers),
                    ]
                    .into(),
                );
                Ok::<_, Infallible>(Response::new(body))
            },
        ));
        let resp = svc
            .clone()
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        drop(resp.into_body().collect().await.unwrap());
        let resp = svc.oneshot(Request::new(Full::default())).await.unwrap();
        drop(resp);
        let log = log.0.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert!(log[0].contains("grpc=Some(\"7\") in=0 out=2"), "{}", log[0]);
        assert!(
            log[1].contains("grpc=None in=0 out=0"),
            "dropped unread: {}",
            log[1]
        );
    }

    /// Attacker: a client cannot make its request unrecorded, nor count twice, by sending a
    /// `grpc-status` trailer of garbage or by abandoning the response mid-way.
    #[tokio::test]
    async fn garbage_grpc_status_is_recorded_once() {
        let log = Log::default();
        let svc = RecordLayer::new(log.clone()).layer(service_fn(
            |_req: Request<CountedBody<Full<Bytes>>>| async move {
                let mut resp = Response::new(Full::new(Bytes::from_static(b"abc")));
                resp.headers_mut()
                    .insert(GRPC_STATUS, HeaderValue::from_bytes(b"\xff\xfe").unwrap());
                Ok::<_, Infallible>(resp)
            },
        ));
        let mut body = svc
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap()
            .into_body();
        let _ = body.frame().await;
        assert!(body.frame().await.is_none());
        drop(body);
        let log = log.0.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert!(log[0].contains("grpc=None in=0 out=3"), "{}", log[0]);
    }

    /// A body of ready frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }
}
