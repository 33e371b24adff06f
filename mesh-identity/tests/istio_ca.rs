//! The Istio CA client against the fake CA (`mesh_identity::testing::FakeCa`, a tonic server
//! that signs with a local CA): CSR made locally, impersonation metadata and headers sent, the
//! issued identity checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_identity::grpc::ControlPlane;
use mesh_identity::istio_ca::{IstioCaClient, IstioCaConfig};
use mesh_identity::testing::FakeCa;
use mesh_identity::{CertProvider, LocalCa, SpiffeId};

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
