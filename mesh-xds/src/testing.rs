//! A fake Delta ADS control plane for tests (cargo feature `testing`; never in normal
//! builds): it serves resources per type URL, answers each subscription with what the client
//! lacks per its `initial_resource_versions`, pushes changes and removals to connected
//! clients, records every request (ACK / NACK) and can be killed and brought back on the same
//! port.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mesh_xds::testing::FakeAds;
//! let ads = FakeAds::start("127.0.0.1:0".parse().expect("an address")).await?;
//! ads.set(mesh_xds::ADDRESS_TYPE, "ns/w1", vec![]);
//! let channel = ads.channel(); // plaintext, lazy
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tonic::{Request, Response, Status, Streaming};

type Out = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;
type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// One open stream.
struct Stream {
    id: u64,
    out: Out,
    subscribed: Vec<String>,
    /// The task reading the client's requests.
    reader: Option<AbortHandle>,
}

#[derive(Default)]
struct State {
    /// type → name → (version, resource).
    resources: HashMap<String, BTreeMap<String, (String, Any)>>,
    streams: Vec<Stream>,
    requests: Vec<DeltaDiscoveryRequest>,
    /// The `authorization` header of each stream opened.
    authorizations: Vec<Option<String>>,
    /// Streams must carry `authorization: Bearer <this>`.
    bearer: Option<String>,
    version: u64,
    nonce: u64,
    stream_ids: u64,
    /// Accept and connection tasks, aborted by `stop`.
    tasks: Vec<AbortHandle>,
}

/// The fake control plane; clones share it.
#[derive(Clone)]
pub struct FakeAds {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// The number of requests received.
    received: Arc<watch::Sender<usize>>,
}

impl FakeAds {
    /// Serves on `bind` (port 0: a free port); any bearer token is accepted.
    pub async fn start(bind: SocketAddr) -> std::io::Result<FakeAds> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let ads = FakeAds {
            addr: listener.local_addr()?,
            state: Arc::default(),
            received: Arc::new(watch::channel(0).0),
        };
        ads.listen(listener);
        Ok(ads)
    }

    /// The address served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A plaintext channel to this server that connects on first use.
    pub fn channel(&self) -> tonic::transport::Channel {
        // A socket address always makes a valid `http://` URI.
        #[allow(clippy::expect_used)]
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("a socket address is a valid authority");
        endpoint.connect_lazy()
    }

    /// From now on, streams without `authorization: Bearer <token>` are refused
    /// (`UNAUTHENTICATED`); `None` accepts any.
    pub fn require_bearer(&self, token: Option<&str>) {
        self.lock().bearer = token.map(str::to_owned);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn listen(&self, listener: tokio::net::TcpListener) {
        let svc = AggregatedDiscoveryServiceServer::new(Ads {
            state: self.state.clone(),
            received: self.received.clone(),
        });
        let state = self.state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let svc = svc.clone();
                let conn = tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tcp),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
                });
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.tasks.retain(|t| !t.is_finished());
                st.tasks.push(conn.abort_handle());
            }
        });
        self.lock().tasks.push(accept.abort_handle());
    }

    /// Kills the server: listener closed, every connection dropped (resources are kept).
    pub fn stop(&self) {
        let mut st = self.lock();
        for t in st.tasks.drain(..) {
            t.abort();
        }
        for s in st.streams.drain(..) {
            if let Some(r) = s.reader {
                r.abort();
            }
        }
    }

    /// Brings it back on the same port, with the resources it holds.
    pub async fn restart(&self) -> std::io::Result<()> {
        // The aborted accept task drops the old listener at its next poll: retry briefly.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                r => break r?,
            }
        };
        self.listen(listener);
        Ok(())
    }

    /// Ends every open stream cleanly (gRPC OK), keeping connections and the listener, as a
    /// control plane does when it rebalances its clients.
    pub fn end_streams(&self) {
        for s in self.lock().streams.drain(..) {
            if let Some(r) = s.reader {
                r.abort();
            }
        }
    }

    /// Adds or replaces resource `name` of `type_url`, pushing it to subscribed streams.
    pub fn set(&self, type_url: &str, name: &str, value: Vec<u8>) {
        self.set_many(type_url, vec![(name.to_owned(), value)]);
    }

    /// Adds or replaces several resources, all with a new version, in one response.
    pub fn set_many(&self, type_url: &str, items: Vec<(String, Vec<u8>)>) {
        let mut st = self.lock();
        st.version += 1;
        let version = format!("v{}", st.version);
        let resources = items
            .into_iter()
            .map(|(name, value)| Resource {
                name,
                version: version.clone(),
                resource: Some(Any {
                    type_url: type_url.to_owned(),
                    value,
                }),
                ..Default::default()
            })
            .collect();
        st.push(type_url, resources, Vec::new());
    }

    /// Removes resource `name`, pushing the removal.
    pub fn remove(&self, type_url: &str, name: &str) {
        let mut st = self.lock();
        st.version += 1;
        st.push(type_url, Vec::new(), vec![name.to_owned()]);
    }

    /// Stores `resources` as given (versions, bodies of any type or none) and forgets
    /// `removed`, then pushes them in one response to subscribed streams; its nonce.
    pub fn push(&self, type_url: &str, resources: Vec<Resource>, removed: Vec<String>) -> String {
        self.lock().push(type_url, resources, removed)
    }

    /// Changes a resource without pushing (as if changed while no client was connected):
    /// `None` removes it.
    pub fn set_quietly(&self, type_url: &str, name: &str, value: Option<Vec<u8>>) {
        let mut st = self.lock();
        st.version += 1;
        let version = format!("v{}", st.version);
        let m = st.resources.entry(type_url.to_owned()).or_default();
        match value {
            Some(value) => {
                let any = Any {
                    type_url: type_url.to_owned(),
                    value,
                };
                m.insert(name.to_owned(), (version, any));
            }
            None => {
                m.remove(name);
            }
        }
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.lock().requests.clone()
    }

    /// Waits until at least `n` requests were received; all of them.
    pub async fn wait_requests(&self, n: usize) -> Vec<DeltaDiscoveryRequest> {
        let mut rx = self.received.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
        self.requests()
    }

    /// The NACKs received: (type, error message).
    pub fn nacks(&self) -> Vec<(String, String)> {
        self.requests()
            .into_iter()
            .filter_map(|r| r.error_detail.map(|e| (r.type_url, e.message)))
            .collect()
    }

    /// The `authorization` header of each stream opened, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.lock().authorizations.clone()
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        let mut st = self.lock();
        st.streams.retain(|s| !s.out.is_closed());
        st.streams.len()
    }
}

impl State {
    fn response(
        &mut self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> DeltaDiscoveryResponse {
        self.nonce += 1;
        DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            resources,
            removed_resources: removed,
            nonce: format!("n{}", self.nonce),
            system_version_info: format!("v{}", self.version),
            ..Default::default()
        }
    }

    /// Stores, then sends to every stream subscribed to `type_url`; the nonce.
    fn push(&mut self, type_url: &str, resources: Vec<Resource>, removed: Vec<String>) -> String {
        let stored = self.resources.entry(type_url.to_owned()).or_default();
        for name in &removed {
            stored.remove(name);
        }
        for r in &resources {
            let any = r.resource.clone().unwrap_or_default();
            stored.insert(r.name.clone(), (r.version.clone(), any));
        }
        let resp = self.response(type_url, resources, removed);
        self.streams.retain(|s| !s.out.is_closed());
        for s in &self.streams {
            if s.subscribed.iter().any(|t| t == type_url) {
                let _ = s.out.try_send(Ok(resp.clone()));
            }
        }
        resp.nonce
    }

    /// A subscription (a request without a nonce, first or on resume) on stream `id`: what
    /// the client lacks per `initial_resource_versions`, and what it holds that is gone.
    fn subscribe(&mut self, id: u64, r: &DeltaDiscoveryRequest) -> DeltaDiscoveryResponse {
        let have = &r.initial_resource_versions;
        let all = self.resources.get(&r.type_url);
        let resources = all
            .into_iter()
            .flatten()
            .filter(|(n, (v, _))| have.get(*n) != Some(v))
            .map(|(n, (v, any))| Resource {
                name: n.clone(),
                version: v.clone(),
                resource: Some(any.clone()),
                ..Default::default()
            })
            .collect();
        let removed = have
            .keys()
            .filter(|n| !all.is_some_and(|a| a.contains_key(*n)))
            .cloned()
            .collect();
        if let Some(s) = self.streams.iter_mut().find(|s| s.id == id) {
            s.subscribed.push(r.type_url.clone());
        }
        self.response(&r.type_url, resources, removed)
    }
}

#[derive(Clone)]
struct Ads {
    state: Arc<Mutex<State>>,
    received: Arc<watch::Sender<usize>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world is not served"))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (tx, rx) = mpsc::channel(64);
        let id = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.authorizations.push(authorization.clone());
            if let Some(token) = &st.bearer
                && authorization.as_deref() != Some(format!("Bearer {token}").as_str())
            {
                return Err(Status::unauthenticated("bearer token required"));
            }
            st.stream_ids += 1;
            let id = st.stream_ids;
            st.streams.push(Stream {
                id,
                out: tx.clone(),
                subscribed: Vec::new(),
                reader: None,
            });
            id
        };
        let mut incoming = req.into_inner();
        let (state, received) = (self.state.clone(), self.received.clone());
        let reader = tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.requests.push(r.clone());
                let n = st.requests.len();
                if r.response_nonce.is_empty() {
                    let resp = st.subscribe(id, &r);
                    let _ = tx.try_send(Ok(resp));
                }
                drop(st);
                received.send_replace(n);
            }
        });
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.streams.iter_mut().find(|s| s.id == id) {
            Some(s) => s.reader = Some(reader.abort_handle()),
            // Stopped meanwhile.
            None => reader.abort(),
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
