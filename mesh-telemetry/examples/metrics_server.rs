//! Serves Istio TCP metrics and process metrics on 127.0.0.1:15020 and records a fake
//! connection every second. `curl 127.0.0.1:15020/metrics` to see them.

use std::sync::Arc;
use std::time::Duration;

use mesh_telemetry::metrics::*;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut registry = Registry::default();
    let tcp = TcpMetrics::new(&mut registry, DEFAULT_MAX_SERIES);
    registry.register_collector(Box::new(mesh_telemetry::process::ProcessCollector));
    let router = mesh_telemetry::metrics_router(Arc::new(registry));
    let addr = mesh_telemetry::http::bind_and_serve(
        "127.0.0.1:15020".parse().map_err(std::io::Error::other)?,
        router,
        CancellationToken::new(),
    )
    .await?;
    eprintln!("metrics on http://{addr}/metrics");
    let labels = ConnectionLabels::tcp(
        Reporter::Source,
        &PeerLabels::unknown(),
        &PeerLabels::unknown(),
        &ServiceLabels::unknown(),
        SecurityPolicy::MutualTls,
        ResponseFlags::None,
    );
    for _ in 0..3600 {
        let c = tcp.open(&labels);
        c.request_bytes(100);
        c.response_bytes(200);
        drop(c);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
