//! The Istio CA client against the fake CA (`mesh_identity::testing::FakeCa`, a tonic server
//! that signs with a local CA): CSR made locally, impersonation metadata and headers sent, the
//! issued identity checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_identity::grpc::ControlPlane;
use mesh_identity::istio_ca::pb::IstioCertificateRequest;
use mesh_identity::istio_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_identity::istio_ca::{IstioCaClient, IstioCaConfig};
use mesh_identity::testing::FakeCa;
use mesh_identity::{CertProvider, Error, LocalCa, SpiffeId};

/// This crate's tests listen on 127.170.0.0/16 only.
const LOOPBACK: &str = "127.170.0.1:0";

async fn serve(ca: LocalCa) -> FakeCa {
    FakeCa::start(ca, LOOPBACK.parse().unwrap()).await.unwrap()
}

fn client(addr: SocketAddr, root_pem: &str, token: &std::path::Path) -> IstioCaClient {
    let mut cp = ControlPlane::new(format!("http://{addr}"));
    cp.connect_timeout = Duration::from_secs(5);
    IstioCaClient::new(IstioCaConfig {
        control_plane: cp,
        token_file: Some(token.to_owned()),
        cluster_id: Some("Kubernetes".into()),
        validity: Duration::from_secs(3600),
        impersonate: true,
        trust_roots_pem: Some(root_pem.as_bytes().to_vec()),
    })
    .unwrap()
}

#[tokio::test]
async fn certificates_for_impersonated_workloads() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "sa-token\n").unwrap();
    let fake = serve(ca).await;
    let c = client(fake.addr(), &root, &token);
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let cert = c.fetch_certificate(&id).await.unwrap();
    assert_eq!(cert.identity(), &id);
    assert_eq!(
        cert.chain().len(),
        1,
        "the root is the bundle, not in the chain"
    );
    let life = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert!(life >= Duration::from_secs(3600), "{life:?}");
    let s = fake.requests()[0].clone();
    assert_eq!(s.authorization.as_deref(), Some("Bearer sa-token"));
    assert_eq!(s.cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(s.impersonated.as_deref(), Some(id.as_str()));
    assert_eq!(s.validity_seconds, 3600);
    // Each fetch makes a new key.
    let again = c.fetch_certificate(&id).await.unwrap();
    assert_ne!(again.chain()[0], cert.chain()[0]);
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let fake = serve(ca).await;
    fake.set_override_identity(Some(
        "spiffe://cluster.local/ns/shop/sa/other".parse().unwrap(),
    ));
    let c = client(fake.addr(), &root, &token);
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let err = c.fetch_certificate(&id).await.unwrap_err().to_string();
    assert!(err.contains("sa/other"), "{err}");
    // An unreachable CA is an error too (the manager keeps the old certificate and retries).
    let mut cp = ControlPlane::new("http://127.170.0.1:9");
    cp.connect_timeout = Duration::from_millis(300);
    let down = IstioCaClient::new(IstioCaConfig {
        control_plane: cp,
        token_file: None,
        cluster_id: None,
        validity: Duration::from_secs(3600),
        impersonate: true,
        trust_roots_pem: Some(root.into_bytes()),
    })
    .unwrap();
    assert!(down.fetch_certificate(&id).await.is_err());
}

/// A TLS front for the plaintext gRPC server at `to`, presenting a certificate for `name`
/// issued by a fresh root; its address and the root's PEM.
async fn tls_front(to: SocketAddr, name: &str) -> (SocketAddr, String) {
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::new(root_params, &root_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(mesh_identity::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let l = tokio::net::TcpListener::bind(LOOPBACK).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, root.pem())
}

/// Over TLS (istiod's 15012): the CA client's per-request channel and a lazy channel, which
/// reconnects by itself after the server comes back; a wrong server name is refused; bad
/// settings are typed errors.
#[tokio::test]
async fn control_plane_channels_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let fake = serve(ca).await;
    let name = "istiod.istio-system.svc";
    let (front, tls_root) = tls_front(fake.addr(), name).await;
    let mut cp = ControlPlane::new(format!("https://{front}"));
    cp.ca_pem = Some(tls_root.into_bytes());
    cp.server_name = Some(name.into());
    cp.connect_timeout = Duration::from_secs(5);
    let config = |cp: ControlPlane| IstioCaConfig {
        control_plane: cp,
        token_file: Some(token.clone()),
        cluster_id: None,
        validity: Duration::from_secs(3600),
        impersonate: true,
        trust_roots_pem: Some(root.as_bytes().to_vec()),
    };
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let cert = IstioCaClient::new(config(cp.clone()))
        .unwrap()
        .fetch_certificate(&id)
        .await
        .unwrap();
    assert_eq!(cert.identity(), &id);

    // A lazy channel: answered (the fake refuses a request without impersonation), then
    // answered again once the server behind it restarted.
    let mut client = IstioCertificateServiceClient::new(cp.lazy_channel().unwrap());
    let ask = || IstioCertificateRequest {
        csr: String::new(),
        validity_duration: 60,
        metadata: None,
    };
    let status = client.create_certificate(ask()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    fake.stop();
    fake.restart().await.unwrap();
    let mut code = tonic::Code::Unavailable;
    for _ in 0..50 {
        code = client.create_certificate(ask()).await.unwrap_err().code();
        if code != tonic::Code::Unavailable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(fake.requests().len() >= 3);

    // Another name than the certificate's is refused.
    let mut wrong = cp.clone();
    wrong.server_name = Some("other.istio-system.svc".into());
    let err = IstioCaClient::new(config(wrong))
        .unwrap()
        .fetch_certificate(&id)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Provider { .. }), "{err}");

    // Unusable settings are typed errors, found before any connect.
    let no_roots = ControlPlane::new(format!("https://{front}")).lazy_channel();
    assert!(
        matches!(&no_roots, Err(Error::ControlPlane { reason, .. }) if reason.contains("CA")),
        "{no_roots:?}"
    );
    let garbage = ControlPlane::new("not a uri").lazy_channel();
    assert!(
        matches!(garbage, Err(Error::ControlPlane { .. })),
        "{garbage:?}"
    );
}
