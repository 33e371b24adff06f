//! Mesh mTLS configurations: no session resumption (a resumed session skips certificate
//! checks), and post-quantum key exchange preferred while classical peers still connect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_identity::{
    CertStore, LocalCa, SpiffeId, TrustDomain, client_config, peer_identity, server_config,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, HandshakeKind, NamedGroup, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Mesh {
    _dir: tempfile::TempDir,
    ca: LocalCa,
    td: TrustDomain,
    server: Arc<CertStore>,
    server_id: SpiffeId,
}

fn mesh() -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
    let td: TrustDomain = "cluster.local".parse().unwrap();
    let server_id = SpiffeId::new(&td, "ns", "server").unwrap();
    let server = CertStore::fixed(ca.issue(&server_id).unwrap());
    Mesh {
        _dir: dir,
        ca,
        td,
        server,
        server_id,
    }
}

/// What each side saw of one connection.
#[derive(Debug)]
struct Seen {
    client_kind: HandshakeKind,
    client_group: NamedGroup,
    server_group: NamedGroup,
    client_identity: SpiffeId,
}

/// One connection over an in-memory pipe: handshake, then the server sends two bytes (after its
/// session tickets, if any) that the client reads.
async fn connect(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Result<Seen, String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_side = tokio::spawn(async move {
        let mut tls = TlsAcceptor::from(server)
            .accept(s)
            .await
            .map_err(|e| e.to_string())?;
        let conn = tls.get_ref().1;
        let group = conn.negotiated_key_exchange_group().unwrap().name();
        let identity = peer_identity(conn.peer_certificates()).map_err(|e| e.to_string())?;
        tls.write_all(b"hi").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        Ok::<_, String>((group, identity))
    });
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let client_side = async {
        let mut tls = TlsConnector::from(client)
            .connect(name, c)
            .await
            .map_err(|e| e.to_string())?;
        let mut hi = [0u8; 2];
        tls.read_exact(&mut hi).await.map_err(|e| e.to_string())?;
        let conn = tls.get_ref().1;
        let kind = conn.handshake_kind().unwrap();
        let group = conn.negotiated_key_exchange_group().unwrap().name();
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((kind, group))
    };
    let client = client_side.await;
    let server = server_side.await.unwrap();
    let (client_kind, client_group) = client?;
    let (server_group, client_identity) = server?;
    Ok(Seen {
        client_kind,
        client_group,
        server_group,
        client_identity,
    })
}

#[tokio::test]
async fn resumption_cannot_outlive_the_client_certificate() {
    let m = mesh();
    let client_id = SpiffeId::new(&m.td, "ns", "client").unwrap();
    let cert =
        m.ca.issue_with_ttl(&client_id, Duration::from_secs(10))
            .unwrap();
    let expires = cert.not_after();
    let bundle = m.ca.trust_bundle().unwrap();
    let server = server_config(m.server.clone(), &bundle, vec![m.td.clone()]).unwrap();
    // Our client config, but keeping sessions, as any client may.
    let mut client =
        (*client_config(CertStore::fixed(cert), &bundle, m.server_id.clone()).unwrap()).clone();
    client.resumption = Resumption::in_memory_sessions(32);
    let client = Arc::new(client);

    let first = connect(client.clone(), server.clone()).await.unwrap();
    assert_eq!(first.client_kind, HandshakeKind::Full);
    let second = connect(client.clone(), server.clone()).await.unwrap();
    assert_eq!(
        second.client_kind,
        HandshakeKind::Full,
        "the server resumed a session instead of checking the certificate again"
    );

    // Once the certificate has expired, no earlier session keeps its identity alive.
    let wait = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    let after = connect(client.clone(), server.clone()).await;
    assert!(
        after.is_err(),
        "a client with an expired certificate got in: {after:?}"
    );
}

#[tokio::test]
async fn mesh_tls_prefers_x25519mlkem768() {
    let m = mesh();
    let bundle = m.ca.trust_bundle().unwrap();
    let client_id = SpiffeId::new(&m.td, "ns", "client").unwrap();
    let client = client_config(
        CertStore::fixed(m.ca.issue(&client_id).unwrap()),
        &bundle,
        m.server_id.clone(),
    )
    .unwrap();
    let server = server_config(m.server.clone(), &bundle, vec![m.td.clone()]).unwrap();
    let seen = connect(client, server).await.unwrap();
    assert_eq!(seen.client_group, NamedGroup::X25519MLKEM768);
    assert_eq!(seen.server_group, NamedGroup::X25519MLKEM768);
    assert_eq!(seen.client_kind, HandshakeKind::Full, "no extra round trip");
    assert_eq!(seen.client_identity, client_id);
}

fn classical() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: vec![aws_lc_rs::kx_group::X25519],
        ..aws_lc_rs::default_provider()
    })
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A classical-only client's verifier: checks signatures only (what is under test is the key
/// exchange, not the server's identity).
#[derive(Debug)]
struct SignaturesOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignaturesOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn classical_only_peers_still_connect() {
    let m = mesh();
    let bundle = m.ca.trust_bundle().unwrap();
    let client_id = SpiffeId::new(&m.td, "ns", "client").unwrap();
    let client_cert = CertStore::fixed(m.ca.issue(&client_id).unwrap());

    // A classical-only client against our server.
    let mut old_client = ClientConfig::builder_with_provider(classical())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignaturesOnly(classical())))
        .with_client_cert_resolver(Arc::new(Fixed(
            client_cert.current().certified_key().clone(),
        )));
    old_client.alpn_protocols = vec![b"h2".to_vec()];
    let server = server_config(m.server.clone(), &bundle, vec![m.td.clone()]).unwrap();
    let seen = connect(Arc::new(old_client), server).await.unwrap();
    assert_eq!(seen.server_group, NamedGroup::X25519);
    assert_eq!(seen.client_identity, client_id);

    // Our client against a classical-only server: X25519 at once, no HelloRetryRequest.
    let mut old_server = ServerConfig::builder_with_provider(classical())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new({
                    let mut roots = rustls::RootCertStore::empty();
                    roots.add(m.ca.root().clone()).unwrap();
                    roots
                }),
                classical(),
            )
            .build()
            .unwrap(),
        )
        .with_cert_resolver(Arc::new(Fixed(m.server.current().certified_key().clone())));
    old_server.alpn_protocols = vec![b"h2".to_vec()];
    let client = client_config(client_cert, &bundle, m.server_id.clone()).unwrap();
    let seen = connect(client, Arc::new(old_server)).await.unwrap();
    assert_eq!(seen.client_group, NamedGroup::X25519);
    assert_eq!(seen.client_kind, HandshakeKind::Full);
}
