//! The trust bundle: the root certificates mesh peers are verified against, and
//! [`verify_chain`], a chain's check against them. A leaf module, used by the local CA (which
//! hands out its root) and by the TLS configurations.

use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::cert::{certs_from_pem, certs_to_pem, identity_of, provider};
use crate::{Error, SpiffeId};

/// The set of root certificates mesh peers are verified against.
#[derive(Clone)]
pub struct TrustBundle {
    roots: Arc<RootCertStore>,
    ders: Arc<Vec<CertificateDer<'static>>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustBundle({} roots)", self.ders.len())
    }
}

impl TrustBundle {
    /// Builds a bundle from DER root certificates.
    pub fn from_der(ders: Vec<CertificateDer<'static>>) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        for der in &ders {
            roots.add(der.clone())?;
        }
        Ok(TrustBundle {
            roots: Arc::new(roots),
            ders: Arc::new(ders),
        })
    }

    /// Builds a bundle from PEM text holding one or more certificates.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        Self::from_der(certs_from_pem(text)?)
    }

    /// The roots as DER.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.ders
    }

    /// The roots as a rustls root store, for certificate verifiers.
    pub(crate) fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// The roots as PEM.
    pub fn to_pem(&self) -> String {
        certs_to_pem(&self.ders)
    }
}

/// Verifies that `chain` (leaf first) chains to `bundle` and is valid now for TLS client or
/// server use. Returns the leaf's SPIFFE id.
pub fn verify_chain(bundle: &TrustBundle, chain: &[CertificateDer<'_>]) -> Result<SpiffeId, Error> {
    let leaf = chain
        .first()
        .ok_or_else(|| Error::BadCertificate("empty chain".into()))?;
    let parsed = ParsedCertificate::try_from(leaf)?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        bundle.roots(),
        &chain[1..],
        UnixTime::now(),
        provider().signature_verification_algorithms.all,
    )?;
    identity_of(leaf)
}
