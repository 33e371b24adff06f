//! The source workload of a connection on an in-pod captured-outbound listener: the listener
//! belongs to one network namespace (a ZDS pod, or a path of the Node's `netns` map), so the
//! source is a workload placed in that namespace, never whichever workload has the peer's
//! address. A pod that adds another pod's address to its own interfaces and connects from it
//! is refused: it never gets that pod's identity (Istio's ztunnel, in-pod, takes the source
//! from the pod the listener was opened for, `src/proxy/outbound.rs`).
//!
//! A ZDS pod's listeners are bound when the agent hands the pod over, before istiod may have
//! described its workload: such a connection waits for the workload, polled, at most
//! [`WAIT_FOR_WORKLOAD`], then is refused.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::ctx::Ctx;
use super::pods::Placement;
use super::role::NetnsKey;
use crate::config::{MeshState, Workload};

/// How long a connection from a pod istiod has not described yet waits for it.
pub(super) const WAIT_FOR_WORKLOAD: Duration = Duration::from_secs(5);
/// How often the waiting connection looks at the state again.
const POLL: Duration = Duration::from_millis(100);

/// Why a connection on an in-pod outbound listener has no source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum NoSource {
    /// No workload is placed in the listener's namespace (istiod has not described the pod
    /// within [`WAIT_FOR_WORKLOAD`], or the pod is gone).
    #[error("no workload of this node is served in the listener's network namespace yet")]
    Unknown,
    /// The peer's address is not an address of the namespace's workload (spoofed).
    #[error("client address is not the address of the workload served in this network namespace")]
    Spoofed,
}

/// The workloads placed in namespace `ns` on this node.
fn placed<'a>(ctx: &Ctx, state: &'a MeshState, ns: &NetnsKey) -> Vec<&'a Arc<Workload>> {
    let Some(node) = state.node(&ctx.node_name) else {
        return Vec::new();
    };
    let pods = ctx.pods.load();
    node.workloads
        .iter()
        .filter(|w| match (ns, &w.netns) {
            (NetnsKey::Path(p), Some(path)) => p == path,
            (NetnsKey::Path(_), None) | (NetnsKey::Pod(_), Some(_)) => false,
            (NetnsKey::Pod(uid), None) => pods.placement(w) == Placement::Pod(uid),
        })
        .collect()
}

/// The source for a connection from `peer` on the outbound listener of namespace `ns`, in
/// `state` as it is now.
pub(super) fn resolve(
    ctx: &Ctx,
    state: &MeshState,
    ns: &NetnsKey,
    peer: IpAddr,
) -> Result<Arc<Workload>, NoSource> {
    let placed = placed(ctx, state, ns);
    if placed.is_empty() {
        return Err(NoSource::Unknown);
    }
    placed
        .into_iter()
        .find(|w| w.address == peer)
        .cloned()
        .ok_or(NoSource::Spoofed)
}

/// [`resolve`], waiting up to [`WAIT_FOR_WORKLOAD`] while the namespace has no workload yet.
pub(super) async fn wait_for(
    ctx: &Ctx,
    ns: &NetnsKey,
    peer: IpAddr,
) -> Result<Arc<Workload>, NoSource> {
    let deadline = tokio::time::Instant::now() + WAIT_FOR_WORKLOAD;
    loop {
        let r = resolve(ctx, &ctx.state.load(), ns, peer);
        match r {
            Err(NoSource::Unknown) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
            }
            r => return r,
        }
    }
}
