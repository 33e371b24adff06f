//! The steps of applying a plan to a running proxy, shared by a new config
//! ([`Proxy::apply`]) and a new set of ZDS pods ([`Proxy::apply_pods`]): plan, stage
//! (certificates, namespaces, binds: nothing running changes, a failure drops what was bound),
//! switch the listeners, forget certificates no longer needed.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::info;

use super::listeners::{self, ListenerHandle};
use super::pods::PodTable;
use super::role::{ListenerAddrs, ListenerKey, Plan};
use super::runtime::{ApplyReport, Proxy};
use crate::Error;
use crate::config::MeshState;

/// What a plan needs bound before it is swapped in.
pub(super) struct Staged {
    pub(super) server_tls: HashMap<std::net::IpAddr, Arc<rustls::ServerConfig>>,
    pub(super) namespaces: listeners::Namespaces,
    pub(super) pending: Vec<(ListenerKey, String, listeners::Pending)>,
}

impl Proxy {
    /// What `state` asks of this proxy, with the ZDS pods `pods`.
    pub(super) fn plan(&self, state: &MeshState, pods: &PodTable) -> Result<Plan, Error> {
        let cfg = &self.inner.ctx.cfg;
        cfg.role.serves().plan(&ListenerAddrs::of(cfg), state, pods)
    }

    /// Certificates, namespaces and binds of `plan`: nothing running changes, and a failure
    /// drops what was bound.
    pub(super) async fn stage(
        &self,
        plan: &Plan,
        trust_domain: &mesh_identity::TrustDomain,
        pods: &PodTable,
    ) -> Result<Staged, Error> {
        let ctx = &self.inner.ctx;
        let mut server_tls = HashMap::new();
        for (ip, id) in &plan.identities {
            let tls = mesh_identity::server_config(
                ctx.certs.store(id).await?,
                &ctx.bundle,
                vec![trust_domain.clone()],
            )?;
            server_tls.insert(*ip, tls);
        }
        let namespaces = listeners::open_namespaces(ctx, &plan.desired)?;
        let existing: Vec<ListenerKey> = {
            let l = self
                .inner
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            l.keys().cloned().collect()
        };
        let pending = listeners::bind_new(ctx, &plan.desired, &existing, &namespaces, pods).await?;
        Ok(Staged {
            server_tls,
            namespaces,
            pending,
        })
    }

    /// Starts the `pending` listeners and stops those `desired` no longer has, returning them
    /// (stopped: they accept nothing more; their connections go on).
    pub(super) fn switch_listeners(
        &self,
        pending: Vec<(ListenerKey, String, listeners::Pending)>,
        desired: &[(ListenerKey, String)],
        report: &mut ApplyReport,
    ) -> Result<Vec<(ListenerKey, ListenerHandle)>, Error> {
        let inner = &self.inner;
        // New listeners are our own addresses before they accept anything.
        self.refresh_own_addrs(pending.iter().filter_map(|(_, _, p)| p.local_addr()));
        for (key, what, p) in pending {
            let handle = listeners::start(&self.spawner(), what, p)?;
            let mut listeners = inner.listeners.lock().unwrap_or_else(|p| p.into_inner());
            listeners.insert(key, handle);
            report.listeners_added += 1;
        }
        let mut listeners = inner.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: std::collections::HashSet<&ListenerKey> =
            desired.iter().map(|(k, _)| k).collect();
        let gone: Vec<ListenerKey> = listeners
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        let mut removed = Vec::with_capacity(gone.len());
        for k in gone {
            if let Some(h) = listeners.remove(&k) {
                info!(addr = %h.listening.addr, what = %h.listening.what, "listener removed");
                h.stop.cancel();
                report.listeners_removed += 1;
                removed.push((k, h));
            }
        }
        Ok(removed)
    }

    /// Drops the certificates of identities `old` (with `pods`) had and `plan` has not.
    pub(super) fn forget_certs(&self, old: &MeshState, pods: &PodTable, plan: &Plan) {
        if let Ok(before) = self.plan(old, pods) {
            for (_, id) in &before.identities {
                if !plan.identities.iter().any(|(_, x)| x == id) {
                    self.inner.ctx.certs.remove(id);
                }
            }
        }
    }

    /// Serves the ZDS pods `pods` through the same steps as a config: binds the listeners of
    /// pods it adds (a failure changes nothing), swaps the table in, stops the listeners of
    /// pods it drops and returns them (their connections go on until the caller aborts them).
    pub(super) async fn apply_pods(
        &self,
        pods: PodTable,
    ) -> Result<Vec<(ListenerKey, ListenerHandle)>, Error> {
        let ctx = &self.inner.ctx;
        let _applying = self.inner.applying.lock().await;
        let state = ctx.state.load_full();
        let plan = self.plan(&state, &pods)?;
        let staged = self.stage(&plan, &state.trust_domain, &pods).await?;
        let old = ctx.pods.swap(Arc::new(pods));
        ctx.server_tls.store(Arc::new(staged.server_tls));
        ctx.netns.store(Arc::new(staged.namespaces));
        let mut report = ApplyReport::default();
        let removed = self.switch_listeners(staged.pending, &plan.desired, &mut report)?;
        self.forget_certs(&state, &old, &plan);
        self.refresh_own_addrs(std::iter::empty());
        Ok(removed)
    }
}
