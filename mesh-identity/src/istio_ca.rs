//! A client of Istio's CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`), as a
//! [`CertProvider`]: the key pair and CSR are made here (the key never leaves the process), a
//! node proxy asks **on behalf of** a local workload with the `ImpersonatedIdentity` metadata
//! as Istio's ztunnel does, and the returned chain must carry exactly the requested SPIFFE id.
//! Rotation at half-life and retries with backoff come from [`crate::CertManager`].
//!
//! A sidecar or a waypoint asks for **its own** identity only, with its own token and no
//! `ImpersonatedIdentity` (istiod grants impersonation to ztunnel alone):
//! `impersonate: false`, and [`IstioCaClient::only_for`] when the identity is known up front
//! (a waypoint's), so a request for any other identity fails here instead of at the CA.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use prost_types::{Struct, Value, value::Kind};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

use crate::grpc::ControlPlane;
use crate::provider::{BoxFuture, CertProvider};
use crate::{Error, SpiffeId, WorkloadCert};

/// Istio's CA messages and service.
#[allow(missing_docs, clippy::all, unreachable_pub)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
}

/// The metadata key of the identity a node proxy asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Settings of the CA client.
#[derive(Debug, Clone)]
pub struct IstioCaConfig {
    /// The CA (istiod: `https://istiod.istio-system.svc:15012`); its roots are also the trust
    /// bundle of the issued certificates.
    pub control_plane: ControlPlane,
    /// Bearer token file (a projected service-account token), re-read per request.
    pub token_file: Option<PathBuf>,
    /// Sent as the `ClusterID` header (Istio's multicluster CA routing).
    pub cluster_id: Option<String>,
    /// Requested certificate lifetime.
    pub validity: Duration,
    /// Ask on behalf of each workload (`ImpersonatedIdentity`), as a node proxy must.
    pub impersonate: bool,
    /// PEM roots the issued chains are trusted under (default: the control plane's CA).
    pub trust_roots_pem: Option<Vec<u8>>,
}

/// The client.
#[derive(Debug)]
pub struct IstioCaClient {
    config: IstioCaConfig,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Own-identity mode: the one identity this client may ask for.
    only: Option<SpiffeId>,
}

impl IstioCaClient {
    /// A client; fails only on unreadable roots.
    pub fn new(config: IstioCaConfig) -> Result<IstioCaClient, Error> {
        let pem = config
            .trust_roots_pem
            .clone()
            .or_else(|| config.control_plane.ca_pem.clone())
            .unwrap_or_default();
        let roots = crate::cert::certs_from_pem(&String::from_utf8_lossy(&pem))?;
        Ok(IstioCaClient {
            config,
            roots,
            only: None,
        })
    }

    /// Own-identity mode for a proxy with one identity (a waypoint): never impersonates, and
    /// refuses to ask for any identity but `id`.
    pub fn only_for(mut self, id: SpiffeId) -> IstioCaClient {
        self.config.impersonate = false;
        self.only = Some(id);
        self
    }

    /// Whether requests carry `ImpersonatedIdentity` (a node proxy asking for its workloads).
    pub fn impersonates(&self) -> bool {
        self.config.impersonate
    }

    async fn fetch(&self, id: &SpiffeId) -> Result<WorkloadCert, String> {
        if let Some(own) = &self.only
            && own != id
        {
            return Err(format!(
                "this proxy asks Istio's CA for its own identity {own} only, not {id}"
            ));
        }
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(id.as_str()).map_err(|e| e.to_string())?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| format!("CSR: {e}"))?;
        let metadata = self.config.impersonate.then(|| Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(id.to_string())),
                },
            )]),
        });
        let mut req = tonic::Request::new(pb::IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.config.validity.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        if let Some(path) = &self.config.token_file {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("token file {}: {e}", path.display()))?;
            let v = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| format!("token file {}: not a header value", path.display()))?;
            req.metadata_mut().insert("authorization", v);
        }
        if let Some(c) = &self.config.cluster_id
            && let Ok(v) = c.parse()
        {
            req.metadata_mut().insert("clusterid", v);
        }
        let channel = self.config.control_plane.channel().await?;
        let mut client =
            pb::istio_certificate_service_client::IstioCertificateServiceClient::new(channel);
        let resp = tokio::time::timeout(
            self.config.control_plane.connect_timeout,
            client.create_certificate(req),
        )
        .await
        .map_err(|_| "CreateCertificate: no answer".to_owned())?
        .map_err(|e| format!("CreateCertificate: {e}"))?
        .into_inner();
        if resp.cert_chain.is_empty() {
            return Err("CreateCertificate: empty certificate chain".into());
        }
        let mut chain = Vec::new();
        for pem in &resp.cert_chain {
            chain.extend(crate::cert::certs_from_pem(pem).map_err(|e| e.to_string())?);
        }
        // The CA's root is the trust bundle, not part of what a workload presents.
        chain.retain(|c| !self.roots.contains(c));
        WorkloadCert::from_der(chain, key.serialize_der(), self.roots.clone(), Some(id))
            .map_err(|e| e.to_string())
    }
}

impl CertProvider for IstioCaClient {
    fn fetch_certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<WorkloadCert, Error>> {
        Box::pin(async move {
            self.fetch(id).await.map_err(|reason| Error::Provider {
                id: id.clone(),
                reason,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn own_identity_mode_never_asks_for_another_identity() {
        let own: SpiffeId = "spiffe://cluster.local/ns/ns/sa/waypoint".parse().unwrap();
        let other: SpiffeId = "spiffe://cluster.local/ns/ns/sa/db".parse().unwrap();
        let client = IstioCaClient::new(IstioCaConfig {
            // Nothing listens there: a request that got that far would fail differently.
            control_plane: ControlPlane::new("http://127.160.0.1:9"),
            token_file: None,
            cluster_id: None,
            validity: Duration::from_secs(3600),
            impersonate: true,
            trust_roots_pem: Some(
                rcgen::generate_simple_self_signed(vec!["root".to_owned()])
                    .unwrap()
                    .cert
                    .pem()
                    .into_bytes(),
            ),
        })
        .unwrap()
        .only_for(own);
        assert!(!client.impersonates());
        let e = client.fetch_certificate(&other).await.unwrap_err();
        assert!(e.to_string().contains("its own identity"), "{e}");
    }
}
