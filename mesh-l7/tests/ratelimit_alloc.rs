//! The rate limit layer allocates nothing per request when no rate limit applies (the
//! stack's cost when the mechanism is off), measured with a counting allocator; and what a
//! configured local limit costs, for comparison. Its own test binary: the allocator is the
//! process's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
// Test-only: a counting global allocator needs `unsafe impl GlobalAlloc`; it only delegates
// to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use mesh_l7::layer::tower::{Layer, Service};
use mesh_l7::layer::{
    Body, GlobalAnswer, GlobalError, RateLimitLayer, RateLimitSource, Target, UpstreamRequest,
};
use mesh_l7::ratelimit::{
    Context as Ctx, Descriptor, GlobalFilter, RateLimitPolicy, RateLimitRules, VhostFacts,
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
struct Src(Option<Arc<RateLimitPolicy>>);

impl RateLimitSource for Src {
    type Check = std::future::Ready<Result<GlobalAnswer, GlobalError>>;

    fn with_policy<T>(&self, f: impl FnOnce(&RateLimitPolicy, VhostFacts<'_>) -> T) -> Option<T> {
        let p = self.0.as_ref()?;
        Some(f(
            p,
            VhostFacts {
                host: None,
                port: 80,
            },
        ))
    }

    fn client(&self) -> Option<IpAddr> {
        None
    }

    fn check(&self, _: &GlobalFilter, _: Vec<Descriptor>) -> Self::Check {
        std::future::ready(Ok(GlobalAnswer::Ok(Vec::new())))
    }
}

type Resp = Response<Body<http_body_util::Empty<Bytes>>>;

/// Allocations per request through the layer (request built outside the count), polling the
/// future by hand (no runtime allocations).
fn allocs_per_request(src: Src, n: u64) -> u64 {
    let up = mesh_l7::layer::tower::service_fn(|_: UpstreamRequest<()>| {
        std::future::ready(Ok::<Resp, Infallible>(Response::new(Body::Upstream(
            http_body_util::Empty::new(),
        ))))
    });
    let mut svc = RateLimitLayer::new(src).layer(up);
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    for _ in 0..n {
        let req = UpstreamRequest {
            target: Target::Direct,
            request: Request::get("/").body(()).unwrap(),
        };
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
fn no_allocation_when_not_configured() {
    assert_eq!(allocs_per_request(Src(None), 1000), 0);
    // For comparison: a proxy-wide local limit (filter_enabled 100%, no x-ratelimit headers).
    let spec = serde_json::from_str(
        r#"{"configPatches": [{"applyTo": "HTTP_FILTER", "patch": {"operation": "INSERT_BEFORE", "value": {
          "name": "envoy.filters.http.local_ratelimit", "typed_config": {
          "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
          "stat_prefix": "l", "token_bucket": {"max_tokens": 1000000, "fill_interval": "1s"},
          "filter_enabled": {"default_value": {"numerator": 100}},
          "filter_enforced": {"default_value": {"numerator": 100}}}}}}]}"#,
    )
    .unwrap();
    let rules = RateLimitRules::compile(&spec).unwrap();
    let p = RateLimitPolicy::build([&rules], Ctx::Gateway, tokio::time::Instant::now()).unwrap();
    let configured = allocs_per_request(Src(Some(Arc::new(p))), 1000);
    println!("allocations per request: off 0, local limit {configured}");
    assert_eq!(
        configured, 0,
        "a proxy-wide bucket takes no allocation either"
    );
}
