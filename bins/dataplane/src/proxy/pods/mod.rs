//! ZDS pods in the runtime: the pods a CNI agent hands over, served in-pod through the same
//! listener plan as the Node's `netns` map. [`table`] is what the data path reads,
//! [`registry`] the sans-IO bookkeeping of the agent's messages; the driver that consumes the
//! events is `super::zds_pods`.

mod registry;
mod table;

pub(crate) use registry::{Added, Registry, validate};
pub(crate) use table::{Placement, Pod, PodTable, identity_mismatch};

use crate::config::MeshState;

/// The pods as `/config_dump` lists them: uid, name, namespace, service account and state
/// (`served`, `waiting` for istiod to describe it, `refused` with the identity disagreement,
/// or `shadowed` by a later pod with the same name). No secrets.
pub(crate) fn dump(pods: &PodTable, state: &MeshState, node: &str) -> Vec<serde_json::Value> {
    let mut v: Vec<_> = pods
        .pods()
        .values()
        .map(|p| {
            let i = &p.info;
            let w = state.node(node).and_then(|n| {
                n.workloads
                    .iter()
                    .find(|w| w.namespace == i.namespace && w.name == i.name)
            });
            let shadowed = pods
                .by_name(&i.namespace, &i.name)
                .is_some_and(|q| q.info.uid != i.uid);
            let status = match w {
                _ if shadowed => "shadowed".to_owned(),
                None => "waiting".to_owned(),
                Some(w) => match identity_mismatch(i, w) {
                    Some(why) => format!("refused: {why}"),
                    None => "served".to_owned(),
                },
            };
            serde_json::json!({
                "uid": i.uid,
                "name": i.name,
                "namespace": i.namespace,
                "serviceAccount": i.service_account,
                "state": status,
            })
        })
        .collect();
    v.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
    v
}
