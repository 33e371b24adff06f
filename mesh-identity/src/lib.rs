//! SPIFFE identities, a local CA, mTLS configurations and certificate rotation for the mesh.
//!
//! - [`SpiffeId`] / [`TrustDomain`]: strict parsing of `spiffe://<td>/ns/<ns>/sa/<sa>`.
//! - [`LocalCa`]: a self-signed root kept in a state directory, issuing short-lived ECDSA P-256
//!   workload certificates whose only subject alternative name is the SPIFFE id.
//! - [`CertManager`] / [`CertStore`]: one store per identity, renewed at half-life, keeping the
//!   old certificate while renewal fails. Any [`CertProvider`] can back it.
//! - [`server_config`] / [`client_config`]: rustls configurations for mesh mTLS (TLS 1.3, ALPN
//!   `h2`, client certificates required, exact SPIFFE identity checks).
//! - [`grpc::ControlPlane`]: gRPC channels to istiod (TLS with its roots, keepalive); the data
//!   plane also builds its xDS channel with it. [`istio_ca`]: the Istio CA client.
//! - `testing` (cargo feature): `testing::FakeCa`, a fake Istio CA for tests.
//!
//! ```no_run
//! # fn main() -> Result<(), mesh_identity::Error> {
//! use mesh_identity::{LocalCa, SpiffeId};
//! let (ca, _created) = LocalCa::load_or_create("/tmp/mesh-ca")?;
//! let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().expect("valid id");
//! let cert = ca.issue(&id)?;
//! assert_eq!(cert.identity(), &id);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod bundle;
mod ca;
mod cert;
mod error;
pub mod grpc;
pub mod istio_ca;
mod provider;
mod spiffe;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;

pub use bundle::{TrustBundle, verify_chain};
pub use ca::{
    DEFAULT_CERT_TTL, LocalCa, MAX_CERT_TTL, MIN_CERT_TTL, ROOT_CERT_FILE, ROOT_KEY_FILE,
};
pub use cert::{WorkloadCert, certs_from_pem, certs_to_pem, identity_of, provider};
pub use error::Error;
pub use provider::{BoxFuture, CertProvider};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use store::{CertManager, CertStore, RotationPolicy, refresh_delay, retry_delay};
pub use tls::{ALPN_H2, client_config, peer_identity, server_config};
