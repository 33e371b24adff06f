//! The layers composed as a proxy composes them: each request recorded once with what the
//! inner layers noted, whichever layer answered.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use super::authz::Check;
use super::testing::FakeIds;
use super::*;
use crate::RouteTable;
use crate::istio::VirtualServiceSpec;
use mesh_telemetry::metrics::ResponseFlags;

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Recorder for Log {
    type Request = (String, String);

    fn start<B>(&self, req: &Request<B>) -> (String, String) {
        let id = req.headers()[trace::X_REQUEST_ID]
            .to_str()
            .unwrap()
            .to_owned();
        (req.uri().path().to_owned(), id)
    }

    fn finish(&self, (path, id): (String, String), d: &Finished<'_>) {
        let m = d.meta;
        self.0.lock().unwrap().push(format!(
            "{path} {} {} route={} upstream={:?} id={}",
            d.status.as_u16(),
            m.flags,
            m.route.as_deref().unwrap_or("-"),
            m.upstream,
            id == FakeIds::REQUEST_ID
        ));
    }
}

/// Refuses requests without `Host`.
#[derive(Clone)]
struct NeedsHost;

impl Guard for NeedsHost {
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Refusal> {
        match req.headers().contains_key(http::header::HOST) {
            true => Ok(()),
            false => Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                body: "missing Host\n",
                flags: ResponseFlags::DownstreamProtocolError,
            }),
        }
    }
}

#[derive(Clone)]
struct Config {
    policy: Arc<mesh_authz::Policy>,
    table: Arc<RouteTable>,
}

impl AuthzSource for Config {
    fn with_scope<R>(&self, f: impl FnOnce(Scope<'_>) -> R) -> R {
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        f(Scope::Check(Check {
            normalization: Default::default(),
            deny: false,
            policies: &[&self.policy],
            conn: mesh_authz::Connection {
                source_ip: ip,
                remote_ip: Some(ip),
                source_principal: None,
                source_namespace: None,
                destination_ip: ip,
                destination_port: 80,
            },
        }))
    }
}

impl RouteSource for Config {
    fn lookup(&self) -> Lookup {
        Lookup::Table {
            table: Some(self.table.clone()),
            port: 80,
        }
    }
}

fn config() -> Config {
    let vs: VirtualServiceSpec = serde_json::from_value(json!({
        "hosts": ["web"],
        "http": [{"name": "dr", "match": [{"uri": {"exact": "/dr"}}],
                  "directResponse": {"status": 204}}]
    }))
    .unwrap();
    let ap: mesh_authz::istio::AuthorizationPolicySpec = serde_json::from_value(
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}),
    )
    .unwrap();
    Config {
        policy: Arc::new(ap.to_policy("ns", "deny", "istio-system").unwrap()),
        table: Arc::new(RouteTable::compile(&vs).unwrap()),
    }
}

#[tokio::test]
async fn every_request_is_recorded_once_whichever_layer_answers() {
    let log = Log::default();
    let cfg = config();
    let upstream = service_fn(|u: UpstreamRequest<CountedBody<Full<Bytes>>>| async move {
        let body = u.request.into_body().collect().await.unwrap().to_bytes();
        let mut resp = Response::new(Body::Upstream(Full::new(body)));
        Meta::of(&mut resp).upstream = Some("10.0.0.9:8080".parse().unwrap());
        Ok::<_, Infallible>(resp)
    });
    let mut stack = ServiceBuilder::new()
        .layer(TraceContextLayer::new(FakeIds))
        .layer(RecordLayer::new(log.clone()))
        .layer(GuardLayer::new(NeedsHost))
        .layer(AuthzLayer::new(cfg.clone()))
        .layer(RouteLayer::new(cfg))
        .service(upstream);
    for (path, host) in [
        ("/up", true),
        ("/admin", true),
        ("/dr", true),
        ("/up", false),
    ] {
        let mut req = Request::post(path)
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        if host {
            req.headers_mut().insert("host", "web".parse().unwrap());
        }
        let resp = stack.ready().await.unwrap().call(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(
        *log.0.lock().unwrap(),
        [
            "/up 200 - route=- upstream=Some(10.0.0.9:8080) id=true",
            "/admin 403 RBAC route=- upstream=None id=true",
            "/dr 204 DR route=dr upstream=None id=true",
            "/up 400 DPE route=- upstream=None id=true",
        ]
    );
}
