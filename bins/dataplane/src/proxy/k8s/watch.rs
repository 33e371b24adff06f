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
use crate::config::k8s::{Applied, WatchKey};

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
                Ok(ev) => on_event(&shared, &key, ev),
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

/// Applies one event; true when a list completed.
fn on_event(shared: &Shared, key: &WatchKey, ev: Event<DynamicObject>) -> bool {
    let value = |o: &DynamicObject| serde_json::to_value(o).unwrap_or_default();
    let mut objects = shared.objects.lock().unwrap_or_else(|p| p.into_inner());
    let (applied, done) = match ev {
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
            (
                if gone {
                    Applied::Changed
                } else {
                    Applied::Unchanged
                },
                false,
            )
        }
    };
    drop(objects);
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

/// Whether `e` is an HTTP 410 Gone to a watch request.
fn gone_at_start(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410)
}

/// Whether `e` says the kind is not installed (no CRD: a 404 on the list).
fn not_installed(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}
