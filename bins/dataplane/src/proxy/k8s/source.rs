//! Following the Kubernetes API for the L7 kinds: one watch per (kind, namespace) for the
//! namespaces that concern the proxy (re-read as the state changes), the objects in one
//! [`KubeObjects`], and a publisher that hands their resources to the xDS store and asks for a
//! rebuild, at most once per debounce window.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use super::super::runtime::Proxy;
use super::settings::KubeSource;
use super::shared::Shared;
use crate::config::k8s::{KUBE_KINDS, KubeObjects, WatchKey};
use crate::config::xds::XdsStore;

/// How often the namespaces that concern the proxy are re-read from its state.
const SCOPE_EVERY: Duration = Duration::from_millis(500);

/// The running watches, by namespace.
type Watches = HashMap<String, CancellationToken>;

impl Proxy {
    /// Follows the Kubernetes API for the L7 kinds: their resources replace `store`'s L7
    /// resources and `dirty` asks for a rebuild. Sets bit `synced` of `answered` once the
    /// first namespaces (own and root) are listed.
    pub(crate) fn watch_kube(
        &self,
        mut src: KubeSource,
        store: Arc<Mutex<XdsStore>>,
        dirty: Arc<Notify>,
        answered: Arc<AtomicU8>,
        synced: u8,
    ) {
        // A proxy that routes its own outbound HTTP (a sidecar) applies every service's
        // routes; one that does not (a waypoint) those of the services bound to it.
        src.settings.scope.every_service = self.inner.ctx.layers().outbound_http;
        let shared = Arc::new(Shared {
            objects: Mutex::new(KubeObjects::new(src.settings.limits)),
            changed: Notify::new(),
            unsynced: AtomicUsize::new(0),
            cap_warned: std::sync::atomic::AtomicBool::new(false),
            inner: self.inner.clone(),
        });
        let cancel = self.inner.cancel.clone();
        let publish = publish(
            shared.clone(),
            src.settings.debounce,
            store,
            dirty,
            answered,
            synced,
        );
        self.inner
            .tasks
            .spawn(publish.instrument(tracing::info_span!("kube_publish")));
        let proxy = Proxy {
            inner: self.inner.clone(),
        };
        let scope = async move {
            let mut watches = Watches::new();
            let mut seen: Option<usize> = None;
            let mut first = true;
            loop {
                let state = proxy.state();
                // The state's address tells a new state from the one already scoped.
                let at = Arc::as_ptr(&state) as usize;
                if seen != Some(at) {
                    seen = Some(at);
                    let (want, left_out) = src.settings.scope.namespaces(&state);
                    if left_out > 0 {
                        warn!(
                            left_out,
                            max = src.settings.scope.max_namespaces,
                            "more namespaces concern this proxy than --kube-max-namespaces: their L7 resources are not watched"
                        );
                    }
                    rescope(&shared, &src.client, &mut watches, &want, &cancel, first);
                    first = false;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(SCOPE_EVERY) => {}
                }
            }
        };
        self.inner
            .tasks
            .spawn(scope.instrument(tracing::info_span!("kube_watch")));
    }
}

/// Starts the watches of namespaces newly in `want`, stops (and forgets the objects of) those
/// no longer in it. `first`: the watches the first state waits for.
fn rescope(
    shared: &Arc<Shared>,
    client: &kube::Client,
    watches: &mut Watches,
    want: &BTreeSet<String>,
    cancel: &CancellationToken,
    first: bool,
) {
    let gone: Vec<String> = watches
        .keys()
        .filter(|ns| !want.contains(*ns))
        .cloned()
        .collect();
    for ns in gone {
        // Cancel before taking the lock: `watch::apply_event` checks the cancellation under
        // it, so no event of this watch applies after the forget below.
        if let Some(token) = watches.remove(&ns) {
            token.cancel();
        }
        let mut objects = shared.objects.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for kind in KUBE_KINDS {
            let key = WatchKey {
                kind: *kind,
                namespace: ns.clone(),
            };
            changed |= objects.forget(&key);
        }
        drop(objects);
        info!(namespace = %ns, "namespace no longer concerns this proxy: its L7 resources are dropped");
        if changed {
            shared.changed.notify_one();
        }
    }
    let new: Vec<&String> = want
        .iter()
        .filter(|ns| !watches.contains_key(*ns))
        .collect();
    for ns in new {
        let token = cancel.child_token();
        for kind in KUBE_KINDS {
            let key = WatchKey {
                kind: *kind,
                namespace: ns.clone(),
            };
            if first {
                shared.unsynced.fetch_add(1, Ordering::SeqCst);
            }
            let span = tracing::info_span!("kube", kind = kind.kind, namespace = %ns);
            let task = super::watch::run(shared.clone(), client.clone(), key, token.clone(), first);
            shared.inner.tasks.spawn(task.instrument(span));
        }
        debug!(namespace = %ns, "watching the namespace's L7 resources");
        watches.insert(ns.clone(), token);
    }
}

/// Publishes the objects' resources into the store, once per `debounce` window at most, and
/// only once the first watches have listed.
async fn publish(
    shared: Arc<Shared>,
    debounce: Duration,
    store: Arc<Mutex<XdsStore>>,
    dirty: Arc<Notify>,
    answered: Arc<AtomicU8>,
    synced: u8,
) {
    let cancel = shared.inner.cancel.clone();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = shared.changed.notified() => {}
        }
        // A burst of changes within the window becomes one rebuild.
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(debounce) => {}
        }
        if shared.unsynced.load(Ordering::SeqCst) > 0 {
            continue;
        }
        let s = shared.clone();
        let built = tokio::task::spawn_blocking(move || {
            let objects = s.objects.lock().unwrap_or_else(|p| p.into_inner());
            (objects.resources(), objects.len(), objects.rejected())
        })
        .await;
        let Ok(((resources, problems), held, rejected)) = built else {
            warn!("building the Kubernetes L7 resources panicked; the last good ones keep serving");
            continue;
        };
        for p in problems {
            warn!(object = %p.location, field = %p.field, reason = %p.reason, "Kubernetes object left out");
        }
        store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_l7(resources);
        debug!(
            held,
            rejected, "Kubernetes L7 resources changed; rebuilding"
        );
        answered.fetch_or(synced, Ordering::SeqCst);
        dirty.notify_one();
    }
}
