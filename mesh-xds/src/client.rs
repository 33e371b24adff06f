//! The Delta ADS client.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// `type.googleapis.com/istio.workload.Address`.
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// `type.googleapis.com/istio.security.Authorization`.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// gRPC `INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

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

    fn to_node(&self) -> Node {
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

/// Client settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `http://host:port` (plaintext, tests and local control planes) or `https://host:port`.
    pub address: String,
    /// PEM roots that verify the control plane's certificate (https).
    pub ca_pem: Option<Vec<u8>>,
    /// Name the control plane's certificate must carry (default: the address's host).
    pub server_name: Option<String>,
    /// A file holding the bearer token sent as `authorization: Bearer …`, re-read at each
    /// connect (projected service-account tokens rotate).
    pub token_file: Option<PathBuf>,
    /// This proxy.
    pub node: NodeInfo,
    /// HTTP/2 ping interval; a control plane that stops answering is dropped after
    /// `keepalive_interval + keepalive_timeout`.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// Limit for the TCP/TLS/HTTP/2 connect.
    pub connect_timeout: Duration,
    /// First reconnect delay (doubled per failure, jittered ±50 %).
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
}

impl Config {
    /// Defaults for `address` and `node`: keepalive 30 s + 10 s, connect 10 s, backoff 500 ms
    /// to 30 s.
    pub fn new(address: impl Into<String>, node: NodeInfo) -> Config {
        Config {
            address: address.into(),
            ca_pem: None,
            server_name: None,
            token_file: None,
            node,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// A resource a handler did not apply, and why (sent back in the NACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Resource name.
    pub name: String,
    /// Reason.
    pub reason: String,
}

/// What to do with one resource type's updates.
pub trait Handler: Send + Sync + 'static {
    /// The type URL subscribed to.
    fn type_url(&self) -> &'static str;
    /// Applies one update: resources added or changed (name, encoded message) and names
    /// removed. Returns the resources it rejected; everything else is applied.
    fn apply(&self, upserts: Vec<(String, Vec<u8>)>, removes: Vec<String>) -> Vec<Rejection>;
}

/// A [`Handler`] for messages of type `T`: resources that do not decode are rejected, the
/// rest go to `f` decoded.
pub struct Typed<T, F> {
    type_url: &'static str,
    f: F,
    _t: PhantomData<fn() -> T>,
}

impl<T, F> Typed<T, F>
where
    T: prost::Message + Default,
    F: Fn(Vec<(String, T)>, Vec<String>) -> Vec<Rejection> + Send + Sync + 'static,
{
    /// A typed handler for `type_url`.
    pub fn new(type_url: &'static str, f: F) -> Typed<T, F> {
        Typed {
            type_url,
            f,
            _t: PhantomData,
        }
    }
}

impl<T, F> Handler for Typed<T, F>
where
    T: prost::Message + Default + 'static,
    F: Fn(Vec<(String, T)>, Vec<String>) -> Vec<Rejection> + Send + Sync + 'static,
{
    fn type_url(&self) -> &'static str {
        self.type_url
    }

    fn apply(&self, upserts: Vec<(String, Vec<u8>)>, removes: Vec<String>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        let mut decoded = Vec::with_capacity(upserts.len());
        for (name, bytes) in upserts {
            match T::decode(bytes.as_slice()) {
                Ok(m) => decoded.push((name, m)),
                Err(e) => rejected.push(Rejection {
                    name,
                    reason: format!("cannot decode as {}: {e}", self.type_url),
                }),
            }
        }
        rejected.extend((self.f)(decoded, removes));
        rejected
    }
}

/// The client's state, for readiness and admin pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// A stream to the control plane is up.
    pub connected: bool,
    /// Streams opened so far.
    pub connects: u64,
    /// Updates acknowledged / refused.
    pub acks: u64,
    /// NACKs sent.
    pub nacks: u64,
    /// The last NACK's detail.
    pub last_nack: Option<String>,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// A running client; dropping it stops the client.
pub struct Client {
    status: watch::Receiver<Status>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Client {
    /// Starts the client on the current runtime.
    pub fn start(config: Config, handlers: Vec<Arc<dyn Handler>>) -> Client {
        let (status_tx, status) = watch::channel(Status::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(run(config, handlers, status_tx, stopped));
        Client { status, stop }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Resolves once a stream is up.
    pub async fn wait_connected(&self) {
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| s.connected).await;
    }

    /// Stops the client.
    pub fn stop(self) {
        let _ = self.stop.send(());
    }
}

/// Versions of the resources applied, per type: sent as `initial_resource_versions` when
/// the stream resumes, so the control plane sends only what changed.
type Versions = HashMap<&'static str, HashMap<String, String>>;

async fn run(
    config: Config,
    handlers: Vec<Arc<dyn Handler>>,
    status: watch::Sender<Status>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut versions: Versions = HashMap::new();
    let mut backoff = config.backoff_initial;
    loop {
        let session = stream(&config, &handlers, &status, &mut versions);
        let outcome = tokio::select! {
            _ = &mut stopped => return,
            r = session => r,
        };
        status.send_modify(|s| s.connected = false);
        match outcome {
            Ok(true) => backoff = config.backoff_initial,
            Ok(false) => {}
            Err(e) => {
                warn!(address = %config.address, error = %e, "xDS stream failed; the last state keeps serving");
                status.send_modify(|s| s.last_error = Some(e));
            }
        }
        // Jitter ±50 % so a fleet of proxies does not reconnect in lockstep.
        let jitter = 0.5 + rand::random::<f64>();
        let delay = backoff.mul_f64(jitter);
        debug!(?delay, "xDS reconnect backoff");
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(delay) => {}
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// The control plane as [`mesh_identity::grpc`] connects to it: TLS with the given CA,
/// bounded connect, HTTP/2 keepalive.
fn control_plane(config: &Config) -> mesh_identity::grpc::ControlPlane {
    mesh_identity::grpc::ControlPlane {
        address: config.address.clone(),
        ca_pem: config.ca_pem.clone(),
        server_name: config.server_name.clone(),
        connect_timeout: config.connect_timeout,
        keepalive_interval: Some(config.keepalive_interval),
        keepalive_timeout: config.keepalive_timeout,
    }
}

/// One stream: subscribe, apply, ACK/NACK until it ends. `Ok(true)` when it carried at least
/// one response (so the backoff resets).
async fn stream(
    config: &Config,
    handlers: &[Arc<dyn Handler>],
    status: &watch::Sender<Status>,
    versions: &mut Versions,
) -> Result<bool, String> {
    let channel = control_plane(config).channel().await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    // The first request carries the node; each type resumes from the versions it has.
    for (i, h) in handlers.iter().enumerate() {
        let initial = versions.get(h.type_url()).cloned().unwrap_or_default();
        let req = DeltaDiscoveryRequest {
            node: (i == 0).then(|| config.node.to_node()),
            type_url: h.type_url().to_owned(),
            initial_resource_versions: initial,
            ..DeltaDiscoveryRequest::default()
        };
        tx.send(req).await.map_err(|e| e.to_string())?;
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(path) = &config.token_file {
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("token file {}: {e}", path.display()))?;
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| format!("token file {}: not a header value", path.display()))?;
        request.metadata_mut().insert("authorization", value);
    }
    // A control plane that accepted the connection but never answers the stream is given up
    // on like one that cannot be reached.
    let mut responses = tokio::time::timeout(
        config.connect_timeout,
        client.delta_aggregated_resources(request),
    )
    .await
    .map_err(|_| {
        format!(
            "{}: no answer within {:?}",
            config.address, config.connect_timeout
        )
    })?
    .map_err(|e| format!("DeltaAggregatedResources: {e}"))?
    .into_inner();
    info!(address = %config.address, "xDS stream up");
    status.send_modify(|s| {
        s.connected = true;
        s.connects += 1;
    });
    let mut any = false;
    loop {
        let resp = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(any),
            Err(e) => {
                return if any {
                    warn!(error = %e, "xDS stream ended");
                    Ok(true)
                } else {
                    Err(e.to_string())
                };
            }
        };
        any = true;
        let reply = handle(resp, handlers, versions, status);
        if tx.send(reply).await.is_err() {
            return Ok(true);
        }
    }
}

/// Applies one response and builds its ACK or NACK.
fn handle(
    resp: DeltaDiscoveryResponse,
    handlers: &[Arc<dyn Handler>],
    versions: &mut Versions,
    status: &watch::Sender<Status>,
) -> DeltaDiscoveryRequest {
    let mut reply = DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        ..DeltaDiscoveryRequest::default()
    };
    let Some(h) = handlers.iter().find(|h| h.type_url() == resp.type_url) else {
        nack(
            &mut reply,
            status,
            format!("not subscribed to {}", resp.type_url),
        );
        return reply;
    };
    let mut rejected = Vec::new();
    let mut upserts = Vec::with_capacity(resp.resources.len());
    let mut new_versions = Vec::with_capacity(resp.resources.len());
    for r in resp.resources {
        match r.resource {
            Some(any) if any.type_url == resp.type_url => {
                new_versions.push((r.name.clone(), r.version));
                upserts.push((r.name, any.value));
            }
            Some(any) => rejected.push(Rejection {
                name: r.name,
                reason: format!(
                    "resource of type {} in a {} response",
                    any.type_url, resp.type_url
                ),
            }),
            None => rejected.push(Rejection {
                name: r.name,
                reason: "no resource body".into(),
            }),
        }
    }
    let removes = resp.removed_resources;
    rejected.extend(h.apply(upserts, removes.clone()));
    // Versions of what was applied; rejected resources keep no version, so a resume asks
    // for them again.
    let known = versions.entry(h.type_url()).or_default();
    for name in &removes {
        known.remove(name);
    }
    for (name, version) in new_versions {
        if !rejected.iter().any(|r| r.name == name) {
            known.insert(name, version);
        }
    }
    if rejected.is_empty() {
        status.send_modify(|s| s.acks += 1);
    } else {
        let detail = rejected
            .iter()
            .map(|r| format!("{}: {}", r.name, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        warn!(type_url = %resp.type_url, nonce = %resp.nonce, %detail, "xDS update partly rejected (NACK); the rest applied");
        nack(&mut reply, status, detail);
    }
    reply
}

/// Turns `reply` into a NACK with `detail`, counted in the status.
fn nack(reply: &mut DeltaDiscoveryRequest, status: &watch::Sender<Status>, detail: String) {
    status.send_modify(|s| {
        s.nacks += 1;
        s.last_nack = Some(detail.clone());
    });
    reply.error_detail = Some(RpcStatus {
        code: INVALID_ARGUMENT,
        message: detail,
        ..RpcStatus::default()
    });
}
