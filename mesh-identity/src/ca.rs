//! The local CA: a self-signed ECDSA P-256 root kept in a state directory, issuing short-lived
//! workload certificates (URI SAN only) for the embedded single-machine mode.
//!
//! Files in the state directory: `root-cert.pem` and `root-key.pem` (mode 0600; a key readable
//! by group or others is refused). The directory is created with mode 0700. A root is reused
//! across restarts; a half-present pair is an error, never silently replaced.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;

use crate::cert::{certs_from_pem, write_file};
use crate::provider::{BoxFuture, CertProvider};
use crate::{Error, SpiffeId, TrustBundle, WorkloadCert};

/// File name of the root certificate in a CA state directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// File name of the root key in a CA state directory.
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Default lifetime of a workload certificate (Istio's default).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest workload certificate lifetime the CA issues (renewal runs at half of it).
pub const MIN_CERT_TTL: Duration = Duration::from_secs(10);
/// Longest workload certificate lifetime the CA issues.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
// Back-date certificates a little so that peers with slightly slow clocks accept them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A local certificate authority.
pub struct LocalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    ttl: Duration,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads the CA in `dir`, creating a new root there if the directory holds none.
    ///
    /// Returns the CA and whether it was created now. Not safe against two processes creating
    /// the same directory at once: create it once (`meshctl ca init`), then [`LocalCa::load`].
    pub fn load_or_create(dir: impl AsRef<Path>) -> Result<(Self, bool), Error> {
        let dir = dir.as_ref();
        let cert = dir.join(ROOT_CERT_FILE);
        let key = dir.join(ROOT_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((Self::load(dir)?, false)),
            (false, false) => Ok((Self::create(dir)?, true)),
            (true, false) => Err(Error::BadStateFile {
                path: key,
                reason: "missing while the root certificate exists; refusing to replace the root"
                    .into(),
            }),
            (false, true) => Err(Error::BadStateFile {
                path: cert,
                reason: "missing while the root key exists; refusing to replace the root".into(),
            }),
        }
    }

    /// Loads an existing CA from `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        let meta = std::fs::metadata(&key_path).map_err(|e| Error::io(&key_path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::BadStateFile {
                path: key_path,
                reason: format!("key file has mode {mode:04o}; it must be 0600"),
            });
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| Error::io(&cert_path, e))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| Error::io(&key_path, e))?;
        let root = certs_from_pem(&cert_pem)
            .map_err(|e| Error::BadStateFile {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?
            .remove(0);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| Error::BadStateFile {
            path: key_path.clone(),
            reason: format!("not a usable private key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_der(&root, key).map_err(|e| Error::BadStateFile {
            path: cert_path.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
        Ok(LocalCa {
            dir: dir.to_owned(),
            issuer,
            root,
            ttl: DEFAULT_CERT_TTL,
        })
    }

    fn create(dir: &Path) -> Result<Self, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "mesh");
        dn.push(DnType::CommonName, "mesh local root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ROOT_TTL).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        // Key first: a crash between the two writes leaves a key without a cert, which
        // load_or_create reports instead of silently generating a second root.
        write_file(
            &dir.join(ROOT_KEY_FILE),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(&dir.join(ROOT_CERT_FILE), cert.pem().as_bytes(), 0o644)?;
        Self::load(dir)
    }

    /// Sets the lifetime of certificates issued from now on.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The lifetime of issued certificates.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The root certificate.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The trust bundle holding this CA's root.
    pub fn trust_bundle(&self) -> Result<TrustBundle, Error> {
        TrustBundle::from_der(vec![self.root.clone()])
    }

    /// Issues a certificate for `id` with the configured lifetime.
    pub fn issue(&self, id: &SpiffeId) -> Result<WorkloadCert, Error> {
        self.issue_with_ttl(id, self.ttl)
    }

    /// Issues a certificate for `id` valid for `ttl` from now: ECDSA P-256, the SPIFFE id as its
    /// only subject alternative name (critical, with an empty subject), usable for TLS server
    /// and client authentication.
    pub fn issue_with_ttl(&self, id: &SpiffeId, ttl: Duration) -> Result<WorkloadCert, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(id.as_str())
            .map_err(|e| Error::BadCertificate(format!("SPIFFE id as IA5String: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if !(MIN_CERT_TTL..=MAX_CERT_TTL).contains(&ttl) {
            return Err(Error::Provider {
                id: id.clone(),
                reason: format!(
                    "certificate lifetime {ttl:?} is outside {MIN_CERT_TTL:?}..={MAX_CERT_TTL:?}"
                ),
            });
        }
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ttl).into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        WorkloadCert::from_der(
            vec![cert.der().clone()],
            key.serialize_der(),
            vec![self.root.clone()],
            Some(id),
        )
    }
}

impl LocalCa {
    /// Signs a PEM certificate signing request for `id` (the identity a CA decided the caller
    /// may have; the CSR's own names are not trusted) for `ttl`; returns the leaf and the root,
    /// PEM, leaf first. What a CA service (such as a test double of Istio's) answers.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<String>, Error> {
        if !(MIN_CERT_TTL..=MAX_CERT_TTL).contains(&ttl) {
            return Err(Error::Provider {
                id: id.clone(),
                reason: format!(
                    "certificate lifetime {ttl:?} is outside {MIN_CERT_TTL:?}..={MAX_CERT_TTL:?}"
                ),
            });
        }
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::BadCertificate(format!("CSR: {e}")))?;
        let p = &mut csr.params;
        p.distinguished_name = DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(id.as_str())
            .map_err(|e| Error::BadCertificate(format!("SPIFFE id as IA5String: {e}")))?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        p.not_before = (now - CLOCK_SKEW).into();
        p.not_after = (now + ttl).into();
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        let cert = csr.signed_by(&self.issuer)?;
        Ok(vec![
            cert.pem(),
            crate::cert::certs_to_pem(std::slice::from_ref(&self.root)),
        ])
    }
}

impl CertProvider for LocalCa {
    fn fetch_certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<WorkloadCert, Error>> {
        Box::pin(async move { self.issue(id) })
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG only fails if the system RNG is unusable; fall back to the clock so that a
    // serial is still unique enough rather than aborting issuance.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = nanos.to_be_bytes();
    }
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn root_survives_restart_and_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let (ca1, created) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
        assert!(created);
        let (ca2, created) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
        assert!(!created);
        assert_eq!(ca1.root(), ca2.root());
        let mode = std::fs::metadata(dir.path().join("ca").join(ROOT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(dir.path().join("ca"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        // A certificate issued by the restarted CA verifies against the first one's root.
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let cert = ca2.issue(&id).unwrap();
        let bundle = ca1.trust_bundle().unwrap();
        crate::verify_chain(&bundle, cert.chain()).unwrap();
        assert_eq!(cert.identity(), &id);
        let ttl = cert
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((24 * 3600 - 60..=24 * 3600).contains(&ttl), "ttl {ttl}");
    }

    #[test]
    fn refuses_world_readable_key_and_half_state() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
        let key = dir.path().join(ROOT_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalCa::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("must be 0600"), "{err}");
        std::fs::remove_file(dir.path().join(ROOT_CERT_FILE)).unwrap();
        let err = LocalCa::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("refusing to replace the root"), "{err}");
    }

    #[test]
    fn issued_cert_has_only_uri_san_and_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
        let ca = ca.with_ttl(Duration::from_secs(3600));
        let id: SpiffeId = "spiffe://td.example/ns/x/sa/y".parse().unwrap();
        let cert = ca.issue(&id).unwrap();
        use x509_parser::prelude::FromDer;
        let (_, parsed) =
            x509_parser::prelude::X509Certificate::from_der(cert.chain()[0].as_ref()).unwrap();
        assert!(parsed.subject().iter().next().is_none(), "empty subject");
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical);
        assert_eq!(san.value.general_names.len(), 1);
        let life = cert.not_after().duration_since(cert.not_before()).unwrap();
        assert_eq!(life, Duration::from_secs(3600 + 60));
        let out = dir.path().join("out");
        cert.write_pem_files(&out).unwrap();
        let again = WorkloadCert::from_pem(
            &std::fs::read_to_string(out.join("cert.pem")).unwrap(),
            &std::fs::read_to_string(out.join("key.pem")).unwrap(),
            &std::fs::read_to_string(out.join("ca.pem")).unwrap(),
        )
        .unwrap();
        assert_eq!(again.identity(), &id);
        let mode = std::fs::metadata(out.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
