//! The timeout and retry layers allocate nothing per request when the route has no timeout
//! and no retries, even for a request whose body is still arriving (the body-end signal
//! that starts the timers is made only when a timer waits for it): the stack
//! `Route → Timeout → Retry → upstream` allocates exactly what `Route → upstream` does,
//! measured with a counting allocator. Its own test binary: the allocator is the process's.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Test-only: a counting global allocator needs `unsafe impl GlobalAlloc`; it only delegates
// to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use mesh_l7::RouteTable;
use mesh_l7::istio::VirtualServiceSpec;
use mesh_l7::layer::tower::{Layer, Service, service_fn};
use mesh_l7::layer::{
    Body, Lookup, ReplayBody, RetryLayer, RetrySource, RouteLayer, RouteSource, Target,
    TimeoutLayer, UpstreamRequest,
};
use mesh_l7::resilience::budget::{BudgetCounters, RetryBudgetPolicy};
use mesh_l7::resilience::retry::RetryPolicy;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds GlobalAlloc's
// contract; the counter has no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with `l` (alloc above).
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

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
    fn budget(&self, _: &Target) -> Option<(RetryBudgetPolicy, Arc<BudgetCounters>)> {
        None
    }
}

type Resp = Response<Body<http_body_util::Empty<Bytes>>>;

fn ok() -> std::future::Ready<Result<Resp, Infallible>> {
    std::future::ready(Ok(Response::new(Body::Upstream(
        http_body_util::Empty::new(),
    ))))
}

/// Allocations per request through `svc` (a POST whose body has not been read: still
/// arriving as far as the layers know), requests built outside the count.
fn per_request<S>(mut svc: S, n: u64) -> u64
where
    S: Service<Request<Full<Bytes>>, Response = Resp, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    for _ in 0..n {
        let req = Request::post("/x")
            .header("host", "svc")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let before = ALLOCS.load(Ordering::Relaxed);
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fut = std::pin::pin!(svc.call(req));
        let Poll::Ready(Ok(resp)) = fut.poll(&mut cx) else {
            panic!("pending")
        };
        total += ALLOCS.load(Ordering::Relaxed) - before;
        drop(resp);
    }
    total / n
}

#[test]
fn no_timeout_and_no_retries_cost_no_allocation() {
    let vs: VirtualServiceSpec = serde_json::from_str(
        r#"{"hosts": ["svc"], "http": [{"retries": {"attempts": 0},
            "route": [{"destination": {"host": "svc"}}]}]}"#,
    )
    .unwrap();
    let src = Src(Arc::new(RouteTable::compile(&vs).unwrap()));
    let routing =
        RouteLayer::new(src.clone()).layer(service_fn(|_: UpstreamRequest<Full<Bytes>>| ok()));
    let full = RouteLayer::new(src.clone()).layer(TimeoutLayer::new().layer(
        RetryLayer::new(src, 1024).layer(service_fn(
            |_: UpstreamRequest<ReplayBody<Full<Bytes>>>| ok(),
        )),
    ));
    let (base, with) = (per_request(routing, 1000), per_request(full, 1000));
    assert_eq!(with, base, "timeout+retry layers added allocations");
}
