//! The crate's error type.

use std::path::PathBuf;

use crate::SpiffeId;

/// Errors from identity, CA and TLS configuration operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a CA state file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A CA state file exists but cannot be used.
    #[error("{path}: {reason}")]
    BadStateFile {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// Generating a key or signing a certificate failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate could not be parsed or carries no usable SPIFFE identity.
    #[error("certificate: {0}")]
    BadCertificate(String),
    /// A certificate chain returned for an identity carries another identity.
    #[error("certificate for {expected} carries {actual}")]
    IdentityMismatch {
        /// The identity that was asked for.
        expected: SpiffeId,
        /// The identity in the certificate.
        actual: String,
    },
    /// Building a rustls configuration failed.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Building a client-certificate verifier failed.
    #[error("tls verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The certificate provider (CA) could not issue a certificate.
    #[error("certificate provider for {id}: {reason}")]
    Provider {
        /// The identity asked for.
        id: SpiffeId,
        /// The provider's explanation.
        reason: String,
    },
    /// The certificate manager was shut down.
    #[error("certificate manager is shut down")]
    Shutdown,
    /// A control plane's address or TLS settings cannot be used.
    #[error("control plane {address}: {reason}")]
    ControlPlane {
        /// The address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
