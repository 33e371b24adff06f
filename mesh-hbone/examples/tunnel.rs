//! An HBONE client and server in one process, without the mesh data plane.
//!
//! A local CA issues two identities; the server accepts CONNECTs from `client` and forwards
//! each to a TCP echo server; the client opens a tunnel, sends a line and reads it back.
//!
//! Run: `cargo run -p mesh-hbone --example tunnel`

use std::time::Duration;

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{ConnectRequest, H2Settings, Pool, PoolConfig, accept_tls, serve_connection};
use mesh_identity::{CertStore, LocalCa, SpiffeId, TrustDomain, server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, _) = LocalCa::load_or_create(dir.path())?;
    let bundle = ca.trust_bundle()?;
    let td: TrustDomain = "cluster.local".parse()?;
    let server_id = SpiffeId::new(&td, "demo", "echo")?;
    let client_id = SpiffeId::new(&td, "demo", "client")?;
    let server_certs = CertStore::fixed(ca.issue(&server_id)?);
    let client_certs = CertStore::fixed(ca.issue(&client_id)?);

    // A plain TCP echo server: the "application".
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    // The HBONE server.
    let tls = server_config(server_certs, &bundle, vec![td.clone()])?;
    let hbone = TcpListener::bind("127.0.0.1:0").await?;
    let hbone_addr = hbone.local_addr()?;
    let cancel = CancellationToken::new();
    let server_cancel = cancel.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = hbone.accept().await {
            let tls = tls.clone();
            let cancel = server_cancel.clone();
            tokio::spawn(async move {
                let (stream, info) = match accept_tls(tcp, tls, Duration::from_secs(5)).await {
                    Ok(x) => x,
                    Err(e) => return eprintln!("refused: {e}"),
                };
                eprintln!("server: connection from {}", info.peer_identity);
                let _ = serve_connection(
                    stream,
                    info,
                    &H2Settings::default(),
                    cancel,
                    |req| async move {
                        let Ok(mut app) = TcpStream::connect(req.authority).await else {
                            return req.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
                        };
                        if let Ok(tunnel) = req.accept() {
                            let (mut r, mut w) = app.split();
                            let _ =
                                mesh_hbone::copy_bidirectional(&mut r, &mut w, tunnel, &()).await;
                        }
                    },
                )
                .await;
            });
        }
    });

    // The client side.
    let pool = Pool::new(PoolConfig::default(), bundle);
    let mut tunnel = pool
        .connect(ConnectRequest {
            source: client_certs,
            destination_identity: server_id.clone(),
            hbone_addr,
            authority: echo_addr,
            headers: ConnectHeaders::default().to_header_map(),
            socket_source: None,
        })
        .await?;
    tunnel.write_all(b"hello over HBONE\n").await?;
    tunnel.shutdown().await?;
    let mut back = String::new();
    tunnel.read_to_string(&mut back).await?;
    eprintln!("client: echoed {back:?} by {server_id}");
    assert_eq!(back, "hello over HBONE\n");
    pool.shutdown().await;
    cancel.cancel();
    Ok(())
}
