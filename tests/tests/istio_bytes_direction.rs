//! Byte directions as Istio's ztunnel reports them, so Istio's dashboards and Kiali agree:
//! `istio_tcp_received_bytes_total` counts the request bytes (client to server) and
//! `istio_tcp_sent_bytes_total` the response bytes on **both** reporters (Istio keeps the
//! server's view for the source reporter too: istio/istio#32399; istio/ztunnel
//! `src/copy.rs` counts downstream→upstream as `recv` on both sides), while the access log
//! "unflips" it (istio/ztunnel `src/proxy/metrics.rs`, `bytes_sent`/`bytes_recv`): each proxy
//! logs what it sent and received itself. An asymmetric exchange tells the directions apart.
//! The locality labels (`source_region`, `source_zone`, `destination_region`,
//! `destination_zone`) are Istio's ztunnel's too. In-process proxy cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;

const REQ: usize = 1234;
const RESP: usize = 56;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_keep_the_request_as_received_and_logs_unflip_it() {
    let net = Net { b: 222 };
    // Localities (WorkloadEntry `locality`: region/zone/subzone) for Istio's locality labels.
    let config = net
        .config()
        .replace(
            "serviceAccount: client,",
            "serviceAccount: client, locality: eu-west1/eu-west1-a/rack1,",
        )
        .replace(
            "serviceAccount: server,",
            "serviceAccount: server, locality: us-east1/us-east1-b,",
        );
    let mut mesh = InprocMesh::new(&config);
    let mut rx = sink_server(net.app(), Arc::new(random_bytes(RESP))).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;

    let mut s = connect_from(net.client(), net.vip()).await.unwrap();
    assert_eq!(exchange(&mut s, &random_bytes(REQ)).await.len(), RESP);
    assert_eq!(rx.recv().await.unwrap().received_len, REQ);

    for (node, reporter) in [(net.node_a(), "source"), (net.node_b(), "destination")] {
        // Istio's ztunnel labels both sides' region and zone (no subzone) on both reporters.
        let want = [
            ("reporter", reporter),
            ("source_workload", "client"),
            ("source_region", "eu-west1"),
            ("source_zone", "eu-west1-a"),
            ("destination_region", "us-east1"),
            ("destination_zone", "us-east1-b"),
        ];
        let closed = |t: &str| metric(t, "istio_tcp_connections_closed_total", &want) == 1.0;
        let text = scrape_until(SocketAddr::new(node, 15020), "a closed connection", closed).await;
        let received = metric(&text, "istio_tcp_received_bytes_total", &want);
        let sent = metric(&text, "istio_tcp_sent_bytes_total", &want);
        assert_eq!((received, sent), (REQ as f64, RESP as f64), "{reporter}");
    }
    // Source: it sent the request and received the response.
    mesh.expect_log("a", &format!(r#""bytes_sent":{REQ},"bytes_recv":{RESP}"#));
    // Destination: it sent the response and received the request.
    mesh.expect_log("b", &format!(r#""bytes_sent":{RESP},"bytes_recv":{REQ}"#));
}
