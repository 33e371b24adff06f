//! The Delta ADS client against the fake control plane (`mesh_xds::testing::FakeAds`): ACK,
//! NACK naming the bad resource while the rest applies, resume with
//! `initial_resource_versions`, removals, a black-holed control plane detected by keepalive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, Resource};
use envoy_types::pb::google::protobuf::Any;
use mesh_xds::testing::FakeAds;
use mesh_xds::{ADDRESS_TYPE, Client, Config, NodeInfo, Rejection, Typed, pb};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// This crate's tests listen on 127.170.0.0/16 only.
const LOOPBACK: &str = "127.170.0.1:0";

async fn fake() -> FakeAds {
    let ads = FakeAds::start(LOOPBACK.parse().unwrap()).await.unwrap();
    ads.require_bearer(Some("test-token"));
    ads
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

/// A plaintext channel with the test's short keepalive and connect limits.
fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_millis(200))
        .keep_alive_timeout(Duration::from_millis(300))
        .keep_alive_while_idle(true)
        .connect_lazy()
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
    c.connect_timeout = Duration::from_millis(500);
    c
}

/// The `i`-th request (from 0) the fake received.
async fn nth(ads: &FakeAds, i: usize) -> DeltaDiscoveryRequest {
    tokio::time::timeout(Duration::from_secs(5), ads.wait_requests(i + 1))
        .await
        .expect("a request in time")
        .swap_remove(i)
}

#[tokio::test]
async fn ack_nack_resume_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").unwrap();
    let ads = fake().await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let handler = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, move |upserts, removes| {
        let mut s = s.lock().unwrap();
        s.upserts.extend(upserts);
        s.removes.extend(removes);
        Vec::<Rejection>::new()
    });
    let client = Client::start(
        channel(ads.addr()),
        config(ads.addr(), &token),
        vec![Arc::new(handler)],
    );

    // Subscribe: node metadata as Istio expects, wildcard, nothing known yet; the bearer
    // token sent.
    let first = nth(&ads, 0).await;
    assert_eq!(first.type_url, ADDRESS_TYPE);
    let node = first.node.expect("node on the first request");
    assert_eq!(
        node.id,
        "ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local"
    );
    assert!(first.initial_resource_versions.is_empty());
    assert_eq!(
        ads.authorizations()[0].as_deref(),
        Some("Bearer test-token")
    );
    // The (empty) answer to the subscription is ACKed.
    let empty = nth(&ads, 1).await;
    assert!(!empty.response_nonce.is_empty());
    assert!(empty.error_detail.is_none());

    // One good workload and one that does not decode: NACK naming the bad one, the good one
    // applied.
    let nonce = ads.push(
        ADDRESS_TYPE,
        vec![
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
        Vec::new(),
    );
    let nack = nth(&ads, 2).await;
    assert_eq!(nack.response_nonce, nonce);
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
    let nonce = ads.push(
        ADDRESS_TYPE,
        vec![resource("ns/w2", "v1", workload("w2", [10, 0, 0, 8]))],
        Vec::new(),
    );
    let ack = nth(&ads, 3).await;
    assert_eq!(ack.response_nonce, nonce);
    assert!(ack.error_detail.is_none());

    // The control plane goes away: the client reconnects and resumes with the versions it
    // applied (not the rejected resource).
    ads.stop();
    ads.restart().await.unwrap();
    let resumed = nth(&ads, 4).await;
    assert!(resumed.response_nonce.is_empty(), "a subscription");
    let mut known: Vec<_> = resumed.initial_resource_versions.into_iter().collect();
    known.sort();
    assert_eq!(
        known,
        [
            ("ns/w1".to_owned(), "v1".to_owned()),
            ("ns/w2".to_owned(), "v1".to_owned())
        ]
    );
    let mut w = client.watch();
    tokio::time::timeout(Duration::from_secs(5), w.wait_for(|s| s.connects >= 2))
        .await
        .expect("second stream")
        .unwrap();
    // The rejected resource, never accepted, is sent again and refused again.
    let again = nth(&ads, 5).await;
    let detail = again.error_detail.expect("NACK").message;
    assert!(
        detail.contains("ns/bad") && !detail.contains("ns/w"),
        "{detail}"
    );

    // A removal reaches the handler.
    ads.remove(ADDRESS_TYPE, "ns/w1");
    assert!(nth(&ads, 6).await.error_detail.is_none());
    assert_eq!(seen.lock().unwrap().removes, ["ns/w1"]);
    client.stop();
}

/// A stream the control plane refuses (wrong token) is an error the status shows, with no
/// stream counted; a token file that cannot be read is one too.
#[tokio::test]
async fn refused_streams_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "wrong-token").unwrap();
    let ads = fake().await;
    let start = |token: &std::path::Path| {
        let handler = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, |_, _| Vec::new());
        Client::start(
            channel(ads.addr()),
            config(ads.addr(), token),
            vec![Arc::new(handler)],
        )
    };
    let client = start(&token);
    let mut w = client.watch();
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        w.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let e = s.last_error.unwrap();
    assert!(e.contains("bearer token required"), "{e}");
    assert_eq!(s.connects, 0);
    assert_eq!(
        ads.authorizations()[0].as_deref(),
        Some("Bearer wrong-token")
    );
    client.shutdown().await;

    let client = start(&dir.path().join("missing"));
    let mut w = client.watch();
    let e = tokio::time::timeout(
        Duration::from_secs(5),
        w.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .last_error
    .clone()
    .unwrap();
    assert!(e.contains("token file") && e.contains("missing"), "{e}");
    client.shutdown().await;
}

/// A control plane that ends its streams cleanly (as istiod does to rebalance) is resumed on
/// a new stream with what was applied; updates reach every connected client.
#[tokio::test]
async fn streams_ended_by_the_control_plane_resume() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token").unwrap();
    let ads = fake().await;
    ads.set(ADDRESS_TYPE, "ns/w1", workload("w1", [10, 0, 0, 7]).value);
    let start = || {
        let handler = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, |_, _| Vec::new());
        Client::start(
            channel(ads.addr()),
            config(ads.addr(), &token),
            vec![Arc::new(handler)],
        )
    };
    let (a, b) = (start(), start());
    // Each subscribes and ACKs the workload: 4 requests.
    ads.wait_requests(4).await;
    assert_eq!(ads.open_streams(), 2);
    ads.set(ADDRESS_TYPE, "ns/w2", workload("w2", [10, 0, 0, 8]).value);
    let acks = tokio::time::timeout(Duration::from_secs(5), ads.wait_requests(6))
        .await
        .unwrap();
    assert!(acks.iter().all(|r| r.error_detail.is_none()));
    ads.end_streams();
    // The two resumed subscriptions (ACKs of their answers may come in between).
    let resumes = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let subs: Vec<_> = ads.requests()[6..]
                .iter()
                .filter(|r| r.response_nonce.is_empty())
                .cloned()
                .collect();
            if subs.len() >= 2 {
                break subs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    for resumed in &resumes {
        let mut known: Vec<_> = resumed.initial_resource_versions.keys().cloned().collect();
        known.sort();
        assert_eq!(known, ["ns/w1", "ns/w2"]);
    }
    for c in [&a, &b] {
        let mut w = c.watch();
        tokio::time::timeout(Duration::from_secs(5), w.wait_for(|s| s.connects == 2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.status().nacks, 0);
    }
    a.stop();
    // Shut down and awaited: its stream is gone at once.
    b.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while ads.open_streams() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both streams closed");
}

/// A control plane that accepts connections and never answers is given up on (connect
/// timeout), and one that goes silent mid-stream is detected by keepalive pings.
#[tokio::test]
async fn black_holed_control_plane_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token").unwrap();
    // Accepts, reads, never writes.
    let hole = tokio::net::TcpListener::bind(LOOPBACK).await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let handler = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, |_, _| Vec::new());
    let client = Client::start(
        channel(hole_addr),
        config(hole_addr, &token),
        vec![Arc::new(handler)],
    );
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
    let ads = fake().await;
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = relay(ads.addr(), frozen.clone()).await;
    let handler = Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, |_, _| Vec::new());
    let client = Client::start(
        channel(relay),
        config(relay, &token),
        vec![Arc::new(handler)],
    );
    nth(&ads, 0).await;
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
    let l = tokio::net::TcpListener::bind(LOOPBACK).await.unwrap();
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
