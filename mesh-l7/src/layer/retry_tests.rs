#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::istio::VirtualServiceSpec;
use crate::layer::{Lookup, RouteLayer, RouteSource, TimeoutLayer, UpstreamFailure};
use crate::resilience::budget::BudgetRegistry;
use crate::{RouteTable, layer::DEFAULT_REPLAY_CAP};

/// The response body of the tests' stack.
type TestBody = Body<Full<Bytes>>;

/// What the fake upstream does on a try.
#[derive(Debug, Clone, Copy)]
enum Do {
    Status(u16),
    Fail(UpstreamFailure),
    Hang,
}

/// One try as the upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    attempt: Option<Attempt>,
    count_header: String,
    body: Result<Bytes, String>,
    retry_on_header: Option<String>,
}

#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Do>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn new(script: &[Do]) -> Self {
        Upstream {
            script: Arc::new(Mutex::new(script.iter().cloned().collect())),
            seen: Arc::default(),
        }
    }

    fn tries(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn service(
        &self,
    ) -> impl Service<
        UpstreamRequest<ReplayBody<Full<Bytes>>>,
        Response = Response<TestBody>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<TestBody>, Infallible>> + Send,
    > + Clone
    + Send {
        let up = self.clone();
        service_fn(move |u: UpstreamRequest<ReplayBody<Full<Bytes>>>| {
            let up = up.clone();
            async move {
                let n = up.tries();
                let addr = SocketAddr::from(([10, 0, (n / 250) as u8, (n % 250) as u8 + 1], 80));
                let (parts, body) = u.request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .map_err(|e| e.to_string());
                up.seen.lock().unwrap().push(Seen {
                    attempt: parts.extensions.get::<Attempt>().cloned(),
                    count_header: parts
                        .headers
                        .get(ATTEMPT_COUNT)
                        .map_or("-", |v| v.to_str().unwrap())
                        .to_owned(),
                    body,
                    retry_on_header: parts
                        .headers
                        .get("x-envoy-retry-on")
                        .map(|v| v.to_str().unwrap().to_owned()),
                });
                let next = up
                    .script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or(Do::Status(200));
                let mut resp = match next {
                    Do::Status(s) => {
                        let mut r = Response::new(Body::Upstream(Full::new(Bytes::from("up"))));
                        *r.status_mut() = StatusCode::from_u16(s).unwrap();
                        r
                    }
                    Do::Fail(f) => {
                        let mut r = super::super::local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "upstream failed",
                            f.flag(),
                        );
                        Meta::of(&mut r).failure = Some(f);
                        r
                    }
                    Do::Hang => std::future::pending().await,
                };
                Meta::of(&mut resp).upstream = Some(addr);
                Ok::<_, Infallible>(resp)
            }
        })
    }
}

/// Routes by one table; the mesh default and budgets as set.
#[derive(Clone)]
struct Src {
    table: Arc<RouteTable>,
    default: Option<Arc<RetryPolicy>>,
    budget: Option<RetryBudgetPolicy>,
    registry: Arc<BudgetRegistry>,
}

impl RouteSource for Src {
    fn lookup(&self) -> Lookup {
        Lookup::Table {
            table: Some(self.table.clone()),
            port: 80,
        }
    }
}

impl RetrySource for Src {
    fn default_policy(&self) -> Option<Arc<RetryPolicy>> {
        self.default.clone()
    }

    fn budget(&self, _target: &Target) -> Option<(RetryBudgetPolicy, Arc<BudgetCounters>)> {
        Some((self.budget?, self.registry.get("web", None)))
    }
}

fn src(route: serde_json::Value) -> Src {
    let mut http = json!({"route": [{"destination": {"host": "web"}}]});
    for (k, v) in route.as_object().unwrap() {
        http[k] = v.clone();
    }
    let vs: VirtualServiceSpec =
        serde_json::from_value(json!({"hosts": ["web"], "http": [http]})).unwrap();
    Src {
        table: Arc::new(RouteTable::compile(&vs).unwrap()),
        default: Some(Arc::new(RetryPolicy::istio_default())),
        budget: None,
        registry: Arc::default(),
    }
}

async fn send(src: &Src, up: &Upstream, req: Request<Full<Bytes>>) -> Response<Body<Full<Bytes>>> {
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(src.clone()))
        .layer(TimeoutLayer::new())
        .layer(RetryLayer::new(src.clone(), 16))
        .service(up.service());
    stack.oneshot(req).await.unwrap()
}

fn get() -> Request<Full<Bytes>> {
    Request::get("/")
        .header("host", "web")
        .body(Full::default())
        .unwrap()
}

fn flags<B>(r: &Response<B>) -> ResponseFlags {
    r.extensions()
        .get::<Meta>()
        .map_or(ResponseFlags::None, |m| m.flags)
}

#[tokio::test(start_paused = true)]
async fn a_backend_answering_503_is_tried_exactly_attempts_plus_one_times_then_urx() {
    // Istio HTTPRetry.attempts counts retries: attempts 3 → 4 tries; Envoy marks the
    // response URX when retries are exhausted on a retriable outcome.
    let s = src(json!({"retries": {"attempts": 3, "retryOn": "5xx"}}));
    let up = Upstream::new(&[Do::Status(503); 10]);
    let r = send(&s, &up, get()).await;
    assert_eq!(r.status(), 503);
    assert_eq!(up.tries(), 4);
    assert_eq!(flags(&r), ResponseFlags::UpstreamRetryLimitExceeded);
    let seen = up.seen.lock().unwrap();
    assert_eq!(
        seen.iter()
            .map(|s| s.count_header.as_str())
            .collect::<Vec<_>>(),
        ["1", "2", "3", "4"]
    );
    // Each retry names the upstreams already tried (Envoy previous_hosts, set by Istio).
    assert!(seen[0].attempt.is_none());
    let last = seen[3].attempt.as_ref().unwrap();
    assert_eq!(last.number, 4);
    assert_eq!(last.tried.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_success_after_failures_is_answered_and_not_retried_further() {
    let s = src(json!({"retries": {"attempts": 5, "retryOn": "5xx"}}));
    let up = Upstream::new(&[
        Do::Status(503),
        Do::Fail(UpstreamFailure::Reset),
        Do::Status(200),
    ]);
    let r = send(&s, &up, get()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.tries(), 3);
    assert_eq!(flags(&r), ResponseFlags::None);
}

#[tokio::test(start_paused = true)]
async fn the_mesh_default_retries_connect_failures_and_503_twice_but_not_500_or_resets() {
    // Istio DefaultPolicy: 2 retries; retriable-status-codes 503, connect-failure,
    // refused-stream; not 500 and not a reset after the request was sent.
    let s = src(json!({}));
    let up = Upstream::new(&[Do::Fail(UpstreamFailure::ConnectFailure); 5]);
    let r = send(&s, &up, get()).await;
    assert_eq!((r.status().as_u16(), up.tries()), (503, 3));
    assert_eq!(flags(&r), ResponseFlags::UpstreamRetryLimitExceeded);
    for (what, tries) in [
        (Do::Status(500), 1),
        (Do::Fail(UpstreamFailure::Reset), 1),
        (Do::Fail(UpstreamFailure::RefusedStream), 3),
        (Do::Status(503), 3),
    ] {
        let up = Upstream::new(&[what, what, what]);
        send(&s, &up, get()).await;
        assert_eq!(up.tries(), tries, "{what:?}");
    }
    // A reset answers UR, not URX, when not retriable.
    let up = Upstream::new(&[Do::Fail(UpstreamFailure::Reset)]);
    assert_eq!(
        flags(&send(&s, &up, get()).await),
        ResponseFlags::UpstreamRemoteReset
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_zero_turns_off_even_the_default() {
    let s = src(json!({"retries": {"attempts": 0}}));
    let up = Upstream::new(&[Do::Status(503); 3]);
    send(&s, &up, get()).await;
    assert_eq!(up.tries(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_try_is_cut_by_the_per_try_timeout_and_retried() {
    // Envoy: per_try_timeout applies to each try; a timed-out try is retried under 5xx /
    // gateway-error / reset, and answered 504 UT when it is not.
    let s = src(
        json!({"retries": {"attempts": 2, "perTryTimeout": "100ms", "retryOn": "gateway-error"}}),
    );
    let up = Upstream::new(&[Do::Hang, Do::Hang, Do::Status(200)]);
    let start = Instant::now();
    let r = send(&s, &up, get()).await;
    assert_eq!((r.status().as_u16(), up.tries()), (200, 3));
    // Two timeouts and two backoffs (below 25 ms and 50 ms).
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(275),
        "{took:?}"
    );
    let s = src(
        json!({"retries": {"attempts": 1, "perTryTimeout": "100ms", "retryOn": "connect-failure"}}),
    );
    let up = Upstream::new(&[Do::Hang]);
    let r = send(&s, &up, get()).await;
    assert_eq!((r.status().as_u16(), up.tries()), (504, 1));
    assert_eq!(flags(&r), ResponseFlags::UpstreamRequestTimeout);
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_spans_all_tries_and_answers_504_ut() {
    // Envoy route timeout: the whole request, retries included → 504 "upstream request
    // timeout", flag UT.
    let s = src(
        json!({"timeout": "1s", "retries": {"attempts": 10, "perTryTimeout": "400ms", "retryOn": "5xx"}}),
    );
    let up = Upstream::new(&[Do::Hang; 20]);
    let start = Instant::now();
    let r = send(&s, &up, get()).await;
    assert_eq!(r.status(), 504);
    assert_eq!(flags(&r), ResponseFlags::UpstreamRequestTimeout);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(up.tries(), 3);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "upstream request timeout");
    // `0s` disables the timeout (Istio: "0s" = no timeout).
    let s = src(json!({"timeout": "0s", "retries": {"attempts": 0}}));
    let up = Upstream::new(&[Do::Status(200)]);
    assert_eq!(send(&s, &up, get()).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn bodies_up_to_the_cap_are_replayed_and_bigger_ones_are_not_retried() {
    let s = src(json!({"retries": {"attempts": 2, "retryOn": "5xx"}}));
    let post = |b: &'static str| {
        Request::post("/")
            .header("host", "web")
            .body(Full::new(Bytes::from(b)))
            .unwrap()
    };
    let up = Upstream::new(&[Do::Status(503), Do::Status(503), Do::Status(200)]);
    let r = send(&s, &up, post("0123456789abcdef")).await;
    assert_eq!((r.status().as_u16(), up.tries()), (200, 3));
    for seen in up.seen.lock().unwrap().iter() {
        assert_eq!(seen.body.as_ref().unwrap(), "0123456789abcdef");
    }
    // 17 bytes > the layer's cap of 16: sent once, its 503 answered as is.
    let up = Upstream::new(&[Do::Status(503), Do::Status(200)]);
    let r = send(&s, &up, post("0123456789abcdefg")).await;
    assert_eq!((r.status().as_u16(), up.tries()), (503, 1));
    assert_eq!(up.seen.lock().unwrap()[0].body.as_ref().unwrap().len(), 17);
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_once_spent() {
    // Envoy RetryBudget: active retries ≤ max(min_retry_concurrency, percent × active).
    let mut s = src(json!({"retries": {"attempts": 5, "retryOn": "5xx"}}));
    s.budget = Some(RetryBudgetPolicy {
        percent: 0.0,
        min_retry_concurrency: 1,
    });
    // Another request holds the one retry the budget allows.
    let counters = s.registry.get("web", None);
    let held = counters.retry(s.budget.as_ref().unwrap()).unwrap();
    let up = Upstream::new(&[Do::Status(503); 10]);
    let r = send(&s, &up, get()).await;
    assert_eq!((r.status().as_u16(), up.tries()), (503, 1));
    // Envoy router: a retry refused by the retries resource (budget or maxRetries) is a
    // retry overflow, flagged UO.
    assert_eq!(flags(&r), ResponseFlags::UpstreamOverflow);
    drop(held);
    let up = Upstream::new(&[Do::Status(503); 10]);
    send(&s, &up, get()).await;
    assert_eq!(up.tries(), 6);
    assert_eq!(counters.active(), (0, 0));
    // Requests of routes without retries count as active requests of the destination too
    // (Envoy: the budget is a share of all active requests of the cluster).
    let mut off = src(json!({"retries": {"attempts": 0}}));
    off.budget = s.budget;
    off.registry = s.registry.clone();
    let up = Upstream::new(&[Do::Hang]);
    let pending = tokio::spawn({
        let (off, up) = (off.clone(), up.clone());
        async move { send(&off, &up, get()).await }
    });
    tokio::task::yield_now().await;
    while up.tries() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(counters.active(), (1, 0));
    pending.abort();
    let _ = pending.await;
    assert_eq!(counters.active(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_retry_storm_is_bounded_by_the_budget() {
    // Attacker: 50 concurrent requests to a failing destination with 5 retries each would be
    // 300 tries; a 20% budget with min 3 caps concurrent retries.
    let mut s = src(json!({"retries": {"attempts": 5, "retryOn": "5xx"}}));
    s.budget = Some(RetryBudgetPolicy::default());
    let up = Upstream::new(&[]);
    *up.script.lock().unwrap() = std::iter::repeat_n(Do::Status(503), 1000).collect();
    let all = (0..50).map(|_| send(&s, &up, get()));
    let rs = futures_join_all(all).await;
    assert!(rs.iter().all(|r| r.status() == 503));
    let tries = up.tries();
    // 50 first tries; retries at most 20% of 50 = 10 in flight per round; far below the
    // 300 tries the same storm makes without a budget (below).
    assert!((50..110).contains(&tries), "{tries}");
    s.budget = None;
    let up = Upstream::new(&[]);
    *up.script.lock().unwrap() = std::iter::repeat_n(Do::Status(503), 1000).collect();
    futures_join_all((0..50).map(|_| send(&s, &up, get()))).await;
    assert_eq!(up.tries(), 300);
    assert_eq!(s.registry.get("web", None).active(), (0, 0));
}

async fn futures_join_all<F: Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out = Vec::new();
    // Poll all together: a tiny join without extra dependencies.
    let mut pending: Vec<_> = set.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        results[i] = Some(v);
                        *f = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

#[tokio::test(start_paused = true)]
async fn a_client_cannot_force_retries_with_envoy_headers() {
    // Envoy honours x-envoy-retry-on / x-envoy-max-retries from trusted clients only; this
    // layer never reads them (and the proxy's hygiene strips x-envoy-* first).
    let s = src(json!({"retries": {"attempts": 0}}));
    let up = Upstream::new(&[Do::Status(503); 5]);
    let mut req = get();
    req.headers_mut()
        .insert("x-envoy-retry-on", HeaderValue::from_static("5xx"));
    req.headers_mut()
        .insert("x-envoy-max-retries", HeaderValue::from_static("10"));
    req.headers_mut().insert(
        "x-envoy-upstream-rq-timeout-ms",
        HeaderValue::from_static("1"),
    );
    req.headers_mut()
        .insert(ATTEMPT_COUNT, HeaderValue::from_static("7"));
    let r = send(&s, &up, req).await;
    assert_eq!((r.status().as_u16(), up.tries()), (503, 1));
    // No policy: the client's attempt count passes through untouched by this layer (the
    // proxy's hygiene strips it before).
    assert_eq!(
        up.seen.lock().unwrap()[0].retry_on_header.as_deref(),
        Some("5xx")
    );
}

#[tokio::test]
async fn an_attacker_with_big_bodies_cannot_make_the_layer_hold_more_than_the_cap() {
    // Attacker: a 1 MiB body on a retrying route; the kept bytes never exceed the cap.
    let body = ReplayBody::new(
        Full::new(Bytes::from(vec![7u8; 1 << 20])),
        DEFAULT_REPLAY_CAP,
    );
    assert!(body.replay().is_none());
    assert_eq!(body.kept_bytes(), 0);
    let s = src(json!({"retries": {"attempts": 3, "retryOn": "5xx"}}));
    let up = Upstream::new(&[Do::Status(503); 4]);
    let req = Request::post("/")
        .header("host", "web")
        .body(Full::new(Bytes::from(vec![1u8; 1 << 20])))
        .unwrap();
    let r = send(&s, &up, req).await;
    assert_eq!((r.status().as_u16(), up.tries()), (503, 1));
}
