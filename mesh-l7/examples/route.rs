//! Compiles a VirtualService and routes a few requests: `cargo run -p mesh-l7 --example route`.

use mesh_l7::{Action, RequestFacts, RouteTable, istio::VirtualServiceSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vs: VirtualServiceSpec = serde_json::from_str(
        r#"{
        "hosts": ["reviews.shop.svc"],
        "http": [
          {"name": "testers", "match": [{"headers": {"x-user": {"exact": "tester"}}}],
           "route": [{"destination": {"host": "reviews-v2.shop.svc"}}]},
          {"name": "maintenance", "match": [{"uri": {"prefix": "/admin"}}],
           "directResponse": {"status": 503, "body": {"string": "down for maintenance"}}},
          {"name": "split", "rewrite": {"uri": "/"},
           "match": [{"uri": {"prefix": "/reviews/"}}],
           "route": [{"destination": {"host": "reviews-v1.shop.svc"}, "weight": 80},
                     {"destination": {"host": "reviews-v2.shop.svc"}, "weight": 20}]}
        ]}"#,
    )?;
    let table = RouteTable::compile(&vs).map_err(|e| format!("{e:?}"))?;
    let mut headers = http::HeaderMap::new();
    for (i, path) in ["/reviews/1", "/admin/x", "/reviews/2"].iter().enumerate() {
        if i == 2 {
            headers.insert("x-user", "tester".parse()?);
        }
        let req = RequestFacts {
            method: "GET",
            path,
            authority: "reviews.shop.svc",
            port: 80,
            headers: &headers,
        };
        let Some(route) = table.select(&req) else {
            eprintln!("{path}: no route");
            continue;
        };
        match &route.action {
            Action::Forward { .. } => {
                let dest = route.pick(7).map(|d| d.host.clone()).unwrap_or_default();
                let new_path = route
                    .rewrite_path(path)
                    .unwrap_or_else(|| (*path).to_owned());
                eprintln!("{path}: route {} -> {dest} {new_path}", route.name);
            }
            Action::DirectResponse { status, body } => {
                eprintln!("{path}: route {} answers {status} {body:?}", route.name)
            }
            Action::Redirect(r) => eprintln!("{path}: redirect {}", r.status),
        }
    }
    Ok(())
}
