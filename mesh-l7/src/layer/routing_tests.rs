#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use http_body_util::Empty;
use serde_json::json;
use tower::{ServiceExt, service_fn};

use super::*;
use crate::istio::VirtualServiceSpec;
use mesh_telemetry::metrics::ResponseFlags;

fn table(spec: serde_json::Value) -> Arc<RouteTable> {
    let vs: VirtualServiceSpec = serde_json::from_value(spec).unwrap();
    Arc::new(RouteTable::compile(&vs).unwrap())
}

fn reviews() -> Arc<RouteTable> {
    table(json!({
        "hosts": ["reviews.shop.svc"],
        "http": [
            {"name": "v2", "match": [{"uri": {"prefix": "/api"}}],
             "rewrite": {"uri": "/v2", "authority": "reviews-v2"},
             "headers": {"request": {"set": {"x-route": "v2"}}, "response": {"set": {"x-served": "v2"}}},
             "route": [{"destination": {"host": "reviews-v2.shop.svc", "port": {"number": 9080}}}]},
            {"name": "down", "match": [{"uri": {"exact": "/down"}}],
             "directResponse": {"status": 503, "body": {"string": "maintenance"}}},
            {"name": "moved", "match": [{"uri": {"exact": "/old"}}],
             "redirect": {"uri": "/new", "redirectCode": 308}},
            {"name": "default", "match": [{"uri": {"prefix": "/"}}],
             "route": [{"destination": {"host": "reviews.shop.svc"}}]}
        ]
    }))
}

#[derive(Clone)]
struct Source(Lookup);

impl RouteSource for Source {
    fn lookup(&self) -> Lookup {
        self.0.clone()
    }
}

type Up = Body<Empty<Bytes>>;

/// An upstream answering with where the request went: `x-target`, `x-path`, `x-host`.
fn upstream() -> impl Service<
    UpstreamRequest<()>,
    Response = Response<Up>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Up>, Infallible>>,
> + Clone {
    service_fn(|u: UpstreamRequest<()>| async move {
        let target = match &u.target {
            Target::Direct => "direct".to_owned(),
            Target::Addressed => "addressed".to_owned(),
            Target::Picked(p) => {
                let d = p.destination().unwrap();
                format!("{}:{:?}", d.host, d.port)
            }
        };
        let req = u.request;
        let mut resp = Response::new(Body::Upstream(Empty::new()));
        let h = resp.headers_mut();
        h.insert("x-target", target.parse().unwrap());
        h.insert(
            "x-path",
            req.uri()
                .path_and_query()
                .unwrap()
                .as_str()
                .parse()
                .unwrap(),
        );
        if let Some(v) = req.headers().get("host") {
            h.insert("x-host", v.clone());
        }
        if let Some(v) = req.headers().get("x-route") {
            h.insert("x-route-seen", v.clone());
        }
        Ok(resp)
    })
}

async fn call(lookup: Lookup, host: &str, uri: &str) -> Response<Up> {
    let req = Request::get(uri).header("host", host).body(()).unwrap();
    RouteLayer::new(Source(lookup))
        .layer(upstream())
        .oneshot(req)
        .await
        .unwrap()
}

fn by_table() -> Lookup {
    Lookup::Table {
        table: Some(reviews()),
        port: 9080,
    }
}

fn meta(r: &Response<Up>) -> &Meta {
    r.extensions().get::<Meta>().unwrap()
}

#[tokio::test]
async fn forwards_with_rewrites_and_header_operations() {
    let r = call(by_table(), "reviews", "/api/list?x=1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-target"], "reviews-v2.shop.svc:Some(9080)");
    assert_eq!(r.headers()["x-path"], "/v2/list?x=1");
    assert_eq!(r.headers()["x-host"], "reviews-v2");
    assert_eq!(r.headers()["x-route-seen"], "v2");
    assert_eq!(r.headers()["x-served"], "v2");
    assert_eq!(meta(&r).route.as_deref(), Some("v2"));
}

#[tokio::test]
async fn direct_responses_and_redirects_are_answered_here() {
    let r = call(by_table(), "reviews", "/down").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (meta(&r).flags, meta(&r).route.as_deref()),
        (ResponseFlags::DirectResponse, Some("down"))
    );
    assert!(r.headers().get("x-target").is_none());
    let r = call(by_table(), "reviews:9080", "/old").await;
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers()[header::LOCATION], "http://reviews:9080/new");
}

#[tokio::test]
async fn no_table_no_service_and_direct() {
    let r = call(
        Lookup::Table {
            table: None,
            port: 80,
        },
        "s",
        "/x",
    )
    .await;
    assert_eq!(r.headers()["x-target"], "addressed");
    assert!(r.extensions().get::<Meta>().is_none());
    let r = call(Lookup::Direct, "s", "/x").await;
    assert_eq!(r.headers()["x-target"], "direct");
    let r = call(Lookup::NoService, "s", "/x").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(meta(&r).flags, ResponseFlags::NoRoute);
}

/// Attacker: the client names another service in `Host`, in an absolute URI, or in a path
/// that looks like one; the request still only goes to a destination of the addressed
/// service's table, and the table's operations still apply.
#[tokio::test]
async fn the_client_cannot_pick_a_destination_outside_the_table() {
    for (host, uri) in [
        ("kube-apiserver.default.svc", "/api/secrets"),
        ("reviews", "http://admin.internal/api/x"),
        ("reviews", "//admin.internal/api"),
        ("admin.internal:443", "/x"),
    ] {
        let r = call(by_table(), host, uri).await;
        let target = r.headers()["x-target"].to_str().unwrap();
        assert!(
            target == "reviews-v2.shop.svc:Some(9080)" || target == "reviews.shop.svc:None",
            "{host} {uri}: {target}"
        );
    }
    // A route without a destination (weights all zero cannot compile) answers 503, never
    // the addressed service by accident.
    let r = call(Lookup::NoService, "reviews", "/api").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("x-target").is_none());
}
