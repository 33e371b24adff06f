//! Following istiod: the workload-API resources of a Delta ADS stream feed the proxy's state.
//!
//! The xDS client's handlers validate each resource into the [`XdsStore`] (rejected ones are
//! NACKed by name and counted in `config_rejected`); a rebuild task then compiles the whole
//! [`MeshState`](crate::config::MeshState) off the async workers and applies it like a
//! reloaded file. Updates arriving while a rebuild runs coalesce into one more rebuild. While
//! the control plane is away the last applied state keeps serving.
//!
//! A waypoint or a sidecar also watches its local L7 file: a changed, valid file
//! replaces the store's L7 resources and rebuilds like an xDS update; an invalid one is logged
//! and counted, and the last good one keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, Client, Handler, Rejection, Typed, pb};
use tokio::sync::Notify;
use tracing::{Instrument as _, debug, error, info, warn};

use super::runtime::{FIRST_STATE_TASK, Inner, Proxy};
use crate::config::xds::XdsStore;

const RETRY_INITIAL: std::time::Duration = std::time::Duration::from_millis(500);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// The local file of L7 resources beside istiod (`--config` with `--xds-address`, checked
/// with [`crate::config::parse_l7`]) and how often it is polled for changes.
type L7File = (PathBuf, Duration);

/// A running subscription: stops with the proxy.
#[derive(Debug, Clone)]
pub struct XdsFollower {
    status: tokio::sync::watch::Receiver<mesh_xds::Status>,
}

impl XdsFollower {
    /// The client's connection and ACK/NACK counters.
    pub fn status(&self) -> mesh_xds::Status {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<mesh_xds::Status> {
        self.status.clone()
    }
}

fn record(inner: &Inner, kind: &str, rejected: &[Rejection]) {
    for r in rejected {
        warn!(resource = %r.name, reason = %r.reason, "{kind} rejected (NACK); the rest of the update applies");
        inner
            .ctx
            .telemetry
            .rejected(format!("xDS {kind} {}: {}", r.name, r.reason));
    }
}

impl Proxy {
    /// Subscribes to Istio's workload API (`Address`, `Authorization`) over `channel` with
    /// `config` and applies every update to this proxy, starting from `store`.
    pub fn follow_xds(
        &self,
        store: XdsStore,
        channel: mesh_xds::Channel,
        config: mesh_xds::Config,
    ) -> XdsFollower {
        self.follow_istiod(store, channel, config, super::k8s::L7Source::None)
    }

    /// As [`follow_xds`](Self::follow_xds), also following the L7 source `l7`: the local
    /// file (path, poll interval; its first version is already in `store`) or the Kubernetes
    /// API (the first state then waits for its first lists too). Each valid change rebuilds
    /// the state.
    pub fn follow_istiod(
        &self,
        store: XdsStore,
        channel: mesh_xds::Channel,
        config: mesh_xds::Config,
        l7: super::k8s::L7Source,
    ) -> XdsFollower {
        let store = Arc::new(Mutex::new(store));
        let dirty = Arc::new(Notify::new());
        // The first state is applied once both types have answered (Istio's ztunnel waits
        // for its initial sync too): never workloads without their policies. Not ready
        // before that.
        let answered = Arc::new(std::sync::atomic::AtomicU8::new(0));
        // Bits: 1 Address, 2 Authorization, 4 the Kubernetes L7 source's first lists.
        let want: u8 = if matches!(l7, super::k8s::L7Source::Kube(_)) {
            7
        } else {
            3
        };
        let mut first = Some(self.inner.readiness.register(FIRST_STATE_TASK));
        self.inner.release_startup(FIRST_STATE_TASK);
        let addresses = {
            let (store, dirty, inner) = (store.clone(), dirty.clone(), self.inner.clone());
            let answered = answered.clone();
            Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, move |upserts, removes| {
                let rejected = store
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply_addresses(upserts, removes);
                record(&inner, "Address", &rejected);
                answered.fetch_or(1, std::sync::atomic::Ordering::SeqCst);
                dirty.notify_one();
                rejected
            })
        };
        let authorizations = {
            let (store, dirty, inner) = (store.clone(), dirty.clone(), self.inner.clone());
            let answered = answered.clone();
            Typed::<pb::security::Authorization, _>::new(
                AUTHORIZATION_TYPE,
                move |upserts, removes| {
                    let rejected = store
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply_authorizations(upserts, removes);
                    record(&inner, "Authorization", &rejected);
                    answered.fetch_or(2, std::sync::atomic::Ordering::SeqCst);
                    dirty.notify_one();
                    rejected
                },
            )
        };
        let handlers: Vec<Arc<dyn Handler>> = vec![Arc::new(addresses), Arc::new(authorizations)];
        let client = Client::start(channel, config, handlers);
        let status = client.watch();
        match l7 {
            super::k8s::L7Source::None => {}
            super::k8s::L7Source::File(path, every) => {
                self.watch_l7((path, every), store.clone(), dirty.clone());
            }
            super::k8s::L7Source::Kube(src) => {
                let (store, dirty, answered) = (store.clone(), dirty.clone(), answered.clone());
                self.watch_kube(src, store, dirty, answered, 4);
            }
        }
        let proxy = Proxy {
            inner: self.inner.clone(),
        };
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.spawn(
            async move {
                let mut retry = RETRY_INITIAL;
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => {
                            client.shutdown().await;
                            return;
                        }
                        () = dirty.notified() => {}
                    }
                    if first.is_some() && answered.load(std::sync::atomic::Ordering::SeqCst) != want {
                        continue;
                    }
                    let s = store.clone();
                    let built = tokio::task::spawn_blocking(move || {
                        let store = s.lock().unwrap_or_else(|p| p.into_inner());
                        (store.build(), store.len())
                    })
                    .await;
                    let (state, (workloads, services, policies)) = match built {
                        Ok(b) => b,
                        Err(e) => {
                            error!(error = %e, "building the state panicked; the last good state keeps serving");
                            continue;
                        }
                    };
                    debug!(workloads, services, policies, "xDS state built");
                    if proxy.apply_logged(state, "xDS state").await {
                        retry = RETRY_INITIAL;
                        if let Some(p) = first.take() {
                            p.done();
                        }
                    } else {
                        // Typically the CA is unreachable: try again even if istiod has
                        // nothing new to send.
                        let dirty = dirty.clone();
                        let wait = retry;
                        retry = (retry * 2).min(RETRY_MAX);
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            dirty.notify_one();
                        });
                    }
                }
            }
            .instrument(tracing::info_span!("xds")),
        );
        *self.inner.xds.lock().unwrap_or_else(|p| p.into_inner()) = Some(status.clone());
        XdsFollower { status }
    }

    /// Polls the L7 file; a changed, valid version goes into `store` and `dirty` asks for a
    /// rebuild. An invalid one is logged with file, field and reason, and counted.
    fn watch_l7(&self, (path, interval): L7File, store: Arc<Mutex<XdsStore>>, dirty: Arc<Notify>) {
        let inner = self.inner.clone();
        let cancel = self.inner.cancel.clone();
        let span = tracing::info_span!("l7_watch", file = %path.display());
        self.inner.tasks.spawn(
            async move {
                let mut last = read(&path).await;
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(interval) => {}
                    }
                    let now = read(&path).await;
                    if now.is_none() || now == last {
                        continue;
                    }
                    last = now.clone();
                    let text =
                        String::from_utf8_lossy(now.as_deref().unwrap_or_default()).into_owned();
                    let p = path.clone();
                    let parsed =
                        tokio::task::spawn_blocking(move || crate::config::parse_l7(&p, &text))
                            .await;
                    match parsed {
                        Ok(Ok(res)) => {
                            store.lock().unwrap_or_else(|p| p.into_inner()).set_l7(res);
                            info!("L7 file changed; rebuilding");
                            dirty.notify_one();
                        }
                        Ok(Err(e)) => {
                            inner.ctx.telemetry.rejected(e.to_string());
                            error!("L7 file rejected; the last good one keeps serving:\n{e}");
                        }
                        Err(e) => error!(error = %e, "L7 file parsing panicked"),
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// The file's bytes, read off the async workers; `None` when unreadable.
async fn read(path: &std::path::Path) -> Option<Vec<u8>> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::read(p))
        .await
        .ok()
        .and_then(Result::ok)
}
