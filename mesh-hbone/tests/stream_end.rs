#![allow(clippy::unwrap_used, clippy::expect_used)]

//! How a tunnel ends, against a scripted raw HTTP/2 peer: a reset with `NO_ERROR` or `CANCEL`
//! after the data is a clean end (every byte delivered, then EOF); any other reset is an
//! error; our own failures, and a tunnel dropped before its end, reset with `CONNECT_ERROR`
//! (never `CANCEL`, a clean end to Istio); a clean end resets nothing.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::Request;
use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{ConnectRequest, H2Stream, Pool, PoolConfig};
use mesh_identity::{CertStore, LocalCa, SpiffeId, TrustDomain, server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Script = Arc<
    dyn Fn(
            RecvStream,
            SendResponse<Bytes>,
            mpsc::UnboundedSender<String>,
        ) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A TLS HTTP/2 server that answers each CONNECT with `script`, which reports what it saw on
/// the returned channel; and a pool to reach it.
async fn peer(script: Script) -> (Pool, ConnectRequest, mpsc::UnboundedReceiver<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
    let bundle = ca.trust_bundle().unwrap();
    let td: TrustDomain = "cluster.local".parse().unwrap();
    let server_id = SpiffeId::new(&td, "ns", "server").unwrap();
    let client = CertStore::fixed(
        ca.issue(&SpiffeId::new(&td, "ns", "client").unwrap())
            .unwrap(),
    );
    let tls = server_config(
        CertStore::fixed(ca.issue(&server_id).unwrap()),
        &bundle,
        vec![td],
    )
    .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _dir = dir;
        while let Ok((tcp, _)) = l.accept().await {
            let (tls, script, tx) = (tls.clone(), script.clone(), tx.clone());
            tokio::spawn(async move {
                let s = tokio_rustls::TlsAcceptor::from(tls)
                    .accept(tcp)
                    .await
                    .unwrap();
                let mut conn = h2::server::handshake(s).await.unwrap();
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let req: Request<RecvStream> = req;
                    tokio::spawn(script(req.into_body(), respond, tx.clone()));
                }
            });
        }
    });
    let req = ConnectRequest {
        source: client,
        destination_identity: server_id,
        hbone_addr: addr,
        authority: "127.0.0.1:9".parse::<SocketAddr>().unwrap(),
        headers: ConnectHeaders::default().to_header_map(),
        socket_source: None,
    };
    (Pool::new(PoolConfig::default(), bundle), req, rx)
}

/// Answers 200 and hands the stream to the rest of the script.
fn ok(respond: &mut SendResponse<Bytes>) -> h2::SendStream<Bytes> {
    let resp = http::Response::builder().status(200).body(()).unwrap();
    respond.send_response(resp, false).unwrap()
}

/// A connected TCP pair: (the proxy's plain side, its peer).
async fn plain_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    (l.accept().await.unwrap().0, c)
}

/// How the tunnel's peer ended its request body: `end` or the reset's reason.
async fn body_end(mut body: RecvStream) -> String {
    loop {
        match body.data().await {
            Some(Ok(b)) => {
                let _ = body.flow_control().release_capacity(b.len());
            }
            Some(Err(e)) => return format!("{:?}", e.reason()),
            None => return "end".into(),
        }
    }
}

/// Runs the copy between a tunnel to a `script` peer and a plain pair; returns the copy's
/// result, what the plain peer read (or its error) and what the script reported.
async fn run(
    script: Script,
    plain_peer_sends_eof: bool,
) -> (
    std::io::Result<u64>,
    Result<Vec<u8>, std::io::ErrorKind>,
    Vec<String>,
) {
    let (pool, req, mut rx) = peer(script).await;
    let tunnel = pool.connect(req).await.unwrap();
    let (mut proxy_side, mut app) = plain_pair().await;
    if plain_peer_sends_eof {
        app.shutdown().await.unwrap();
    }
    let copy = tokio::spawn(async move {
        let (mut r, mut w) = proxy_side.split();
        mesh_hbone::copy_bidirectional(&mut r, &mut w, tunnel, &())
            .await
            .map(|s| s.tunnel_to_plain)
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut got))
        .await
        .expect("the plain side ends");
    let result = copy.await.unwrap();
    let mut reports = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        reports.push(r);
    }
    (result, read.map(|_| got).map_err(|e| e.kind()), reports)
}

fn script<F, Fut>(f: F) -> Script
where
    F: Fn(RecvStream, SendResponse<Bytes>, mpsc::UnboundedSender<String>) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |b, r, tx| Box::pin(f(b, r, tx)))
}

const BODY: &[u8] = &[7u8; 100_000];

#[tokio::test]
async fn no_error_reset_after_the_data_is_a_clean_end() {
    let s = script(|body, mut respond, tx| async move {
        let mut send = ok(&mut respond);
        send.send_data(Bytes::from_static(BODY), false).unwrap();
        // Flushed before the reset (an explicit reset would discard queued data).
        tokio::time::sleep(Duration::from_millis(100)).await;
        send.send_reset(Reason::NO_ERROR);
        drop(body);
        let _ = tx.send("reset".into());
    });
    let (result, read, _) = run(s, false).await;
    assert_eq!(result.unwrap(), BODY.len() as u64);
    assert_eq!(read.unwrap(), BODY, "every byte, then a clean EOF");
}

#[tokio::test]
async fn cancel_after_end_stream_is_a_clean_end() {
    let s = script(|body, mut respond, _tx| async move {
        let mut send = ok(&mut respond);
        send.send_data(Bytes::from_static(BODY), true).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        send.send_reset(Reason::CANCEL);
        drop(body);
    });
    let (result, read, _) = run(s, false).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(read.unwrap(), BODY);
}

#[tokio::test]
async fn an_error_reset_is_an_error() {
    let s = script(|_body, mut respond, _tx| async move {
        let mut send = ok(&mut respond);
        send.send_data(Bytes::from_static(&BODY[..1000]), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        send.send_reset(Reason::CONNECT_ERROR);
    });
    let (result, _, _) = run(s, false).await;
    // The reset is seen either on the send side (`tunnel reset by peer: CONNECT_ERROR`) or on
    // the receive side (h2's text for CONNECT_ERROR), whichever the copy polls first.
    let e = result.unwrap_err().to_string();
    assert!(
        e.contains("CONNECT_ERROR") || e.contains("CONNECT request was reset"),
        "{e}"
    );
}

#[tokio::test]
async fn a_failed_plain_side_resets_the_tunnel_with_connect_error() {
    let (pool, req, mut rx) = peer(script(|body, mut respond, tx| async move {
        let _send = ok(&mut respond);
        let _ = tx.send(body_end(body).await);
    }))
    .await;
    let tunnel = pool.connect(req).await.unwrap();
    let (mut proxy_side, app) = plain_pair().await;
    // The plain peer aborts: the proxy's read fails with a reset.
    app.set_zero_linger().unwrap();
    drop(app);
    let (mut r, mut w) = proxy_side.split();
    let result = mesh_hbone::copy_bidirectional(&mut r, &mut w, tunnel, &()).await;
    assert!(result.is_err(), "{result:?}");
    let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, "Some(CONNECT_ERROR)");
}

#[tokio::test]
async fn a_clean_copy_resets_nothing() {
    let s = script(|body, mut respond, tx| async move {
        let mut send = ok(&mut respond);
        send.send_data(Bytes::from_static(b"bye"), true).unwrap();
        let _ = tx.send(body_end(body).await);
        // No reset follows the clean end.
        let reset = tokio::time::timeout(
            Duration::from_millis(200),
            std::future::poll_fn(|cx| send.poll_reset(cx)),
        )
        .await;
        let _ = tx.send(format!("{:?}", reset.ok().map(|r| r.ok())));
    });
    let (result, read, reports) = run(s, true).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(read.unwrap(), b"bye");
    assert_eq!(
        reports,
        ["end", "None"],
        "END_STREAM, and no reset after it"
    );
}

#[tokio::test]
async fn a_dropped_tunnel_resets_unless_it_was_shut_down() {
    for shut_down in [false, true] {
        let (pool, req, mut rx) = peer(script(|body, mut respond, tx| async move {
            let mut send = ok(&mut respond);
            let _ = tx.send(body_end(body).await);
            let _ = send.send_data(Bytes::new(), true);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }))
        .await;
        let mut tunnel: H2Stream = pool.connect(req).await.unwrap();
        tunnel.write_all(b"partial").await.unwrap();
        if shut_down {
            tunnel.shutdown().await.unwrap();
            // Dropped once the peer ended too: a client-side stream dropped while its peer
            // still sends is reset by h2 (CANCEL), discarding what is still queued.
            let mut rest = Vec::new();
            tunnel.read_to_end(&mut rest).await.unwrap();
        }
        drop(tunnel);
        let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let want = if shut_down {
            "end"
        } else {
            "Some(CONNECT_ERROR)"
        };
        assert_eq!(seen, want, "shut down: {shut_down}");
    }
}
