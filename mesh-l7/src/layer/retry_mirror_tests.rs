//! Mirrored bodies on routes that do not retry (finding: the retry layer passed their body
//! through unkept, so the mirror could not copy it and dropped the copy's body). Istio's
//! `mirror` sends the request, body included, to the mirror whatever the route's retries
//! (istio.io VirtualService `HTTPRoute.mirror`; Envoy's `request_mirror_policies` shadow the
//! whole request).
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::RouteTable;
use crate::istio::VirtualServiceSpec;
use crate::layer::{Dice, Lookup, MirrorLayer, MirrorLimits, MirrorStats, RouteLayer, RouteSource};

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
        Some(Arc::new(RetryPolicy::istio_default()))
    }

    fn budget(&self, _target: &Target) -> Option<(RetryBudgetPolicy, Arc<BudgetCounters>)> {
        None
    }
}

#[derive(Clone)]
struct Always;

impl Dice for Always {
    fn roll(&self) -> u32 {
        0
    }
}

/// Posts `body` through `Route → Retry → Mirror` on a route with `retries` and a mirror;
/// gives what each backend host received, sorted.
async fn post(retries: serde_json::Value, body: &'static str) -> Vec<(String, String)> {
    let vs: VirtualServiceSpec = serde_json::from_value(json!({"hosts": ["svc"], "http": [{
        "mirror": {"host": "shadow"}, "retries": retries,
        "route": [{"destination": {"host": "main"}}]}]}))
    .unwrap();
    let src = Src(Arc::new(RouteTable::compile(&vs).unwrap()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sn = seen.clone();
    let up = service_fn(move |u: UpstreamRequest<ReplayBody<Full<Bytes>>>| {
        let sn = sn.clone();
        async move {
            let Target::Picked(p) = &u.target else {
                panic!("not routed")
            };
            let host = p.destination().unwrap().host.clone();
            let b = u.request.into_body().collect().await;
            let b = b.map_or_else(
                |e| format!("error: {e}"),
                |b| String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            );
            sn.lock().unwrap().push((host, b));
            Ok::<_, Infallible>(Response::new(Body::Upstream(())))
        }
    });
    let stats = Arc::new(MirrorStats::default());
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(src.clone()))
        .layer(RetryLayer::new(src, 1024))
        .layer(MirrorLayer::new(
            Always,
            MirrorLimits::default(),
            stats.clone(),
        ))
        .service(up);
    let req = Request::post("/")
        .header("host", "svc")
        .header("content-length", body.len())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    stack.oneshot(req).await.unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(stats.dropped_body(), 0);
    let mut v = seen.lock().unwrap().clone();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn a_post_body_reaches_the_mirror_on_a_route_without_retries() {
    let want = [
        ("main".to_owned(), "hello".to_owned()),
        ("shadow".to_owned(), "hello".to_owned()),
    ];
    assert_eq!(post(json!({"attempts": 0}), "hello").await, want);
    // And with retries, as before.
    assert_eq!(
        post(json!({"attempts": 2, "retryOn": "5xx"}), "hello").await,
        want
    );
}
