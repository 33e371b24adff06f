//! rustls configurations for mesh mTLS.
//!
//! Both sides: TLS 1.3 only, ALPN `h2`, aws-lc-rs. The server requires a client certificate that
//! chains to the trust bundle and carries one SPIFFE id in an accepted trust domain; the identity
//! is then read with [`peer_identity`] and handed to authorization. The client verifies the
//! server's chain and requires its SPIFFE id to equal the expected identity **exactly** (no DNS
//! names, no wildcards). Certificates are resolved from a [`CertStore`] on every handshake, so
//! rotation needs no new configuration.
//!
//! No session resumption, either side: a resumed TLS 1.3 session skips certificate
//! verification, so a client could keep an identity after its certificate expired or its CA
//! left the trust bundle. Every connection makes a full handshake (HBONE connections are
//! pooled and long-lived, so this costs little).
//!
//! Key exchange prefers the hybrid post-quantum X25519MLKEM768 (rustls' `prefer-post-quantum`
//! feature, enabled for the workspace), with X25519 offered alongside so a classical-only
//! peer still connects without a HelloRetryRequest.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cert::{identity_of, provider};
use crate::{CertStore, Error, SpiffeId, TrustBundle, TrustDomain};

/// ALPN protocol spoken over mesh mTLS (HBONE is HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The SPIFFE identity of a verified TLS peer, from its leaf certificate's URI SAN.
pub fn peer_identity(peer_certs: Option<&[CertificateDer<'_>]>) -> Result<SpiffeId, Error> {
    let leaf = peer_certs
        .and_then(|c| c.first())
        .ok_or_else(|| Error::BadCertificate("peer presented no certificate".into()))?;
    identity_of(leaf)
}

/// A server configuration presenting `certs`' current certificate and requiring client
/// certificates chained to `bundle` whose SPIFFE id is in one of `trust_domains`.
pub fn server_config(
    certs: Arc<CertStore>,
    bundle: &TrustBundle,
    trust_domains: Vec<TrustDomain>,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let inner =
        WebPkiClientVerifier::builder_with_provider(bundle.roots().clone(), provider.clone())
            .build()?;
    let verifier = Arc::new(SpiffeClientVerifier {
        inner,
        trust_domains,
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(StoreResolver(certs)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: neither stateful sessions nor tickets (see the module doc).
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client configuration presenting `certs`' current certificate and accepting only a server
/// whose chain verifies against `bundle` and whose SPIFFE id equals `expected`.
pub fn client_config(
    certs: Arc<CertStore>,
    bundle: &TrustBundle,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: bundle.roots().clone(),
        expected,
        provider: provider.clone(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(StoreResolver(certs)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct StoreResolver(Arc<CertStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key().clone())
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct VerifyError(String);

fn app_error(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(VerifyError(
        msg,
    )))))
}

/// Client-certificate verifier: webpki chain verification plus a SPIFFE id in an accepted
/// trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domains: Vec<TrustDomain>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = identity_of(end_entity).map_err(|e| app_error(e.to_string()))?;
        if !self
            .trust_domains
            .iter()
            .any(|td| td.as_str() == id.trust_domain_str())
        {
            return Err(app_error(format!(
                "client identity {id} is not in an accepted trust domain"
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// Server-certificate verifier: webpki chain verification, then the SPIFFE id must equal the
/// expected identity exactly. The TLS server name is not used (HBONE connects by IP).
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = identity_of(end_entity).map_err(|e| app_error(e.to_string()))?;
        if id != self.expected {
            return Err(app_error(format!(
                "server identity {id} is not the expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configuration only enables TLS 1.3.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
