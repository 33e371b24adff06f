//! The route and per-try timeouts start when the request body has arrived (finding: a client
//! trickling its body made the per-try timer fire and chose how many tries went upstream).
//! Envoy: `RouteAction.timeout` "spans between the point at which the entire downstream
//! request (i.e. end-of-stream) has been processed and when the upstream response has been
//! completely processed"; `RetryPolicy.per_try_timeout` likewise starts after the downstream
//! request ended (envoy/api/envoy/config/route/v3/route_components.proto). Ours ends at the
//! response head.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::time::Sleep;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::RouteTable;
use crate::istio::VirtualServiceSpec;
use crate::layer::{Lookup, RouteLayer, RouteSource, TimeoutLayer};

/// A body sent by a slow client: one chunk per `every`.
struct Trickle {
    chunks: VecDeque<Bytes>,
    every: Duration,
    sleep: Pin<Box<Sleep>>,
}

fn trickle(n: usize, every: Duration) -> Trickle {
    Trickle {
        chunks: (0..n).map(|_| Bytes::from_static(b"x")).collect(),
        every,
        sleep: Box::pin(tokio::time::sleep(every)),
    }
}

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.chunks.is_empty() {
            return Poll::Ready(None);
        }
        ready!(self.sleep.as_mut().poll(cx));
        let next = Instant::now() + self.every;
        self.sleep.as_mut().reset(next);
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }
}

#[derive(Clone)]
struct Src(Arc<RouteTable>);

impl RouteSource for Src {
    fn lookup(&self) -> Lookup {
        Lookup::Table {
            table: Some(self.0.clone()),
            port: 80,
        }
    }
}

impl RetrySource for Src {
    fn default_policy(&self) -> Option<Arc<RetryPolicy>> {
        None
    }

    fn budget(&self, _target: &Target) -> Option<(RetryBudgetPolicy, Arc<BudgetCounters>)> {
        None
    }
}

fn src(route: serde_json::Value) -> Src {
    let mut http = json!({"route": [{"destination": {"host": "web"}}]});
    for (k, v) in route.as_object().unwrap() {
        http[k] = v.clone();
    }
    let vs: VirtualServiceSpec =
        serde_json::from_value(json!({"hosts": ["web"], "http": [http]})).unwrap();
    Src(Arc::new(RouteTable::compile(&vs).unwrap()))
}

/// Sends a body trickled over 10 × 50 ms to an upstream that reads it all, then answers 200
/// (`hang`: never answers); gives the status, the tries and the time taken.
async fn send(s: &Src, hang: bool) -> (u16, usize, Duration) {
    let tries = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (t, sn) = (tries.clone(), seen.clone());
    let up = service_fn(move |u: UpstreamRequest<ReplayBody<Trickle>>| {
        t.fetch_add(1, Ordering::Relaxed);
        let sn = sn.clone();
        async move {
            let body = u.request.into_body().collect().await;
            sn.lock()
                .unwrap()
                .push(body.map(|b| b.to_bytes().len()).ok());
            if hang {
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(Response::new(Body::Upstream(
                http_body_util::Empty::<Bytes>::new(),
            )))
        }
    });
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(s.clone()))
        .layer(TimeoutLayer::new())
        .layer(RetryLayer::new(s.clone(), 1024))
        .service(up);
    let req = Request::post("/")
        .header("host", "web")
        .body(trickle(10, Duration::from_millis(50)))
        .unwrap();
    let start = Instant::now();
    let r = stack.oneshot(req).await.unwrap();
    let n = tries.load(Ordering::Relaxed);
    if !hang {
        assert_eq!(seen.lock().unwrap()[0], Some(10), "the whole body went up");
    }
    (r.status().as_u16(), n, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_slow_client_body_does_not_fire_the_per_try_timeout_nor_choose_the_tries() {
    // Attacker: a body trickled over 500 ms, perTryTimeout 100 ms, retried on 5xx/reset:
    // one upstream try and its 200, no 504 while the body is still arriving.
    let s = src(json!({"retries": {"attempts": 3, "perTryTimeout": "100ms",
        "retryOn": "5xx,reset,gateway-error"}}));
    let (status, tries, took) = send(&s, false).await;
    assert_eq!((status, tries), (200, 1));
    assert_eq!(took, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn the_per_try_timeout_runs_from_the_end_of_the_body() {
    // Not retried on a timeout (connect-failure only): 504 UT 100 ms after the body ended.
    let s = src(json!({"retries": {"attempts": 1, "perTryTimeout": "100ms",
        "retryOn": "connect-failure"}}));
    let (status, tries, took) = send(&s, true).await;
    assert_eq!((status, tries), (504, 1));
    assert_eq!(took, Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_runs_from_the_end_of_the_body() {
    // A route timeout shorter than the upload: the upload completes and is answered.
    let s = src(json!({"timeout": "200ms", "retries": {"attempts": 0}}));
    let (status, tries, took) = send(&s, false).await;
    assert_eq!((status, tries, took), (200, 1, Duration::from_millis(500)));
    // An upstream that never answers: 504 200 ms after the body ended.
    let (status, tries, took) = send(&s, true).await;
    assert_eq!((status, tries, took), (504, 1, Duration::from_millis(700)));
    // With a retry policy too, the route timeout still starts at the body's end.
    let s = src(json!({"timeout": "300ms", "retries": {"attempts": 5,
        "perTryTimeout": "1s", "retryOn": "5xx"}}));
    let (status, tries, took) = send(&s, true).await;
    assert_eq!((status, tries, took), (504, 1, Duration::from_millis(800)));
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_body_starts_its_timers_at_once() {
    // A GET has ended on arrival: no signal is made, its timers start at dispatch.
    let s = src(json!({"timeout": "200ms", "retries": {"attempts": 0}}));
    let up = service_fn(
        |_u: UpstreamRequest<ReplayBody<http_body_util::Empty<Bytes>>>| {
            std::future::pending::<Result<Response<Body<http_body_util::Empty<Bytes>>>, Infallible>>(
            )
        },
    );
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(s.clone()))
        .layer(TimeoutLayer::new())
        .layer(RetryLayer::new(s.clone(), 1024))
        .service(up);
    let req = Request::get("/")
        .header("host", "web")
        .body(http_body_util::Empty::new())
        .unwrap();
    let start = Instant::now();
    let r = stack.oneshot(req).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), start.elapsed()),
        (504, Duration::from_millis(200))
    );
}

#[test]
fn odd_route_timeouts_are_rejected_by_name_never_a_panic() {
    // Attacker-supplied config: `infs` made the float parser panic (Duration::from_secs_f64
    // of infinity); a bare number has no unit (protobuf JSON Duration needs `s`). Istio's
    // `0.5s` and Go-style `1h30m` are valid.
    for bad in ["infs", "30", "-1s", "1e9s"] {
        let vs: VirtualServiceSpec = serde_json::from_value(json!({"hosts": ["web"],
            "http": [{"timeout": bad, "route": [{"destination": {"host": "web"}}]}]}))
        .unwrap();
        let e = format!("{:?}", RouteTable::compile(&vs).err().unwrap());
        assert!(e.contains("http[0].timeout"), "{bad}: {e}");
    }
    for good in ["0.5s", "1h30m", "250ms"] {
        let vs: VirtualServiceSpec = serde_json::from_value(json!({"hosts": ["web"],
            "http": [{"timeout": good, "route": [{"destination": {"host": "web"}}]}]}))
        .unwrap();
        assert!(RouteTable::compile(&vs).is_ok(), "{good}");
    }
}
