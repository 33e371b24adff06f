//! mTLS and HBONE refusals, against the real ztunnel binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{
    ConnectRequest, Error, H2Settings, Pool, PoolConfig, accept_tls, serve_connection,
};
use mesh_identity::{CertStore, LocalCa, SpiffeId, TrustBundle, server_config};
use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn request(src: Arc<CertStore>, dst: &str, net: Net, authority: SocketAddr) -> ConnectRequest {
    ConnectRequest {
        source: src,
        destination_identity: id(dst),
        hbone_addr: net.hbone(),
        authority,
        headers: ConnectHeaders::default().to_header_map(),
        socket_source: None,
    }
}

const SERVER: &str = "spiffe://cluster.local/ns/ns/sa/server";
const CLIENT: &str = "spiffe://cluster.local/ns/ns/sa/client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_server_with_another_identity() {
    let net = Net { b: 31 };
    let mut mesh = InprocMesh::new(&net.config());
    // An impostor holds a valid mesh certificate, but for another identity, and listens where
    // node b's ztunnel would accept HBONE for ns/server.
    let impostor = CertStore::fixed(
        mesh.ca
            .issue(&id("spiffe://cluster.local/ns/ns/sa/impostor"))
            .unwrap(),
    );
    let tls = server_config(
        impostor,
        &mesh.ca.trust_bundle().unwrap(),
        vec!["cluster.local".parse().unwrap()],
    )
    .unwrap();
    let l = TcpListener::bind(net.hbone()).await.unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let connects = Arc::new(AtomicUsize::new(0));
    let (h2, c2) = (handshakes.clone(), connects.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let Ok((s, info)) = accept_tls(tcp, tls.clone(), Duration::from_secs(5)).await else {
                continue;
            };
            h2.fetch_add(1, Ordering::SeqCst);
            let c2 = c2.clone();
            let _ = serve_connection(
                s,
                info,
                &H2Settings::default(),
                CancellationToken::new(),
                move |req| {
                    c2.fetch_add(1, Ordering::SeqCst);
                    async move { req.refuse(http::StatusCode::SERVICE_UNAVAILABLE) }
                },
            )
            .await;
        }
    });
    mesh.ztunnel("a", &[]).await;
    let mut s = connect_from(net.client(), net.vip()).await.unwrap();
    let _ = s.write_all(b"secret payload").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "client connection closed without data");
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        0,
        "the TLS handshake never completed"
    );
    assert_eq!(
        connects.load(Ordering::SeqCst),
        0,
        "no CONNECT (no byte) reached the impostor"
    );
    mesh.expect_log(
        "a",
        "is not the expected spiffe://cluster.local/ns/ns/sa/server",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_foreign_trust_domain_other_ca_plaintext_and_certless_tls() {
    let net = Net { b: 32 };
    let mut mesh = InprocMesh::new(&net.config());
    let accepted = echo_server(net.app()).await;
    mesh.ztunnel("b", &[]).await;
    let bundle = mesh.ca.trust_bundle().unwrap();

    // Positive control: a proper mesh client gets through.
    let good = CertStore::fixed(mesh.ca.issue(&id(CLIENT)).unwrap());
    let pool = Pool::new(PoolConfig::default(), bundle.clone());
    let mut t = pool
        .connect(request(good, SERVER, net, net.app()))
        .await
        .unwrap();
    t.write_all(b"ping").await.unwrap();
    t.shutdown().await.unwrap();
    let mut back = Vec::new();
    t.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"ping");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // Same CA, another trust domain.
    let foreign = CertStore::fixed(
        mesh.ca
            .issue(&id("spiffe://other.domain/ns/ns/sa/client"))
            .unwrap(),
    );
    let pool = Pool::new(PoolConfig::default(), bundle.clone());
    assert!(
        pool.connect(request(foreign, SERVER, net, net.app()))
            .await
            .is_err()
    );

    // Right identity, but from a different CA.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, _) = LocalCa::load_or_create(other_dir.path()).unwrap();
    let rogue = CertStore::fixed(other_ca.issue(&id(CLIENT)).unwrap());
    let pool = Pool::new(PoolConfig::default(), bundle.clone());
    assert!(
        pool.connect(request(rogue, SERVER, net, net.app()))
            .await
            .is_err()
    );

    // Plaintext HTTP/2 CONNECT to the HBONE port.
    let mut s = TcpStream::connect(net.hbone()).await.unwrap();
    let _ = s
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nCONNECT 127.32.1.20:9000 HTTP/1.1\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(!buf.windows(3).any(|w| w == b"200"), "no 200 to plaintext");

    // TLS without a client certificate.
    let err = certless_tls(net.hbone(), &bundle).await;
    assert!(err.is_err(), "certless TLS must be refused");

    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "only the proper client reached the app"
    );
    mesh.expect_log("b", "inbound HBONE refused");
}

/// Completes a TLS 1.3 handshake without a client certificate and tries to use the connection.
async fn certless_tls(addr: SocketAddr, _bundle: &TrustBundle) -> std::io::Result<()> {
    #[derive(Debug)]
    struct AnyServer;
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            mesh_identity::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(mesh_identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(addr.ip().into(), tcp)
        .await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Ok(Ok(0)) => Err(std::io::Error::other("closed")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_non_local_authority_is_400_and_app_down_is_503() {
    let net = Net { b: 33 };
    let mut mesh = InprocMesh::new(&net.config());
    mesh.ztunnel("b", &[]).await;
    let good = CertStore::fixed(mesh.ca.issue(&id(CLIENT)).unwrap());
    let pool = Pool::new(PoolConfig::default(), mesh.ca.trust_bundle().unwrap());
    let status = |r: Result<mesh_hbone::H2Stream, Error>| match r {
        Err(Error::Status { status, .. }) => status.as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => 200,
    };
    // Not a workload of node b.
    let r = pool
        .connect(request(
            good.clone(),
            SERVER,
            net,
            "127.9.9.9:80".parse().unwrap(),
        ))
        .await;
    assert_eq!(status(r), 400);
    // The client workload exists, but it is not on this node nor this listener's workload.
    let r = pool
        .connect(request(
            good.clone(),
            SERVER,
            net,
            SocketAddr::new(net.client(), 9000),
        ))
        .await;
    assert_eq!(status(r), 400);
    // The workload is local, but nothing listens on its port 9000 (app down).
    let r = pool
        .connect(request(good.clone(), SERVER, net, net.app()))
        .await;
    assert_eq!(status(r), 503);
    // Once the app is up, the same tunnel request succeeds.
    echo_server(net.app()).await;
    let r = pool.connect(request(good, SERVER, net, net.app())).await;
    assert_eq!(status(r), 200);
    mesh.expect_log("b", "application unreachable: 503");
}
