//! Proxies a few requests through the L7 stack (trace context, recording, JWT, authorization,
//! routing) to an in-memory upstream: `cargo run -p mesh-l7 --example proxy`. No network: the
//! upstream is a `service_fn` that answers with where the request went.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use mesh_authz::istio::AuthorizationPolicySpec;
use mesh_authz::jwt::{Authenticator, KeySet, KeySource};
use mesh_authz::{Connection, Policy};
use mesh_l7::RouteTable;
use mesh_l7::istio::VirtualServiceSpec;
use mesh_l7::layer::authz::Check;
use mesh_l7::layer::{
    AuthzLayer, AuthzSource, Body, CountedBody, Finished, JwtLayer, JwtSource, Lookup, RecordLayer,
    Recorder, RouteLayer, RouteSource, Scope, Target, TraceContextLayer, TraceIds, UpstreamRequest,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// Ids as the mesh makes them.
#[derive(Clone)]
struct Ids;

impl TraceIds for Ids {
    fn request_id(&self) -> HeaderValue {
        mesh_hbone::headers::new_request_id()
    }
    fn traceparent(&self) -> HeaderValue {
        mesh_hbone::headers::new_traceparent()
    }
    fn valid_traceparent(&self, v: &str) -> bool {
        mesh_hbone::headers::valid_traceparent(v)
    }
}

/// An access log on stderr.
#[derive(Clone)]
struct Log;

impl Recorder for Log {
    type Request = String;

    fn start<B>(&self, req: &Request<B>) -> String {
        let id = req.headers().get("x-request-id");
        format!("{} {} id={id:?}", req.method(), req.uri())
    }

    fn finish(&self, req: String, d: &Finished<'_>) {
        eprintln!(
            "access: {req} -> {} flags={} route={:?} out={}B in {:?}",
            d.status.as_u16(),
            d.meta.flags,
            d.meta.route,
            d.response_bytes,
            d.duration
        );
    }
}

/// The policies, routes and (no) JWT rules of the stream.
#[derive(Clone)]
struct Config {
    policy: Arc<Policy>,
    table: Arc<RouteTable>,
}

impl AuthzSource for Config {
    fn with_scope<R>(&self, f: impl FnOnce(Scope<'_>) -> R) -> R {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        f(Scope::Check(Check {
            normalization: Default::default(),
            deny: false,
            policies: &[&self.policy],
            conn: Connection {
                source_ip: ip,
                remote_ip: Some(ip),
                source_principal: Some("cluster.local/ns/shop/sa/web"),
                source_namespace: Some("shop"),
                destination_ip: ip,
                destination_port: 9080,
            },
        }))
    }
}

impl JwtSource for Config {
    fn authenticator(&self) -> Option<Arc<Authenticator>> {
        None
    }
    fn keys(&self, _src: &KeySource) -> Option<Arc<KeySet>> {
        None
    }
    fn refetch(&self, _src: KeySource) -> impl Future<Output = ()> + Send + 'static {
        std::future::ready(())
    }
}

impl RouteSource for Config {
    fn lookup(&self) -> Lookup {
        Lookup::Table {
            table: Some(self.table.clone()),
            port: 9080,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vs: VirtualServiceSpec = serde_json::from_str(
        r#"{"hosts": ["reviews.shop.svc"], "http": [
          {"name": "v2", "match": [{"uri": {"prefix": "/v2/"}}], "rewrite": {"uri": "/"},
           "route": [{"destination": {"host": "reviews-v2.shop.svc"}}]},
          {"name": "maintenance", "match": [{"uri": {"prefix": "/maintenance"}}],
           "directResponse": {"status": 503, "body": {"string": "down for maintenance\n"}}}
        ]}"#,
    )?;
    let table = Arc::new(RouteTable::compile(&vs).map_err(|e| format!("{e:?}"))?);
    let ap: AuthorizationPolicySpec = serde_json::from_str(
        r#"{"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}"#,
    )?;
    let policy = Arc::new(
        ap.to_policy("shop", "no-admin", "istio-system")
            .map_err(|e| format!("{e:?}"))?,
    );
    let config = Config { policy, table };
    // The upstream: where the proxy would open a connection, it answers itself.
    let upstream = service_fn(|u: UpstreamRequest<CountedBody<Full<Bytes>>>| async move {
        let to = match &u.target {
            Target::Picked(p) => p.destination().map_or("?", |d| d.host.as_str()).to_owned(),
            _ => "reviews.shop.svc".to_owned(),
        };
        let text = format!("{to} got {}\n", u.request.uri());
        Ok::<_, Infallible>(Response::new(Body::Upstream(Full::new(Bytes::from(text)))))
    });
    let stack = ServiceBuilder::new()
        .layer(TraceContextLayer::new(Ids))
        .layer(RecordLayer::new(Log))
        .layer(JwtLayer::new(config.clone()))
        .layer(AuthzLayer::new(config.clone()))
        .layer(RouteLayer::new(config))
        .service(upstream);
    for path in [
        "/v2/reviews/1",
        "/reviews/%2e%2e/admin",
        "/maintenance",
        "/reviews/2",
    ] {
        let req = Request::get(path)
            .header("host", "reviews.shop.svc:9080")
            .body(Full::new(Bytes::new()))?;
        let resp = stack.clone().oneshot(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        eprintln!(
            "{path}: {status} {}",
            String::from_utf8_lossy(&body).trim_end()
        );
    }
    Ok(())
}
