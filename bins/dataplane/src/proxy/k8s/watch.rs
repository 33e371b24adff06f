//! One watch: a kind in one namespace, through kube-runtime's `watcher` (list, then watch
//! from the list's resourceVersion with bookmarks; a `410 Gone` relists; errors back off),
//! each event applied to the shared [`KubeObjects`](crate::config::k8s::KubeObjects).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::settings::WATCH_TIMEOUT;
use super::shared::Shared;
use crate::config::k8s::{Applied, KubeObjects, WatchKey};

/// Objects per list page (client-go's default).
const PAGE_SIZE: u32 = 500;

/// Runs the watch `key` until `cancel`. `first` is true for the watches the first state waits
/// for: their first complete list (or a 404, the kind not installed) counts down
/// [`Shared::unsynced`].
pub(super) async fn run(
    shared: Arc<Shared>,
    client: kube::Client,
    key: WatchKey,
    cancel: CancellationToken,
    mut first: bool,
) {
    let k = key.kind;
    let resource = ApiResource {
        group: k.group.into(),
        version: k.version.into(),
        api_version: k.api_version(),
        kind: k.kind.into(),
        plural: k.plural.into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, &key.namespace, &resource);
    let config = watcher::Config::default()
        .timeout(u32::try_from(WATCH_TIMEOUT.as_secs()).unwrap_or(290))
        .page_size(PAGE_SIZE);
    // Each round is one watcher from a fresh list; a new round starts only when the watch
    // could not start because its resourceVersion is gone (below).
    loop {
        let mut events =
            std::pin::pin!(watcher::watcher(api.clone(), config.clone()).default_backoff());
        loop {
            let item = tokio::select! {
                () = cancel.cancelled() => return,
                item = events.next() => item,
            };
            let Some(item) = item else { return };
            let synced = match item {
                Ok(ev) => on_event(&shared, &key, ev, &cancel),
                Err(e) if gone_at_start(&e) => {
                    // Kubernetes API concepts, "Efficient detection of changes": on 410
                    // Gone clients list again. kube-runtime relists on an ERROR 410 event
                    // but retries the same resourceVersion forever on an HTTP 410 answer
                    // to the watch request: start over from a list.
                    warn!(kind = k.kind, namespace = %key.namespace, "resourceVersion gone (HTTP 410): listing again");
                    break;
                }
                Err(e) => {
                    let absent = not_installed(&e);
                    if absent {
                        debug!(kind = k.kind, namespace = %key.namespace, "kind not installed (404): none of it");
                    } else {
                        warn!(kind = k.kind, namespace = %key.namespace, error = %e, "Kubernetes watch failed; the last good objects keep serving, retrying");
                    }
                    absent
                }
            };
            if synced && std::mem::take(&mut first) {
                shared.unsynced.fetch_sub(1, Ordering::SeqCst);
                shared.changed.notify_one();
            }
        }
    }
}

/// Applies one event; true when a list completed. An event of a cancelled watch is dropped
/// (see [`apply_event`]).
fn on_event(
    shared: &Shared,
    key: &WatchKey,
    ev: Event<DynamicObject>,
    cancel: &CancellationToken,
) -> bool {
    let Some((applied, done)) = apply_event(&shared.objects, key, ev, cancel) else {
        debug!(kind = key.kind.kind, namespace = %key.namespace, "event of a cancelled watch dropped");
        return false;
    };
    match applied {
        Applied::Changed => shared.changed.notify_one(),
        Applied::Unchanged => {}
        Applied::Rejected { issues, fresh } => {
            for i in issues.iter().filter(|_| fresh) {
                let at = format!("kubernetes {}: {}: {}", i.location, i.field, i.reason);
                let capped = i.reason.contains("--kube-max-objects");
                if capped && shared.cap_warned.swap(true, Ordering::SeqCst) {
                    debug!(object = %i.location, reason = %i.reason, "Kubernetes object rejected");
                } else {
                    warn!(object = %i.location, field = %i.field, reason = %i.reason, "Kubernetes object rejected; the others apply");
                }
                shared.inner.ctx.telemetry.rejected(at);
            }
        }
    }
    done
}

/// Applies one event to `objects`: what it did and whether a list completed; `None` when the
/// watch is cancelled. The cancellation is checked under the lock: `rescope` cancels a watch
/// before it takes the lock to forget the watch's objects, so an event either lands before
/// the forget (and is forgotten with the rest) or sees the cancellation and is dropped; it
/// never re-inserts objects of a namespace nobody watches any more.
fn apply_event(
    objects: &std::sync::Mutex<KubeObjects>,
    key: &WatchKey,
    ev: Event<DynamicObject>,
    cancel: &CancellationToken,
) -> Option<(Applied, bool)> {
    let value = |o: &DynamicObject| serde_json::to_value(o).unwrap_or_default();
    let mut objects = objects.lock().unwrap_or_else(|p| p.into_inner());
    if cancel.is_cancelled() {
        return None;
    }
    Some(match ev {
        Event::Init => {
            objects.init(key);
            (Applied::Unchanged, false)
        }
        Event::InitApply(o) => (objects.init_apply(key, &value(&o)), false),
        Event::InitDone => {
            objects.init_done(key);
            (Applied::Changed, true)
        }
        Event::Apply(o) => (objects.apply(key, &value(&o)), false),
        Event::Delete(o) => {
            let gone = objects.delete(key, &value(&o));
            let applied = if gone {
                Applied::Changed
            } else {
                Applied::Unchanged
            };
            (applied, false)
        }
    })
}

/// Whether `e` is an HTTP 410 Gone to a watch request.
fn gone_at_start(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410)
}

/// Whether `e` says the kind is not installed (no CRD: a 404 on the list).
fn not_installed(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;

    use super::*;
    use crate::config::k8s::{KUBE_KINDS, KubeLimits};

    fn vs(ns: &str, name: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"hosts": [format!("{name}.{ns}.svc.cluster.local")],
                     "http": [{"route": [{"destination": {"host": "a"}}]}]},
        }))
        .unwrap()
    }

    fn key(ns: &str) -> WatchKey {
        WatchKey {
            kind: KUBE_KINDS[0],
            namespace: ns.into(),
        }
    }

    /// The race an attacker who can churn namespace labels would aim for: the scope drops a
    /// namespace (cancel, then forget) while its watch task is about to apply an event. The
    /// late event must not bring the namespace's objects back.
    #[test]
    fn an_event_after_cancel_and_forget_is_dropped() {
        let objects = Mutex::new(KubeObjects::new(KubeLimits::default()));
        let cancel = CancellationToken::new();
        let k = key("gone");
        let applied = apply_event(&objects, &k, Event::Apply(vs("gone", "a")), &cancel);
        assert_eq!(applied, Some((Applied::Changed, false)));
        // rescope: cancel first, then forget under the lock.
        cancel.cancel();
        assert!(objects.lock().unwrap().forget(&k));
        // The watch task was already past its select: its event arrives now.
        let late = apply_event(&objects, &k, Event::Apply(vs("gone", "b")), &cancel);
        assert_eq!(late, None);
        let late = apply_event(&objects, &k, Event::InitDone, &cancel);
        assert_eq!(late, None);
        assert!(objects.lock().unwrap().is_empty());
    }

    /// A namespace dropped then wanted again gets a new token: the new watch applies, the
    /// old one's stragglers do not.
    #[test]
    fn a_rewatched_namespace_takes_only_the_new_watch_events() {
        let objects = Mutex::new(KubeObjects::new(KubeLimits::default()));
        let (old, new) = (CancellationToken::new(), CancellationToken::new());
        let k = key("back");
        old.cancel();
        assert_eq!(
            apply_event(&objects, &k, Event::Apply(vs("back", "stale")), &old),
            None
        );
        let fresh = apply_event(&objects, &k, Event::Apply(vs("back", "fresh")), &new);
        assert_eq!(fresh, Some((Applied::Changed, false)));
        assert_eq!(objects.lock().unwrap().len(), 1);
    }
}
