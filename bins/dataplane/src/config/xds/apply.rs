//! Applying workload-API updates to the store: each resource converted and validated on its
//! own ([`XdsStore::apply_addresses`], [`XdsStore::apply_authorizations`]); a bad one is
//! rejected by name, an unconvertible policy fails closed.

use mesh_xds::Rejection;
use mesh_xds::pb::security as sec;
use mesh_xds::pb::workload as wl;

use super::convert::service;
use super::store::{Old, XdsStore};

fn reject(name: &str, reason: impl Into<String>) -> Rejection {
    Rejection {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

impl XdsStore {
    /// Applies an update of `istio.workload.Address` resources; returns the rejected ones
    /// (left out; a rejected update of an existing resource keeps the previous version).
    pub fn apply_addresses(
        &mut self,
        upserts: Vec<(String, wl::Address)>,
        removes: Vec<String>,
    ) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        for name in removes {
            self.forget(&name);
        }
        for (name, address) in upserts {
            match address.r#type {
                Some(wl::address::Type::Workload(w)) => match self.workload(&w) {
                    Ok(x) => {
                        self.forget(&name);
                        self.touch(x.services.iter().map(|(k, _)| k.clone()));
                        self.lock_cache()
                            .changed
                            .entry(name.clone())
                            .or_insert(None);
                        self.workloads.insert(name, x);
                    }
                    Err(e) => rejected.push(reject(&name, format!("Workload: {e}"))),
                },
                Some(wl::address::Type::Service(s)) => match service(&s, &self.network) {
                    Ok(x) => {
                        self.forget(&name);
                        self.touch([x.key.clone()]);
                        self.lock_cache().full = true;
                        self.services.insert(name, x);
                    }
                    Err(e) => rejected.push(reject(&name, format!("Service: {e}"))),
                },
                None => rejected.push(reject(
                    &name,
                    "Address holds neither a workload nor a service",
                )),
            }
        }
        rejected
    }

    /// Removes resource `name` (a workload or a service), marking the services it touched.
    fn forget(&mut self, name: &str) {
        if let Some(old) = self.workloads.remove(name) {
            let services: Vec<String> = old.services.into_iter().map(|(k, _)| k).collect();
            self.touch(services.iter().cloned());
            self.lock_cache()
                .changed
                .entry(name.to_owned())
                .or_insert(Some(Old {
                    arc: old.arc,
                    key: old.key,
                    services,
                }));
        }
        if let Some(old) = self.services.remove(name) {
            self.touch([old.key]);
            self.lock_cache().full = true;
        }
    }

    /// Applies an update of `istio.security.Authorization` resources; returns the rejected
    /// ones.
    pub fn apply_authorizations(
        &mut self,
        upserts: Vec<(String, sec::Authorization)>,
        removes: Vec<String>,
    ) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        self.lock_cache().full = true;
        for name in removes {
            self.policies.remove(&name);
            self.failed.remove(&name);
        }
        for (name, a) in upserts {
            match self.authorization(&a) {
                Ok(p) => {
                    self.failed.remove(&name);
                    self.policies.insert(name, p);
                }
                // Istio never enforces a dry-run policy: unsupported here, and not enforced.
                Err(e) if a.dry_run => {
                    self.policies.remove(&name);
                    self.failed.remove(&name);
                    rejected.push(reject(&name, format!("Authorization: {e}")));
                }
                Err(e) => {
                    // Fail closed until a valid version arrives (see `fail_closed`).
                    let reason = format!("Authorization: {e}");
                    tracing::warn!(policy = %name, %reason, "unconvertible policy: denying what it applies to");
                    self.policies
                        .insert(name.clone(), super::super::fail_closed::deny_all(&name, &a));
                    self.failed.insert(name.clone(), reason.clone());
                    rejected.push(reject(&name, reason));
                }
            }
        }
        rejected
    }
}
