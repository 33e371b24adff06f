//! The Delta ADS client against a scripted fake control plane (a tonic ADS server): ACK,
//! NACK naming the bad resource while the rest applies, resume with
//! `initial_resource_versions`, removals, a black-holed control plane detected by keepalive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_xds::{ADDRESS_TYPE, Client, Config, NodeInfo, Rejection, Typed, pb};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type Out = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// The fake control plane: every request it receives goes to `requests`; each new stream's
/// response sender goes to `streams`, so the test decides what to send.
#[derive(Clone)]
struct Fake {
    requests: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    streams: mpsc::UnboundedSender<Out>,
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Fake {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world is not served"))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer test-token",
            "bearer token sent"
        );
        let mut incoming = req.into_inner();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                let _ = requests.send(r);
            }
        });
        let (tx, rx) = mpsc::channel(16);
        self.streams.send(tx).unwrap();
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn serve(fake: Fake) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = AggregatedDiscoveryServiceServer::new(fake);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper_util::service::TowerToHyperService::new(svc),
                        )
                        .await;
            });
        }
    });
    addr
}

fn workload(name: &str, ip: [u8; 4]) -> Any {
    let a = pb::workload::Address {
        r#type: Some(pb::workload::address::Type::Workload(
            pb::workload::Workload {
                uid: format!("cluster/ns/{name}"),
                name: name.into(),
                namespace: "ns".into(),
                addresses: vec![ip.to_vec()],
                service_account: "sa".into(),
                ..Default::default()
            },
        )),
    };
    Any {
        type_url: ADDRESS_TYPE.into(),
        value: a.encode_to_vec(),
    }
}

fn resource(name: &str, version: &str, any: Any) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(any),
        ..Default::default()
    }
}

/// What the handler saw.
#[derive(Default)]
struct Seen {
    upserts: Vec<(String, pb::workload::Address)>,
    removes: Vec<String>,
}

fn config(addr: SocketAddr, token: &std::path::Path) -> Config {
    let mut c = Config::new(
        format!("http://{addr}"),
        NodeInfo::ztunnel(
            "10.0.0.1",
            "ztunnel-x",
            "istio-system",
            "node-1",
            "Kubernetes",
        ),
    );
    c.token_file = Some(token.to_owned());
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(200);
    c.keepalive_interval = Duration::from_millis(200);
    c.keepalive_timeout = Duration::from_millis(300);
    c.connect_timeout = Duration::from_millis(500);
    c
}

async fn next(rx: &mut mpsc::UnboundedReceiver<DeltaDiscoveryRequest>) -> DeltaDiscoveryRequest {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a request in time")
        .unwrap()
}

#[tokio::test]
async fn ack_nack_resume_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").unwrap();
    let (req_tx, mut requests) = mpsc::unbounded_channel();
    let (stream_tx, mut streams) = mpsc::unbounded_channel();
    let addr = serve(Fake {
        requests: req_tx,
        streams: stream_tx,
    })
    .await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let handler = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, move |upserts, removes| {
        let mut s = s.lock().unwrap();
        s.upserts.extend(upserts);
        s.removes.extend(removes);
        Vec::<Rejection>::new()
    });
    let client = Client::start(config(addr, &token), vec![Arc::new(handler)]);

    // Subscribe: node metadata as Istio expects, wildcard, nothing known yet.
    let first = next(&mut requests).await;
    assert_eq!(first.type_url, ADDRESS_TYPE);
    let node = first.node.expect("node on the first request");
    assert_eq!(
        node.id,
        "ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local"
    );
    assert!(first.initial_resource_versions.is_empty());
    let out = streams.recv().await.unwrap();

    // One good workload and one that does not decode: NACK naming the bad one, the good one
    // applied.
    out.send(Ok(DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE.into(),
        nonce: "n1".into(),
        resources: vec![
            resource("ns/w1", "v1", workload("w1", [10, 0, 0, 7])),
            resource(
                "ns/bad",
                "v1",
                Any {
                    type_url: ADDRESS_TYPE.into(),
                    value: vec![0xff, 0xff, 0xff],
                },
            ),
        ],
        ..Default::default()
    }))
    .await
    .unwrap();
    let nack = next(&mut requests).await;
    assert_eq!(nack.response_nonce, "n1");
    let detail = nack.error_detail.expect("NACK").message;
    assert!(
        detail.contains("ns/bad") && !detail.contains("ns/w1"),
        "{detail}"
    );
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.upserts.len(), 1);
        assert_eq!(s.upserts[0].0, "ns/w1");
    }
    assert_eq!(client.status().nacks, 1);

    // An update that is fine: ACK (no error detail).
    out.send(Ok(DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE.into(),
        nonce: "n2".into(),
        resources: vec![resource("ns/w2", "v1", workload("w2", [10, 0, 0, 8]))],
        ..Default::default()
    }))
    .await
    .unwrap();
    let ack = next(&mut requests).await;
    assert_eq!(ack.response_nonce, "n2");
    assert!(ack.error_detail.is_none());

    // The control plane goes away: the client reconnects and resumes with the versions it
    // applied (not the rejected resource).
    drop(out);
    let resumed = next(&mut requests).await;
    let mut known: Vec<_> = resumed.initial_resource_versions.into_iter().collect();
    known.sort();
    assert_eq!(
        known,
        [
            ("ns/w1".to_owned(), "v1".to_owned()),
            ("ns/w2".to_owned(), "v1".to_owned())
        ]
    );
    let out = streams.recv().await.unwrap();
    let mut w = client.watch();
    tokio::time::timeout(Duration::from_secs(5), w.wait_for(|s| s.connects >= 2))
        .await
        .expect("second stream")
        .unwrap();

    // A removal reaches the handler.
    out.send(Ok(DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE.into(),
        nonce: "n3".into(),
        removed_resources: vec!["ns/w1".into()],
        ..Default::default()
    }))
    .await
    .unwrap();
    assert!(next(&mut requests).await.error_detail.is_none());
    assert_eq!(seen.lock().unwrap().removes, ["ns/w1"]);
    client.stop();
}

/// A control plane that accepts connections and never answers is given up on (connect
/// timeout), and one that goes silent mid-stream is detected by keepalive pings.
#[tokio::test]
async fn black_holed_control_plane_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token").unwrap();
    // Accepts, reads, never writes.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let handler = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, |_, _| Vec::new());
    let client = Client::start(config(hole_addr, &token), vec![Arc::new(handler)]);
    let mut w = client.watch();
    tokio::time::timeout(
        Duration::from_secs(5),
        w.wait_for(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no answer"))
        }),
    )
    .await
    .expect("connect timeout reported")
    .unwrap();
    assert_eq!(client.status().connects, 0);
    client.stop();

    // A real control plane behind a relay that can be frozen.
    let (req_tx, mut requests) = mpsc::unbounded_channel();
    let (stream_tx, mut streams) = mpsc::unbounded_channel();
    let upstream = serve(Fake {
        requests: req_tx,
        streams: stream_tx,
    })
    .await;
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = relay(upstream, frozen.clone()).await;
    let handler = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, |_, _| Vec::new());
    let client = Client::start(config(relay, &token), vec![Arc::new(handler)]);
    next(&mut requests).await;
    let _out = streams.recv().await.unwrap();
    client.wait_connected().await;
    // Freeze: bytes are swallowed both ways, no FIN, no RST.
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut w = client.watch();
    tokio::time::timeout(Duration::from_secs(5), w.wait_for(|s| !s.connected))
        .await
        .expect("silence detected by keepalive")
        .unwrap();
    // Thawed: a new stream comes up.
    frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), w.wait_for(|s| s.connected))
        .await
        .expect("reconnected")
        .unwrap();
    client.stop();
}

/// A TCP relay to `to` that, while `frozen`, reads and discards everything.
async fn relay(to: SocketAddr, frozen: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((down, _)) = l.accept().await {
            let Ok(up) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let (mut dr, mut dw) = down.into_split();
            let (mut ur, mut uw) = up.into_split();
            let f1 = frozen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = dr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !f1.load(std::sync::atomic::Ordering::SeqCst)
                        && uw.write_all(&buf[..n]).await.is_err()
                    {
                        break;
                    }
                }
            });
            let f2 = frozen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = ur.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !f2.load(std::sync::atomic::Ordering::SeqCst)
                        && dw.write_all(&buf[..n]).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}
