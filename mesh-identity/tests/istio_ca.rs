//! The Istio CA client against a fake CA service (a tonic server that signs with a local CA):
//! CSR made locally, impersonation metadata and headers sent, the issued identity checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_identity::grpc::ControlPlane;
use mesh_identity::istio_ca::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mesh_identity::istio_ca::pb::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_identity::istio_ca::{IMPERSONATED_IDENTITY, IstioCaClient, IstioCaConfig};
use mesh_identity::{CertProvider, LocalCa, SpiffeId};
use prost_types::value::Kind;
use tonic::{Request, Response, Status};

/// What the fake saw of a request.
#[derive(Debug, Default, Clone)]
struct Seen {
    authorization: Option<String>,
    cluster_id: Option<String>,
    impersonated: Option<String>,
    validity: i64,
}

struct FakeCa {
    ca: LocalCa,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Signs for this identity instead of the one asked for (a misbehaving CA).
    override_identity: Option<SpiffeId>,
}

#[tonic::async_trait]
impl IstioCertificateService for FakeCa {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let header = |k: &str| {
            req.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut seen = Seen {
            authorization: header("authorization"),
            cluster_id: header("clusterid"),
            ..Seen::default()
        };
        let r = req.into_inner();
        seen.validity = r.validity_duration;
        seen.impersonated = r
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        self.seen.lock().unwrap().push(seen.clone());
        let id = match &self.override_identity {
            Some(id) => id.clone(),
            None => seen
                .impersonated
                .as_deref()
                .ok_or_else(|| Status::permission_denied("no identity"))?
                .parse()
                .map_err(|_| Status::invalid_argument("bad identity"))?,
        };
        let chain = self
            .ca
            .sign_csr(&r.csr, &id, Duration::from_secs(r.validity_duration as u64))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

async fn serve(fake: FakeCa) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = IstioCertificateServiceServer::new(fake);
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
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(FakeCa {
        ca,
        seen: seen.clone(),
        override_identity: None,
    })
    .await;
    let c = client(addr, &root, &token);
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
    let s = seen.lock().unwrap()[0].clone();
    assert_eq!(s.authorization.as_deref(), Some("Bearer sa-token"));
    assert_eq!(s.cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(s.impersonated.as_deref(), Some(id.as_str()));
    assert_eq!(s.validity, 3600);
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
    let addr = serve(FakeCa {
        ca,
        seen: Arc::default(),
        override_identity: Some("spiffe://cluster.local/ns/shop/sa/other".parse().unwrap()),
    })
    .await;
    let c = client(addr, &root, &token);
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let err = c.fetch_certificate(&id).await.unwrap_err().to_string();
    assert!(err.contains("sa/other"), "{err}");
    // An unreachable CA is an error too (the manager keeps the old certificate and retries).
    let mut cp = ControlPlane::new("http://127.0.0.1:9");
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
