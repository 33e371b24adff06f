//! The Delta ADS client: the IO around a [`Session`]. It opens streams on a channel the
//! caller built (plaintext, or TLS with the caller's roots), sends what the session says,
//! hands updates to the [`Handler`]s and reconnects with jittered exponential backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument as _, debug, info, warn};

use crate::session::{Received, Session, nack_detail};
use crate::{Error, Handler, NodeInfo, Rejection};

/// `type.googleapis.com/istio.workload.Address`.
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// `type.googleapis.com/istio.security.Authorization`.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// Client settings. How to reach the control plane (TLS roots, server name, HTTP/2
/// keepalive, TCP/TLS connect timeout) is the channel's business, given to
/// [`Client::start`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The control plane's address, as shown in logs and errors.
    pub address: String,
    /// A file holding the bearer token sent as `authorization: Bearer …`, re-read at each
    /// stream (projected service-account tokens rotate).
    pub token_file: Option<PathBuf>,
    /// This proxy.
    pub node: NodeInfo,
    /// How long the control plane may take to answer a new stream.
    pub connect_timeout: Duration,
    /// First reconnect delay (doubled per failure, jittered ±50 %).
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
}

impl Config {
    /// Defaults for `address` and `node`: answer within 10 s, backoff 500 ms to 30 s.
    pub fn new(address: impl Into<String>, node: NodeInfo) -> Config {
        Config {
            address: address.into(),
            token_file: None,
            node,
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
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
    /// The last connection error (an [`Error`], displayed).
    pub last_error: Option<String>,
}

/// A running client; dropping it stops the client.
pub struct Client {
    status: watch::Receiver<Status>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Starts the client on the current runtime, streaming over `channel`: one that
    /// (re)connects by itself, such as tonic's `Endpoint::connect_lazy` or
    /// `mesh_identity::grpc::ControlPlane::lazy_channel` for TLS. Its HTTP/2 keepalive is what
    /// notices a control plane that went silent.
    pub fn start(
        channel: tonic::transport::Channel,
        config: Config,
        handlers: Vec<Arc<dyn Handler>>,
    ) -> Client {
        let (status_tx, status) = watch::channel(Status::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let span = tracing::info_span!("xds_client", address = %config.address);
        let task =
            tokio::spawn(run(channel, config, handlers, status_tx, stopped).instrument(span));
        Client { status, stop, task }
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

    /// Stops the client (its task ends at its next await).
    pub fn stop(self) {
        let _ = self.stop.send(());
    }

    /// Stops the client and waits until its task ended: the stream is closed and no handler
    /// runs any more.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn run(
    channel: tonic::transport::Channel,
    config: Config,
    handlers: Vec<Arc<dyn Handler>>,
    status: watch::Sender<Status>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut session = Session::new(config.node.clone(), handlers.iter().map(|h| h.type_url()));
    let mut backoff = config.backoff_initial;
    loop {
        let stream = stream(&channel, &config, &handlers, &status, &mut session);
        let outcome = tokio::select! {
            _ = &mut stopped => return,
            r = stream => r,
        };
        status.send_modify(|s| s.connected = false);
        match outcome {
            Ok(true) => backoff = config.backoff_initial,
            Ok(false) => {}
            Err(e) => {
                warn!(address = %config.address, error = %e, "xDS stream failed; the last state keeps serving");
                status.send_modify(|s| s.last_error = Some(e.to_string()));
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

/// One stream: subscribe, apply, ACK/NACK until it ends. `Ok(true)` when it carried at least
/// one response (so the backoff resets).
async fn stream(
    channel: &tonic::transport::Channel,
    config: &Config,
    handlers: &[Arc<dyn Handler>],
    status: &watch::Sender<Status>,
    session: &mut Session,
) -> Result<bool, Error> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    let subscriptions = session.start();
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(subscriptions.len().max(16));
    for req in subscriptions {
        tx.send(req).await.map_err(|_| Error::RequestsClosed {
            address: config.address.clone(),
        })?;
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(path) = &config.token_file {
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| Error::TokenFile {
                path: path.clone(),
                source,
            })?;
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| Error::BadToken { path: path.clone() })?;
        request.metadata_mut().insert("authorization", value);
    }
    // A control plane that accepted the connection but never answers the stream is given up
    // on like one that cannot be reached.
    let mut responses = tokio::time::timeout(
        config.connect_timeout,
        client.delta_aggregated_resources(request),
    )
    .await
    .map_err(|_| Error::NoAnswer {
        address: config.address.clone(),
        timeout: config.connect_timeout,
    })?
    .map_err(|e| Error::Stream {
        address: config.address.clone(),
        source: Box::new(e),
    })?
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
            Err(e) if any => {
                warn!(error = %e, "xDS stream ended");
                return Ok(true);
            }
            Err(e) => {
                return Err(Error::Stream {
                    address: config.address.clone(),
                    source: Box::new(e),
                });
            }
        };
        any = true;
        let Some(reply) = answer(session, handlers, resp) else {
            continue;
        };
        count(status, &reply);
        if tx.send(reply).await.is_err() {
            return Ok(true);
        }
    }
}

/// Applies one response through `session` and its handler; the ACK or NACK to send.
fn answer(
    session: &mut Session,
    handlers: &[Arc<dyn Handler>],
    resp: envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
) -> Option<DeltaDiscoveryRequest> {
    match session.receive(resp) {
        Received::Reply(r) => Some(*r),
        Received::Apply(update) => {
            // The session subscribes to the handlers' types only, so one is found; the
            // first of several for a type wins.
            let rejected = match handlers.iter().find(|h| h.type_url() == update.type_url) {
                Some(h) => h.apply(update.upserts, update.removes),
                None => update
                    .upserts
                    .into_iter()
                    .map(|(name, _)| Rejection {
                        name,
                        reason: "no handler".into(),
                    })
                    .collect(),
            };
            session.complete(update.ticket, rejected)
        }
    }
}

/// Counts an ACK or NACK in the status.
fn count(status: &watch::Sender<Status>, reply: &DeltaDiscoveryRequest) {
    match nack_detail(reply) {
        None => status.send_modify(|s| s.acks += 1),
        Some(detail) => {
            warn!(type_url = %reply.type_url, nonce = %reply.response_nonce, %detail, "xDS update partly rejected (NACK); the rest applied");
            status.send_modify(|s| {
                s.nacks += 1;
                s.last_nack = Some(detail.to_owned());
            });
        }
    }
}
