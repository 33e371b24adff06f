//! Following istiod: the workload-API resources of a Delta ADS stream feed the proxy's state.
//!
//! The xDS client's handlers validate each resource into the [`XdsStore`] (rejected ones are
//! NACKed by name and counted in `config_rejected`); a rebuild task then compiles the whole
//! [`MeshState`](crate::config::MeshState) off the async workers and applies it like a
//! reloaded file. Updates arriving while a rebuild runs coalesce into one more rebuild. While
//! the control plane is away the last applied state keeps serving.

use std::sync::{Arc, Mutex};

use mesh_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, Client, Handler, Rejection, Typed, pb};
use tokio::sync::Notify;
use tracing::{Instrument as _, error, info, warn};

use super::{Inner, Proxy};
use crate::config::xds::XdsStore;

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
    /// Subscribes to Istio's workload API (`Address`, `Authorization`) with `config` and
    /// applies every update to this proxy, starting from `store`.
    pub fn follow_xds(&self, store: XdsStore, config: mesh_xds::Config) -> XdsFollower {
        let store = Arc::new(Mutex::new(store));
        let dirty = Arc::new(Notify::new());
        let addresses = {
            let (store, dirty, inner) = (store.clone(), dirty.clone(), self.inner.clone());
            Typed::<pb::workload::Address, _>::new(ADDRESS_TYPE, move |upserts, removes| {
                let rejected = store
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply_addresses(upserts, removes);
                record(&inner, "Address", &rejected);
                dirty.notify_one();
                rejected
            })
        };
        let authorizations = {
            let (store, dirty, inner) = (store.clone(), dirty.clone(), self.inner.clone());
            Typed::<pb::security::Authorization, _>::new(
                AUTHORIZATION_TYPE,
                move |upserts, removes| {
                    let rejected = store
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply_authorizations(upserts, removes);
                    record(&inner, "Authorization", &rejected);
                    dirty.notify_one();
                    rejected
                },
            )
        };
        let handlers: Vec<Arc<dyn Handler>> = vec![Arc::new(addresses), Arc::new(authorizations)];
        let client = Client::start(config, handlers);
        let status = client.watch();
        let proxy = Proxy {
            inner: self.inner.clone(),
        };
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.spawn(
            async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => {
                            client.stop();
                            return;
                        }
                        () = dirty.notified() => {}
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
                    match proxy.apply(state).await {
                        Ok(r) => info!(
                            generation = r.generation,
                            workloads,
                            services,
                            policies,
                            listeners_added = r.listeners_added,
                            listeners_removed = r.listeners_removed,
                            connections_closed = r.connections_closed,
                            "xDS state applied"
                        ),
                        Err(e) => {
                            proxy.inner.ctx.telemetry.rejected(e.to_string());
                            error!(error = %e, "xDS state not applied; the last good state keeps serving");
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("xds")),
        );
        *self.inner.xds.lock().unwrap_or_else(|p| p.into_inner()) = Some(status.clone());
        XdsFollower { status }
    }
}
