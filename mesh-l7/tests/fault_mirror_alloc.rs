//! The fault and mirror layers allocate nothing per request when the route has no fault or
//! mirror, nor when they are configured at 0 % (the bench's "configured, none firing" case):
//! the stack `Route → Fault → Mirror → upstream` allocates exactly what `Route → upstream`
//! does, measured with a counting allocator. Its own test binary: the allocator is the
//! process's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
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
use mesh_l7::RouteTable;
use mesh_l7::istio::VirtualServiceSpec;
use mesh_l7::layer::tower::{Layer, Service, service_fn};
use mesh_l7::layer::{
    Body, FaultLayer, Lookup, MirrorLayer, MirrorLimits, MirrorStats, ReplayBody, RouteLayer,
    RouteSource, ThreadDice, UpstreamRequest,
};

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

type B = ReplayBody<http_body_util::Empty<Bytes>>;
type Resp = Response<Body<http_body_util::Empty<Bytes>>>;

fn table(extra: &str) -> Src {
    let vs: VirtualServiceSpec = serde_json::from_str(&format!(
        r#"{{"hosts": ["svc"], "http": [{{"route": [{{"destination": {{"host": "svc"}}}}]{extra}}}]}}"#
    ))
    .unwrap();
    Src(Arc::new(RouteTable::compile(&vs).unwrap()))
}

/// Allocations per request through `svc` (requests built outside the count), polling the
/// future by hand (no runtime).
fn per_request<S>(mut svc: S, n: u64) -> u64
where
    S: Service<Request<B>, Response = Resp, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    for _ in 0..n {
        let req = Request::get("/x")
            .header("host", "svc")
            .body(ReplayBody::pass(http_body_util::Empty::new()))
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

fn upstream() -> impl Service<UpstreamRequest<B>, Response = Resp, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|_: UpstreamRequest<B>| {
        std::future::ready(Ok::<Resp, Infallible>(Response::new(Body::Upstream(
            http_body_util::Empty::new(),
        ))))
    })
}

fn costs(src: Src) -> (u64, u64) {
    let routing = RouteLayer::new(src.clone()).layer(upstream());
    let full = RouteLayer::new(src).layer(
        FaultLayer::<ThreadDice>::default().layer(
            MirrorLayer::new(
                ThreadDice,
                MirrorLimits::default(),
                Arc::new(MirrorStats::default()),
            )
            .layer(upstream()),
        ),
    );
    (per_request(routing, 1000), per_request(full, 1000))
}

#[test]
fn no_allocation_when_not_configured_or_not_firing() {
    let (routing, full) = costs(table(""));
    println!("allocations per request: routing {routing}, with fault and mirror layers {full}");
    assert_eq!(full, routing, "no fault, no mirror: the layers add nothing");
    let (routing, full) = costs(table(
        r#", "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 0}},
                       "abort": {"httpStatus": 503, "percentage": {"value": 0}}},
            "mirror": {"host": "shadow"}, "mirrorPercentage": {"value": 0}"#,
    ));
    println!("configured at 0 %: routing {routing}, with fault and mirror layers {full}");
    assert_eq!(full, routing, "configured at 0 %: the layers add nothing");
}
