//! The certificate provider interface, shared by the local CA, Istio's CA client and the
//! certificate stores. A leaf module: it depends only on the identity and certificate types.

use std::future::Future;
use std::pin::Pin;

use crate::{Error, SpiffeId, WorkloadCert};

/// A boxed, sendable future, as returned by [`CertProvider`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that issues certificates for identities: the local CA, or Istio's CA client.
pub trait CertProvider: Send + Sync + 'static {
    /// Issues a fresh certificate for `id`. Must return a certificate for exactly `id`.
    fn fetch_certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<WorkloadCert, Error>>;
}
