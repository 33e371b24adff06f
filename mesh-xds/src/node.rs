//! Who this proxy is to the control plane: the `Node` of the first request.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// Who this proxy is to the control plane.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// Node id; istiod parses `type~ip~pod.namespace~namespace.svc.cluster.local`.
    pub id: String,
    /// `Node.cluster`.
    pub cluster: String,
    /// Node metadata (string values): Istio reads `NAMESPACE`, `NODE_NAME`, `CLUSTER_ID`.
    pub metadata: BTreeMap<String, String>,
}

impl NodeInfo {
    /// The node a ztunnel presents, as Istio's ztunnel builds it.
    pub fn ztunnel(
        ip: &str,
        pod: &str,
        namespace: &str,
        node_name: &str,
        cluster_id: &str,
    ) -> Self {
        let metadata = [
            ("NAMESPACE", namespace),
            ("NODE_NAME", node_name),
            ("CLUSTER_ID", cluster_id),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        NodeInfo {
            id: format!("ztunnel~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
            cluster: cluster_id.to_owned(),
            metadata,
        }
    }

    /// The envoy `Node` message.
    pub fn to_node(&self) -> Node {
        let fields = self
            .metadata
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value {
                        kind: Some(Kind::StringValue(v.clone())),
                    },
                )
            })
            .collect();
        Node {
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            metadata: Some(Struct { fields }),
            ..Node::default()
        }
    }
}
