//! Certificate stores and rotation.
//!
//! A [`CertStore`] holds the current certificate of one identity behind an `ArcSwap`: readers
//! (TLS handshakes) never lock. A [`CertManager`] owns one store per identity and one rotation
//! task per store, which renews at half of the certificate's lifetime and, when renewal fails,
//! keeps serving the old, still-valid certificate while it retries with exponential backoff.
//! The schedule itself is the pure function [`refresh_delay`] / [`retry_delay`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

use crate::provider::CertProvider;
use crate::{Error, SpiffeId, WorkloadCert};

/// The current certificate of one identity.
#[derive(Debug)]
pub struct CertStore {
    identity: SpiffeId,
    current: ArcSwap<WorkloadCert>,
}

impl CertStore {
    /// A store holding a fixed certificate (no rotation), e.g. one written by `meshctl ca issue`.
    pub fn fixed(cert: WorkloadCert) -> Arc<Self> {
        Arc::new(CertStore {
            identity: cert.identity().clone(),
            current: ArcSwap::from_pointee(cert),
        })
    }

    /// The identity this store serves.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The certificate to present now.
    pub fn current(&self) -> Arc<WorkloadCert> {
        self.current.load_full()
    }

    fn replace(&self, cert: WorkloadCert) {
        self.current.store(Arc::new(cert));
    }
}

const MIN_REFRESH: Duration = Duration::from_secs(1);

/// When to renew: at half of the certificate's lifetime (as Istio's ztunnel does).
pub fn refresh_delay(now: SystemTime, not_before: SystemTime, not_after: SystemTime) -> Duration {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let at = not_before + life / 2;
    at.duration_since(now).unwrap_or_default()
}

/// Backoff before retry `attempt` (0-based) after a failed renewal: doubling from `initial`,
/// capped at `max`.
pub fn retry_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    initial
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
}

/// Retry timing of a [`CertManager`].
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// First retry delay after a failed renewal.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// Owns a [`CertStore`] and a rotation task per identity.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<dyn CertProvider>,
    policy: RotationPolicy,
    stores: Mutex<HashMap<SpiffeId, (Arc<CertStore>, CancellationToken)>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager").finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager fetching certificates from `provider`.
    pub fn new(provider: Arc<dyn CertProvider>, policy: RotationPolicy) -> Self {
        CertManager {
            inner: Arc::new(Inner {
                provider,
                policy,
                stores: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
            }),
        }
    }

    fn lookup(&self, id: &SpiffeId) -> Option<Arc<CertStore>> {
        let stores = self.inner.stores.lock().unwrap_or_else(|p| p.into_inner());
        stores.get(id).map(|(s, _)| s.clone())
    }

    /// The store for `id`, fetching its first certificate and starting its rotation on first
    /// use. Errors if the first fetch fails (nothing to serve yet).
    pub async fn store(&self, id: &SpiffeId) -> Result<Arc<CertStore>, Error> {
        if let Some(s) = self.lookup(id) {
            return Ok(s);
        }
        if self.inner.cancel.is_cancelled() {
            return Err(Error::Shutdown);
        }
        let cert = self.inner.provider.fetch_certificate(id).await?;
        if cert.identity() != id {
            return Err(Error::IdentityMismatch {
                expected: id.clone(),
                actual: cert.identity().to_string(),
            });
        }
        let store = Arc::new(CertStore {
            identity: id.clone(),
            current: ArcSwap::from_pointee(cert),
        });
        let cancel = self.inner.cancel.child_token();
        {
            let mut stores = self.inner.stores.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((existing, _)) = stores.get(id) {
                // Another caller won the race; use its store.
                return Ok(existing.clone());
            }
            stores.insert(id.clone(), (store.clone(), cancel.clone()));
        }
        let span = tracing::info_span!("cert_rotation", identity = %id);
        self.inner.tasks.spawn(
            rotate(
                self.inner.provider.clone(),
                self.inner.policy,
                store.clone(),
                cancel,
            )
            .instrument(span),
        );
        Ok(store)
    }

    /// Stops rotating `id` and drops its store (the workload left this node).
    pub fn remove(&self, id: &SpiffeId) {
        let mut stores = self.inner.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, cancel)) = stores.remove(id) {
            cancel.cancel();
        }
    }

    /// The identities currently managed.
    pub fn identities(&self) -> Vec<SpiffeId> {
        let stores = self.inner.stores.lock().unwrap_or_else(|p| p.into_inner());
        stores.keys().cloned().collect()
    }

    /// The stores currently managed (their certificates rotate in place).
    pub fn stores(&self) -> Vec<Arc<CertStore>> {
        let stores = self.inner.stores.lock().unwrap_or_else(|p| p.into_inner());
        stores.values().map(|(s, _)| s.clone()).collect()
    }

    /// Stops all rotation tasks and waits for them.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

async fn rotate(
    provider: Arc<dyn CertProvider>,
    policy: RotationPolicy,
    store: Arc<CertStore>,
    cancel: CancellationToken,
) {
    loop {
        let cert = store.current();
        // At least a second between renewals, whatever the lifetime: never a tight loop.
        let delay =
            refresh_delay(SystemTime::now(), cert.not_before(), cert.not_after()).max(MIN_REFRESH);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        let mut attempt = 0u32;
        loop {
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = provider.fetch_certificate(store.identity()) => r,
            };
            match result {
                Ok(new) if new.identity() == store.identity() => {
                    info!(not_after = ?new.not_after(), "certificate renewed");
                    store.replace(new);
                    break;
                }
                Ok(new) => warn!(
                    got = %new.identity(),
                    "provider returned a certificate for another identity; keeping the current one"
                ),
                Err(e) => warn!(
                    error = %e,
                    attempt,
                    expired = cert.is_expired_at(SystemTime::now()),
                    "certificate renewal failed; still serving the current certificate"
                ),
            }
            let wait = retry_delay(attempt, policy.retry_initial, policy.retry_max);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxFuture, LocalCa};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Flaky {
        ca: LocalCa,
        calls: AtomicUsize,
        fail: AtomicBool,
    }

    impl CertProvider for Flaky {
        fn fetch_certificate<'a>(
            &'a self,
            id: &'a SpiffeId,
        ) -> BoxFuture<'a, Result<WorkloadCert, Error>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.fail.load(Ordering::SeqCst) {
                    return Err(Error::Provider {
                        id: id.clone(),
                        reason: "CA unavailable".into(),
                    });
                }
                self.ca.issue(id)
            })
        }
    }

    fn flaky(dir: &std::path::Path) -> Arc<Flaky> {
        let (ca, _) = LocalCa::load_or_create(dir).unwrap();
        Arc::new(Flaky {
            ca: ca.with_ttl(Duration::from_secs(3600)),
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
        })
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn schedule_is_half_life() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(3600);
        assert_eq!(refresh_delay(nb, nb, na), Duration::from_secs(1800));
        assert_eq!(
            refresh_delay(nb + Duration::from_secs(1000), nb, na),
            Duration::from_secs(800)
        );
        assert_eq!(refresh_delay(na, nb, na), Duration::ZERO);
        let (i, m) = (Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(retry_delay(0, i, m), i);
        assert_eq!(retry_delay(3, i, m), Duration::from_secs(4));
        assert_eq!(retry_delay(40, i, m), m);
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_half_life() {
        let dir = tempfile::tempdir().unwrap();
        let p = flaky(dir.path());
        let mgr = CertManager::new(p.clone(), RotationPolicy::default());
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let store = mgr.store(&id).await.unwrap();
        settle().await; // let the rotation task arm its timer
        let first = store.current();
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
        // Lifetime is 3600 s + 60 s back-dating: renewal is due ~1770 s after issuance.
        tokio::time::advance(Duration::from_secs(1700)).await;
        settle().await;
        assert_eq!(p.calls.load(Ordering::SeqCst), 1, "not renewed early");
        tokio::time::advance(Duration::from_secs(100)).await;
        settle().await;
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
        let second = store.current();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_ne!(first.chain()[0], second.chain()[0]);
        assert_eq!(second.identity(), &id);
        mgr.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_old_certificate_while_renewal_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = flaky(dir.path());
        let mgr = CertManager::new(p.clone(), RotationPolicy::default());
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let store = mgr.store(&id).await.unwrap();
        settle().await; // let the rotation task arm its timer
        let first = store.current();
        p.fail.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(1800)).await;
        settle().await;
        // Retries back off: 0.5 s, 1 s, 2 s ...
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(5)).await;
            settle().await;
        }
        let calls = p.calls.load(Ordering::SeqCst);
        assert!(calls >= 4, "retried: {calls}");
        assert!(
            Arc::ptr_eq(&first, &store.current()),
            "old cert still served"
        );
        p.fail.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert!(
            !Arc::ptr_eq(&first, &store.current()),
            "renewed after recovery"
        );
        mgr.shutdown().await;
    }
}
