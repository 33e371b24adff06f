#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Pool behaviour against an in-process HBONE server: stream cap per connection, idle close,
//! exact identity verification.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{
    ConnectRequest, Error, H2Settings, Pool, PoolConfig, accept_tls, serve_connection,
};
use mesh_identity::{CertStore, LocalCa, SpiffeId, TrustBundle, TrustDomain, server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    bundle: TrustBundle,
    client: Arc<CertStore>,
    server_id: SpiffeId,
    hbone: SocketAddr,
    echo: SocketAddr,
    cancel: CancellationToken,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
    let bundle = ca.trust_bundle().unwrap();
    let td: TrustDomain = "cluster.local".parse().unwrap();
    let server_id = SpiffeId::new(&td, "ns", "server").unwrap();
    let client = CertStore::fixed(
        ca.issue(&SpiffeId::new(&td, "ns", "client").unwrap())
            .unwrap(),
    );
    let server_certs = CertStore::fixed(ca.issue(&server_id).unwrap());
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let tls = server_config(server_certs, &bundle, vec![td]).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone = l.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (tls, cancel) = (tls.clone(), c2.clone());
            tokio::spawn(async move {
                let Ok((s, info)) = accept_tls(tcp, tls, Duration::from_secs(5)).await else {
                    return;
                };
                let _ =
                    serve_connection(s, info, &H2Settings::default(), cancel, |req| async move {
                        let Ok(mut app) = TcpStream::connect(req.authority).await else {
                            return req.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
                        };
                        if let Ok(t) = req.accept() {
                            let (mut r, mut w) = app.split();
                            let _ = mesh_hbone::copy_bidirectional(&mut r, &mut w, t, &()).await;
                        }
                    })
                    .await;
            });
        }
    });
    Fixture {
        _dir: dir,
        bundle,
        client,
        server_id,
        hbone,
        echo: echo_addr,
        cancel,
    }
}

fn request(f: &Fixture, dst: &SpiffeId, authority: SocketAddr) -> ConnectRequest {
    ConnectRequest {
        source: f.client.clone(),
        destination_identity: dst.clone(),
        hbone_addr: f.hbone,
        authority,
        headers: ConnectHeaders::default().to_header_map(),
        socket_source: None,
    }
}

#[tokio::test]
async fn caps_streams_per_connection_and_closes_idle() {
    let f = fixture().await;
    let pool = Pool::new(
        PoolConfig {
            idle_timeout: Duration::from_millis(200),
            ..Default::default()
        },
        f.bundle.clone(),
    );
    let mut tunnels = Vec::new();
    let opens: Vec<_> = (0..101)
        .map(|_| {
            let (pool, req) = (pool.clone(), request(&f, &f.server_id, f.echo));
            tokio::spawn(async move { pool.connect(req).await })
        })
        .collect();
    for o in opens {
        tunnels.push(o.await.unwrap().unwrap());
    }
    assert_eq!(
        pool.connection_count(),
        2,
        "101 tunnels need exactly 2 connections"
    );
    for (i, t) in tunnels.iter_mut().enumerate() {
        let msg = format!("tunnel {i}");
        t.write_all(msg.as_bytes()).await.unwrap();
        t.shutdown().await.unwrap();
        let mut back = String::new();
        t.read_to_string(&mut back).await.unwrap();
        assert_eq!(back, msg);
        let e = t.write_all(b"late").await.unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write after shutdown fails fast"
        );
    }
    drop(tunnels);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pool.connection_count(), 0, "idle connections closed");
    pool.shutdown().await;
    f.cancel.cancel();
}

#[tokio::test]
async fn refuses_server_with_other_identity_and_reports_status() {
    let f = fixture().await;
    let pool = Pool::new(PoolConfig::default(), f.bundle.clone());
    let other: SpiffeId = "spiffe://cluster.local/ns/ns/sa/someone-else"
        .parse()
        .unwrap();
    let err = pool.connect(request(&f, &other, f.echo)).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(err.to_string().contains("not the expected"), "{err}");
    assert_eq!(pool.connection_count(), 0);
    // Nothing listens on port 1: the server answers 503.
    let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let err = pool
        .connect(request(&f, &f.server_id, closed))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Status { status, .. } if status == http::StatusCode::SERVICE_UNAVAILABLE),
        "{err}"
    );
    pool.shutdown().await;
    f.cancel.cancel();
}
