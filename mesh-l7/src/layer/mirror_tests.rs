#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;

use http::Response;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::sync::mpsc;
use tower::{ServiceBuilder, service_fn};

use super::*;
use crate::RouteTable;
use crate::istio::VirtualServiceSpec;
use crate::layer::{Lookup, RouteLayer, RouteSource};

type B = ReplayBody<Full<Bytes>>;

#[derive(Clone)]
struct Source(Arc<RouteTable>);

impl RouteSource for Source {
    fn lookup(&self) -> Lookup {
        Lookup::Table {
            table: Some(self.0.clone()),
            port: 80,
        }
    }
}

#[derive(Clone)]
struct Seeded(Arc<AtomicU32>);

impl Dice for Seeded {
    fn roll(&self) -> u32 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0.store(x, Ordering::Relaxed);
        x
    }
}

/// `/all` mirrored to `shadow` (all requests), `/quarter` to `shadow` 25%, `/two` to `a` and
/// `b`, the rest not mirrored; every route goes to `main`.
fn table() -> Arc<RouteTable> {
    let vs: VirtualServiceSpec = serde_json::from_value(json!({
        "hosts": ["svc"],
        "http": [
            {"match": [{"uri": {"exact": "/all"}}], "mirror": {"host": "shadow"},
             "route": [{"destination": {"host": "main"}}]},
            {"match": [{"uri": {"exact": "/quarter"}}], "mirror": {"host": "shadow"},
             "mirrorPercentage": {"value": 25.0}, "route": [{"destination": {"host": "main"}}]},
            {"match": [{"uri": {"exact": "/two"}}],
             "mirrors": [{"destination": {"host": "a"}}, {"destination": {"host": "b"}, "percentage": {"value": 100}}],
             "route": [{"destination": {"host": "main"}}]},
            {"route": [{"destination": {"host": "main"}}]}
        ]
    }))
    .unwrap();
    Arc::new(RouteTable::compile(&vs).unwrap())
}

/// What a backend received: destination host, `Host` header, body.
type Seen = (String, String, String);

/// The stack `Route → Mirror → upstream`; the upstream reports what it receives, and
/// requests for `shadow` hang when `slow_shadow`.
fn stack(
    limits: MirrorLimits,
    stats: Arc<MirrorStats>,
    slow_shadow: bool,
) -> (
    impl tower::Service<Request<B>, Response = Response<crate::layer::Body<()>>, Error = Infallible>
    + Clone,
    mpsc::UnboundedReceiver<Seen>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(Source(table())))
        .layer(MirrorLayer::new(
            Seeded(Arc::new(AtomicU32::new(0x1234_5678))),
            limits,
            stats,
        ))
        .service(service_fn(move |u: UpstreamRequest<B>| {
            let tx = tx.clone();
            async move {
                let Target::Picked(p) = &u.target else {
                    panic!("not routed")
                };
                let host = p.destination().unwrap().host.clone();
                if slow_shadow && host == "shadow" {
                    std::future::pending::<()>().await;
                }
                let authority = u.request.headers()["host"].to_str().unwrap().to_owned();
                let body = u.request.into_body().collect().await;
                let body = body.map_or_else(
                    |e| format!("error: {e}"),
                    |b| String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                );
                tx.send((host, authority, body)).unwrap();
                Ok::<_, Infallible>(Response::new(crate::layer::Body::Upstream(())))
            }
        }));
    (svc, rx)
}

fn req(path: &str, body: Option<&'static str>) -> Request<B> {
    let mut b = Request::post(path).header("host", "svc:8080");
    let body = match body {
        Some(s) => {
            b = b.header("content-length", s.len());
            ReplayBody::new(Full::new(Bytes::from_static(s.as_bytes())), 64 * 1024)
        }
        None => ReplayBody::full(Bytes::new()),
    };
    b.body(body).unwrap()
}

async fn drain(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    // Let the spawned copies run.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let mut v = Vec::new();
    while let Ok(s) = rx.try_recv() {
        v.push(s);
    }
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn copy_goes_to_the_mirror_with_shadow_host_and_body() {
    let stats = Arc::new(MirrorStats::default());
    let (svc, mut rx) = stack(MirrorLimits::default(), stats.clone(), false);
    let resp = svc.oneshot(req("/all", Some("hello"))).await.unwrap();
    assert!(resp.body().is_upstream());
    let seen = drain(&mut rx).await;
    // Envoy: the shadow's Host gets `-shadow` appended (before the port); the main request
    // is unchanged; both carry the body.
    assert_eq!(
        seen,
        [
            ("main".into(), "svc:8080".into(), "hello".into()),
            ("shadow".into(), "svc-shadow:8080".into(), "hello".into()),
        ]
    );
    assert_eq!(stats.sent(), 1);
    assert_eq!(stats.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn several_mirrors_and_unmirrored_routes() {
    let stats = Arc::new(MirrorStats::default());
    let (svc, mut rx) = stack(MirrorLimits::default(), stats.clone(), false);
    svc.clone().oneshot(req("/two", None)).await.unwrap();
    svc.oneshot(req("/none", None)).await.unwrap();
    let hosts: Vec<String> = drain(&mut rx).await.into_iter().map(|s| s.0).collect();
    assert_eq!(hosts, ["a", "b", "main", "main"]);
    assert_eq!(stats.sent(), 2);
}

#[tokio::test(start_paused = true)]
async fn slow_mirror_never_delays_the_main_request() {
    let stats = Arc::new(MirrorStats::default());
    let limits = MirrorLimits {
        timeout: Duration::from_secs(5),
        ..MirrorLimits::default()
    };
    let (svc, mut rx) = stack(limits, stats.clone(), true);
    let t0 = tokio::time::Instant::now();
    svc.oneshot(req("/all", Some("x"))).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(drain(&mut rx).await.len(), 1, "only the main request");
    assert_eq!(stats.in_flight(), 1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!((stats.timed_out(), stats.in_flight()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn copies_in_flight_are_capped() {
    // Attacker: a flood of requests on a mirrored route with a hung mirror backend cannot
    // pile up copies: past the cap they are dropped and counted, the main requests go on.
    let stats = Arc::new(MirrorStats::default());
    let limits = MirrorLimits {
        max_in_flight: 3,
        ..MirrorLimits::default()
    };
    let (svc, mut rx) = stack(limits, stats.clone(), true);
    for _ in 0..10 {
        svc.clone().oneshot(req("/all", None)).await.unwrap();
    }
    assert_eq!(drain(&mut rx).await.len(), 10);
    assert_eq!(stats.in_flight(), 3);
    assert_eq!(stats.dropped_overflow(), 7);
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_cap_or_unknown_are_not_mirrored() {
    let stats = Arc::new(MirrorStats::default());
    let limits = MirrorLimits {
        max_body: 4,
        ..MirrorLimits::default()
    };
    let (svc, mut rx) = stack(limits, stats.clone(), false);
    svc.clone()
        .oneshot(req("/all", Some("too long")))
        .await
        .unwrap();
    // A body not kept for replay (the retry layer passed it through) is not mirrored either.
    let pass = Request::post("/all")
        .header("host", "svc")
        .body(ReplayBody::pass(Full::new(Bytes::from_static(b"ab"))))
        .unwrap();
    svc.oneshot(pass).await.unwrap();
    let seen = drain(&mut rx).await;
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.0 == "main"));
    assert_eq!(seen[1].2, "too long", "the main request keeps its body");
    assert_eq!((stats.dropped_body(), stats.sent()), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn retries_are_not_mirrored_again() {
    let stats = Arc::new(MirrorStats::default());
    let (svc, mut rx) = stack(MirrorLimits::default(), stats.clone(), false);
    let mut r = req("/all", None);
    r.extensions_mut().insert(Attempt {
        number: 2,
        tried: Vec::new(),
    });
    svc.oneshot(r).await.unwrap();
    assert_eq!(drain(&mut rx).await.len(), 1);
    assert_eq!(stats.sent(), 0);
}

#[tokio::test(start_paused = true)]
async fn percentage_holds_with_seeded_rolls() {
    let stats = Arc::new(MirrorStats::default());
    let (svc, mut rx) = stack(MirrorLimits::default(), stats.clone(), false);
    let seen = Arc::new(Mutex::new(0usize));
    for _ in 0..4000 {
        svc.clone().oneshot(req("/quarter", None)).await.unwrap();
        *seen.lock().unwrap() += drain(&mut rx).await.len();
    }
    let copies = stats.sent() as usize;
    assert!((900..1100).contains(&copies), "{copies} of 4000 at 25%");
    assert_eq!(*seen.lock().unwrap(), 4000 + copies);
}
