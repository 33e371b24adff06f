//! The driver of the ZDS pods: consumes the [`PodEvent`]s of the CNI agent's connection,
//! keeps the [`Registry`], opens each pod's namespace from its fd, and applies every change
//! through the proxy's one apply path ([`Proxy::apply_pods`]): a pod's in-pod listeners are
//! the same as those of a Node's `netns` workload.
//!
//! Deleting a pod (or a re-sync that leaves it out) closes its listeners at once, so new
//! connections are refused, and gives its open connections the proxy's drain timeout
//! (`--drain-timeout`, 5 s) before they are aborted: the pod is going away (Istio drains a
//! deleted pod's proxy immediately, `DrainMode::Immediate`; we let short exchanges finish).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{Instrument, info, warn};

use super::listeners::ListenerHandle;
use super::pods::{Added, Pod, PodTable, Registry, identity_mismatch, validate};
use super::role::{ListenerKey, NetnsKey};
use super::runtime::Proxy;
use crate::sockets::Netns;
use crate::zds::{PodEvent, PodInfo};

/// What the registry keeps per pod: its open namespace.
type Open = Arc<Netns>;

impl Proxy {
    /// Serves the pods of a CNI agent (ZDS) from `events` until the proxy stops (call it on
    /// the proxy's runtime). This node's workloads are served in-pod when their pod is handed
    /// over, and wait (no listeners) until then (as from the start with
    /// `ProxyConfig::zds_pods`). Each event is answered on its `reply`: `Err` with the reason
    /// (a bad namespace fd, an identity that disagrees with istiod's, a bind that failed)
    /// leaves every other pod as it was.
    pub fn serve_pods(&self, events: mpsc::Receiver<PodEvent>) {
        let ctx = &self.inner.ctx;
        if !ctx.pods.load().enabled {
            ctx.pods.store(Arc::new(PodTable::new(true)));
        }
        let proxy = Proxy {
            inner: self.inner.clone(),
        };
        let cancel = self.inner.cancel.clone();
        let span = tracing::info_span!("zds_pods");
        self.inner.tasks.spawn(
            async move {
                let mut driver = Driver {
                    proxy,
                    registry: Registry::default(),
                };
                // Workloads served on this host before ZDS was on now wait for their pods.
                if let Err(e) = driver.sync(Vec::new()).await {
                    warn!(error = %e, "pods: re-planning failed");
                }
                let mut events = events;
                loop {
                    let ev = tokio::select! {
                        () = cancel.cancelled() => return,
                        ev = events.recv() => ev,
                    };
                    match ev {
                        Some(ev) => driver.handle(ev).await,
                        None => return,
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Events in flight between the agent's connection and the driver (each waits for its reply,
/// so one or two are; the bound only keeps a burst from growing memory).
const EVENTS: usize = 16;

impl Proxy {
    /// Connects to the CNI agent's socket `path` (ZDS, Istio's `INPOD_UDS`) and serves the
    /// pods it hands over ([`Proxy::serve_pods`]) until the proxy stops; a lost agent is
    /// reconnected with backoff. `/healthz/ready` waits for the agent's snapshot (and again
    /// while it is away), as Istio's ztunnel does in-pod (`zds::serve_ready`).
    pub fn follow_cni_agent(&self, path: std::path::PathBuf) {
        let (tx, rx) = mpsc::channel(EVENTS);
        self.serve_pods(rx);
        let cancel = self.inner.cancel.clone();
        let span = tracing::info_span!("zds", socket = %path.display());
        let limits = crate::zds::Limits::default();
        let readiness = self.inner.readiness.clone();
        let serve = crate::zds::serve_ready(path, tx, cancel, limits, readiness);
        self.inner.release_startup(crate::zds::READINESS_TASK);
        self.inner.tasks.spawn(
            async move {
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "ZDS: no pods will be handed over");
                }
            }
            .instrument(span),
        );
    }
}

struct Driver {
    proxy: Proxy,
    registry: Registry<Open>,
}

impl Driver {
    async fn handle(&mut self, ev: PodEvent) {
        match ev {
            PodEvent::Add { info, netns, reply } => {
                let r = self.add(info, netns).await;
                let _ = reply.send(r);
            }
            PodEvent::Connected => {
                info!("CNI agent connected: re-sync starts");
                self.registry.connected();
            }
            PodEvent::Keep { uid, reply } => {
                let _ = reply.send(self.registry.keep(&uid));
            }
            PodEvent::Del { uid, reply } => {
                let r = match self.registry.del(&uid) {
                    Some(e) => {
                        info!(uid, name = %e.info.name, namespace = %e.info.namespace, "pod deleted");
                        self.sync(vec![uid]).await
                    }
                    None => Ok(()),
                };
                let _ = reply.send(r);
            }
            PodEvent::SnapshotSent { reply } => {
                let gone: Vec<String> = self
                    .registry
                    .snapshot_sent()
                    .into_iter()
                    .map(|e| e.info.uid)
                    .collect();
                if !gone.is_empty() {
                    info!(pods = ?gone, "re-sync: pods the agent no longer has are removed");
                }
                let _ = reply.send(self.sync(gone).await);
            }
        }
    }

    /// Serves a pod: the namespace checked and entered, the identity checked against
    /// istiod's, its listeners bound. Re-sent from the same namespace: nothing changes.
    async fn add(&mut self, info: PodInfo, fd: OwnedFd) -> Result<(), String> {
        validate(&info)?;
        let who = format!("pod {}/{} ({})", info.namespace, info.name, info.uid);
        let id = Netns::id_of(&fd).map_err(|e| format!("{who}: network namespace fd: {e}"))?;
        if self.registry.is_same(&info.uid, id) {
            let open = self.open_of(id).ok_or("pod not found")?;
            self.registry.add(info, id, open)?;
            return Ok(());
        }
        self.check_identity(&info)
            .map_err(|e| format!("{who}: {e}"))?;
        let mark = Some(
            self.proxy
                .inner
                .ctx
                .cfg
                .socket_mark
                .unwrap_or(crate::sockets::DEFAULT_SOCKET_MARK),
        );
        // One thread per namespace, whatever the number of uids the agent names in it.
        let netns = match self.open_of(id) {
            Some(open) => open,
            None => {
                let label = format!("zds:{}/{}", info.namespace, info.name);
                tokio::task::spawn_blocking(move || Netns::from_fd(fd, &label, mark))
                    .await
                    .map_err(|e| format!("{who}: network namespace: {e}"))?
                    .map_err(|e| format!("{who}: network namespace fd: {e}"))?
            }
        };
        let uid = info.uid.clone();
        if let Added::Replaced(_) = self.registry.add(info, id, netns)? {
            // A new sandbox for the same pod: the old namespace's listeners go first (their
            // keys are the pod's uid), then the new ones are bound.
            info!(%who, "pod re-added with another network namespace: replacing");
            let netns = self.registry.del(&uid).map(|e| (e.info, e.payload));
            self.sync(vec![uid.clone()]).await?;
            if let Some((info, netns)) = netns {
                self.registry.add(info, id, netns)?;
            }
        }
        if let Err(e) = self.sync(Vec::new()).await {
            self.registry.del(&uid);
            let _ = self.sync(vec![uid]).await;
            return Err(format!("{who}: {e}"));
        }
        info!(%who, "pod added");
        Ok(())
    }

    /// The namespace with identity `id` when a served pod already has it open.
    fn open_of(&self, id: (u64, u64)) -> Option<Open> {
        self.registry
            .pods()
            .values()
            .find(|e| e.netns_id == id)
            .map(|e| e.payload.clone())
    }

    /// Refuses a pod whose service account or trust domain disagrees with the workload istiod
    /// describes for it (when istiod already does).
    fn check_identity(&self, info: &PodInfo) -> Result<(), String> {
        let ctx = &self.proxy.inner.ctx;
        let state = ctx.state.load();
        let Some(node) = state.node(&ctx.node_name) else {
            return Ok(());
        };
        let w = node
            .workloads
            .iter()
            .find(|w| w.namespace == info.namespace && w.name == info.name);
        match w.and_then(|w| identity_mismatch(info, w)) {
            Some(why) => Err(format!("identity disagrees with istiod: {why}")),
            None => Ok(()),
        }
    }

    /// Applies the registry's pods; the listeners of pods in `gone`, and of pods shadowed by a
    /// later pod of the same namespace and name (a StatefulSet pod re-created: the new uid's
    /// Add comes before the old one's Del), get the drain bound.
    async fn sync(&mut self, mut gone: Vec<String>) -> Result<(), String> {
        let pods: HashMap<String, Arc<Pod>> = self
            .registry
            .pods()
            .iter()
            .map(|(uid, e)| {
                let pod = Pod {
                    info: e.info.clone(),
                    netns: e.payload.clone(),
                    seq: e.seq,
                };
                (uid.clone(), Arc::new(pod))
            })
            .collect();
        let table = PodTable::with_pods(true, pods);
        gone.extend(table.shadowed());
        let removed = self
            .proxy
            .apply_pods(table)
            .await
            .map_err(|e| e.to_string())?;
        self.drain(removed, &gone);
        Ok(())
    }

    /// Aborts the connections of the removed listeners of pods in `gone` once the drain
    /// timeout has passed (or at once when the proxy is forced down).
    fn drain(&self, removed: Vec<(ListenerKey, ListenerHandle)>, gone: &[String]) {
        let forces: Vec<_> = removed
            .into_iter()
            .filter(|(k, _)| {
                matches!(k, ListenerKey::InPod(NetnsKey::Pod(uid), _, _) if gone.contains(uid))
            })
            .map(|(_, h)| h.force)
            .collect();
        if forces.is_empty() {
            return;
        }
        let inner = &self.proxy.inner;
        let bound = inner.ctx.cfg.drain_timeout;
        let force = inner.force.clone();
        inner.tasks.spawn(
            async move {
                tokio::select! {
                    () = tokio::time::sleep(bound) => {}
                    () = force.cancelled() => {}
                }
                for f in forces {
                    f.cancel();
                }
            }
            .instrument(tracing::info_span!("pod_drain")),
        );
    }
}
