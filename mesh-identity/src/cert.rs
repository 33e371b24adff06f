//! A workload certificate: chain, private key and the SPIFFE identity it proves.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{Error, SpiffeId};

/// The one crypto provider of the mesh: aws-lc-rs, passed explicitly to every rustls builder.
/// With the `fips` feature, its FIPS 140-3 validated module with only FIPS-approved
/// algorithms (`rustls::crypto::default_fips_provider`).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            #[cfg(feature = "fips")]
            let p = rustls::crypto::default_fips_provider();
            #[cfg(not(feature = "fips"))]
            let p = rustls::crypto::aws_lc_rs::default_provider();
            Arc::new(p)
        })
        .clone()
}

/// A certificate chain with its private key, for one SPIFFE identity.
///
/// The key is never printed: `Debug` shows the identity and validity only.
pub struct WorkloadCert {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
    certified: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl WorkloadCert {
    /// Builds a workload certificate from DER parts.
    ///
    /// `chain` is leaf first; `roots` is the trust bundle of the issuing CA. The identity is read
    /// from the leaf's single SPIFFE URI SAN; when `expected` is given it must match exactly
    /// (a CA that returns another identity than asked for is refused).
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
        roots: Vec<CertificateDer<'static>>,
        expected: Option<&SpiffeId>,
    ) -> Result<Self, Error> {
        let leaf = chain
            .first()
            .ok_or_else(|| Error::BadCertificate("empty certificate chain".into()))?;
        let info = parse_leaf(leaf)?;
        if let Some(expected) = expected
            && &info.identity != expected
        {
            return Err(Error::IdentityMismatch {
                expected: expected.clone(),
                actual: info.identity.to_string(),
            });
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.clone()));
        let certified = CertifiedKey::from_der(chain.clone(), key, &provider())?;
        Ok(WorkloadCert {
            identity: info.identity,
            chain,
            roots,
            key_pkcs8,
            certified: Arc::new(certified),
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// Parses PEM text: the chain (leaf first), a PKCS#8 key and the roots.
    pub fn from_pem(chain_pem: &str, key_pem: &str, roots_pem: &str) -> Result<Self, Error> {
        let chain = certs_from_pem(chain_pem)?;
        let key = pem::parse(key_pem)
            .map_err(|e| Error::BadCertificate(format!("private key PEM: {e}")))?;
        if key.tag() != "PRIVATE KEY" {
            return Err(Error::BadCertificate(format!(
                "private key PEM has tag {:?}, expected \"PRIVATE KEY\" (PKCS#8)",
                key.tag()
            )));
        }
        let roots = certs_from_pem(roots_pem)?;
        Self::from_der(chain, key.contents().to_vec(), roots, None)
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The issuing CA's roots.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The chain and signing key as rustls uses them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether the certificate is past its end of validity at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// The chain as PEM.
    pub fn chain_pem(&self) -> String {
        certs_to_pem(&self.chain)
    }

    /// The roots as PEM.
    pub fn roots_pem(&self) -> String {
        certs_to_pem(&self.roots)
    }

    /// Writes `cert.pem` (chain), `key.pem` (mode 0600) and `ca.pem` (roots) into `dir`,
    /// creating it if needed.
    pub fn write_pem_files(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_file(&dir.join("cert.pem"), self.chain_pem().as_bytes(), 0o644)?;
        let key = pem::encode(&pem::Pem::new("PRIVATE KEY", self.key_pkcs8.clone()));
        write_file(&dir.join("key.pem"), key.as_bytes(), 0o600)?;
        write_file(&dir.join("ca.pem"), self.roots_pem().as_bytes(), 0o644)?;
        Ok(())
    }
}

/// Writes `data` to `path` atomically (temporary file + rename) with the given mode.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Parses every `CERTIFICATE` block of a PEM text.
pub fn certs_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let blocks = pem::parse_many(text)
        .map_err(|e| Error::BadCertificate(format!("certificate PEM: {e}")))?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(Error::BadCertificate("no CERTIFICATE block in PEM".into()));
    }
    Ok(certs)
}

/// Encodes certificates as PEM.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let blocks: Vec<pem::Pem> = certs
        .iter()
        .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()))
        .collect();
    pem::encode_many(&blocks)
}

struct LeafInfo {
    identity: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
}

fn parse_leaf(der: &CertificateDer<'_>) -> Result<LeafInfo, Error> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| Error::BadCertificate(format!("parse: {e}")))?;
    let identity = spiffe_from_parsed(&cert)?;
    let to_system = |t: x509_parser::time::ASN1Time| -> SystemTime {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok(LeafInfo {
        identity,
        not_before: to_system(cert.validity().not_before),
        not_after: to_system(cert.validity().not_after),
    })
}

fn spiffe_from_parsed(cert: &X509Certificate<'_>) -> Result<SpiffeId, Error> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::BadCertificate(format!("subjectAltName: {e}")))?
        .ok_or_else(|| Error::BadCertificate("no subjectAltName extension".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris
        .next()
        .ok_or_else(|| Error::BadCertificate("no URI SAN".into()))?;
    if uris.next().is_some() {
        return Err(Error::BadCertificate(
            "more than one URI SAN; a workload certificate carries exactly one SPIFFE id".into(),
        ));
    }
    uri.parse()
        .map_err(|e| Error::BadCertificate(format!("URI SAN {uri:?} is not a SPIFFE id: {e}")))
}

/// Reads the SPIFFE identity (the single URI SAN) of a DER certificate.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| Error::BadCertificate(format!("parse: {e}")))?;
    spiffe_from_parsed(&parsed)
}
