//! One admission path for every inbound connection (HBONE and plaintext): register, then
//! decide on the state in force after registering, then stay guarded until the connection
//! ends. A config change re-checks every registered connection and cancels those it no longer
//! allows (Istio's ztunnel `ConnectionManager::assert_rbac`). Locked only to add, remove and
//! re-check, never per byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::MeshState;

/// The facts of a live inbound connection, kept to re-authorize it when policies change.
#[derive(Debug, Clone)]
pub(crate) struct LiveInbound {
    pub(crate) workload: String,
    pub(crate) source_ip: std::net::IpAddr,
    pub(crate) remote_ip: Option<std::net::IpAddr>,
    /// The peer's principal and namespace; `None` for plaintext.
    pub(crate) principal: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) destination: SocketAddr,
    pub(crate) close: CancellationToken,
}

impl LiveInbound {
    pub(crate) fn connection(&self) -> mesh_authz::Connection<'_> {
        mesh_authz::Connection {
            source_ip: self.source_ip,
            remote_ip: self.remote_ip,
            source_principal: self.principal.as_deref(),
            source_namespace: self.namespace.as_deref(),
            destination_ip: self.destination.ip(),
            destination_port: self.destination.port(),
        }
    }
}

/// Registry of live inbound connections. Locked only to add, remove and re-check on a config
/// change, never per byte.
#[derive(Default)]
pub(crate) struct LiveConns {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, LiveInbound>>,
}

/// Removes its connection from the registry when dropped.
pub(crate) struct LiveGuard<'a> {
    registry: &'a LiveConns,
    pub(crate) id: u64,
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl LiveConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveInbound>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one admission path of every inbound connection (HBONE and plaintext): register,
    /// then decide on the state in force after registering, then stay guarded. A policy
    /// change that lands at any point after the registration (during the app connect, or the
    /// connection's whole life) cancels `conn.close` (as Istio's ztunnel
    /// `ConnectionManager::assert_rbac`); one that landed before it is in the state decided
    /// on. `Err` is the reason of a refusal (the connection is then unregistered).
    pub(crate) fn admit(
        &self,
        conn: LiveInbound,
        state: &ArcSwap<MeshState>,
    ) -> Result<LiveGuard<'_>, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, conn);
        let guard = LiveGuard { registry: self, id };
        // Loaded after the registration: an apply that swaps the state later re-checks this
        // connection (it takes the lock after the swap).
        let state = state.load();
        let refused = self.lock().get(&id).and_then(|c| refusal(c, &state));
        match refused {
            Some(reason) => Err(reason),
            None => Ok(guard),
        }
    }

    /// Closes the connections `state` no longer allows (authorization, or STRICT peer
    /// authentication for plaintext ones); returns how many.
    pub(crate) fn reauthorize(&self, state: &MeshState) -> usize {
        let conns = self.lock();
        let mut closed = 0;
        for c in conns.values() {
            if let Some(reason) = refusal(c, state) {
                warn!(
                    target: "access",
                    direction = "inbound",
                    dst.workload = %c.workload,
                    src.principal = c.principal.as_deref().unwrap_or("-"),
                    dst.addr = %c.destination,
                    %reason,
                    "closing live connection: no longer allowed by the new policies"
                );
                c.close.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// Number of live inbound connections.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Why `state` refuses connection `c` (STRICT peer authentication for a plaintext one, or
/// authorization), or `None`.
fn refusal(c: &LiveInbound, state: &MeshState) -> Option<String> {
    if c.principal.is_none() && state.mtls.strict(&c.workload, c.destination.port()) {
        return Some("PeerAuthentication is STRICT".to_owned());
    }
    // A workload with waypoints accepts mTLS traffic only from them, also for tunnels opened
    // before a waypoint was attached.
    if let (Some(principal), Some(wps)) = (&c.principal, state.waypoints_of.get(&c.workload))
        && !wps.iter().any(|w| {
            let id = w.identity.as_str();
            id.strip_prefix("spiffe://").unwrap_or(id) == principal
        })
    {
        return Some("not from the workload's waypoint".to_owned());
    }
    let decision = state.authz.evaluate(&c.workload, &c.connection());
    (!decision.is_allowed()).then(|| decision.to_string())
}
