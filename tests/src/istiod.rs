//! A fake istiod for end-to-end tests: Delta ADS serving Istio's workload API (`Address`,
//! `Authorization`) and the CA service (`IstioCertificateService`, signing with a local CA),
//! on two loopback ports. Tests change resources while proxies are connected, see every
//! request (ACK / NACK), kill the control plane and bring it back on the same ports.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_identity::LocalCa;
use mesh_identity::istio_ca::IMPERSONATED_IDENTITY;
use mesh_identity::istio_ca::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mesh_identity::istio_ca::pb::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_xds::pb;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tonic::{Request, Response, Status, Streaming};

pub use mesh_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

type Out = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// One CA request as the fake saw it.
#[derive(Debug, Clone)]
pub struct CaRequest {
    pub impersonated: Option<String>,
    pub authorization: Option<String>,
    pub cluster_id: Option<String>,
    pub validity_seconds: i64,
}

struct Stream {
    out: Out,
    subscribed: Vec<String>,
}

#[derive(Default)]
struct State {
    /// type → name → (version, resource).
    resources: HashMap<String, BTreeMap<String, (String, Any)>>,
    streams: Vec<Stream>,
    requests: Vec<DeltaDiscoveryRequest>,
    ca_requests: Vec<CaRequest>,
    version: u64,
    nonce: u64,
    /// Connection and accept tasks, aborted by `stop`.
    tasks: Vec<AbortHandle>,
    /// The CA answers `UNAVAILABLE` while set.
    ca_down: bool,
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
}

/// The fake control plane.
#[derive(Clone)]
pub struct FakeIstiod {
    pub xds_addr: SocketAddr,
    pub ca_addr: SocketAddr,
    state: Arc<Mutex<State>>,
    ca: Arc<LocalCa>,
}

#[derive(Clone)]
struct Ads(Arc<Mutex<State>>);

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

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
        if req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some("Bearer test-token")
        {
            return Err(Status::unauthenticated("bearer token required"));
        }
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let state = self.0.clone();
        let handle = tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                let mut st = state.lock().unwrap();
                st.requests.push(r.clone());
                // A request without a nonce is a subscription (first, or on resume): answer
                // with what the client lacks, per `initial_resource_versions`.
                if r.response_nonce.is_empty() {
                    let have = r.initial_resource_versions.clone();
                    let all = st.resources.get(&r.type_url).cloned().unwrap_or_default();
                    let resources: Vec<Resource> = all
                        .iter()
                        .filter(|(n, (v, _))| have.get(*n) != Some(v))
                        .map(|(n, (v, any))| Resource {
                            name: n.clone(),
                            version: v.clone(),
                            resource: Some(any.clone()),
                            ..Default::default()
                        })
                        .collect();
                    let removed: Vec<String> = have
                        .keys()
                        .filter(|n| !all.contains_key(*n))
                        .cloned()
                        .collect();
                    let resp = st.response(&r.type_url, resources, removed);
                    if let Some(s) = st.streams.iter_mut().find(|s| s.out.same_channel(&tx)) {
                        s.subscribed.push(r.type_url.clone());
                    } else {
                        st.streams.push(Stream {
                            out: tx.clone(),
                            subscribed: vec![r.type_url.clone()],
                        });
                    }
                    let _ = tx.try_send(Ok(resp));
                }
            }
        });
        self.0.lock().unwrap().tasks.push(handle.abort_handle());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[derive(Clone)]
struct Ca(Arc<Mutex<State>>, Arc<LocalCa>);

#[tonic::async_trait]
impl IstioCertificateService for Ca {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let header = |k: &str| {
            req.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let authorization = header("authorization");
        let cluster_id = header("clusterid");
        let r = req.into_inner();
        let impersonated = r
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        let down = {
            let mut st = self.0.lock().unwrap();
            st.ca_requests.push(CaRequest {
                impersonated: impersonated.clone(),
                authorization: authorization.clone(),
                cluster_id,
                validity_seconds: r.validity_duration,
            });
            st.ca_down
        };
        if down {
            return Err(Status::unavailable("CA down (test)"));
        }
        if authorization.as_deref() != Some("Bearer test-token") {
            return Err(Status::unauthenticated("bearer token required"));
        }
        let id: mesh_identity::SpiffeId = impersonated
            .ok_or_else(|| Status::permission_denied("a node proxy must impersonate"))?
            .parse()
            .map_err(|_| Status::invalid_argument("bad identity"))?;
        let ttl = Duration::from_secs(u64::try_from(r.validity_duration).unwrap_or(3600));
        let chain = self
            .1
            .sign_csr(&r.csr, &id, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

async fn serve_on<S>(l: tokio::net::TcpListener, svc: S, state: Arc<Mutex<State>>)
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let st = state.clone();
    let accept = tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let svc = svc.clone();
            let conn = tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper_util::service::TowerToHyperService::new(svc),
                        )
                        .await;
            });
            st.lock().unwrap().tasks.push(conn.abort_handle());
        }
    });
    state.lock().unwrap().tasks.push(accept.abort_handle());
}

impl FakeIstiod {
    /// Serves on two free loopback ports; certificates are signed by `ca`.
    pub async fn start(ca: LocalCa) -> FakeIstiod {
        let xds = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = FakeIstiod {
            xds_addr: xds.local_addr().unwrap(),
            ca_addr: cal.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State::default())),
            ca: Arc::new(ca),
        };
        f.listen(xds, cal).await;
        f
    }

    async fn listen(&self, xds: tokio::net::TcpListener, ca: tokio::net::TcpListener) {
        serve_on(
            xds,
            AggregatedDiscoveryServiceServer::new(Ads(self.state.clone())),
            self.state.clone(),
        )
        .await;
        serve_on(
            ca,
            IstioCertificateServiceServer::new(Ca(self.state.clone(), self.ca.clone())),
            self.state.clone(),
        )
        .await;
    }

    /// Kills the control plane: listeners closed, every connection dropped.
    pub fn stop(&self) {
        let mut st = self.state.lock().unwrap();
        for t in st.tasks.drain(..) {
            t.abort();
        }
        st.streams.clear();
    }

    /// Brings it back on the same ports, with the resources it holds.
    pub async fn restart(&self) {
        let xds = tokio::net::TcpListener::bind(self.xds_addr).await.unwrap();
        let ca = tokio::net::TcpListener::bind(self.ca_addr).await.unwrap();
        self.listen(xds, ca).await;
    }

    /// Adds or replaces resource `name` of `type_url`, pushing it to subscribed streams.
    pub fn set(&self, type_url: &str, name: &str, value: Vec<u8>) {
        self.set_many(type_url, vec![(name.to_owned(), value)]);
    }

    /// Adds or replaces several resources in one response.
    pub fn set_many(&self, type_url: &str, items: Vec<(String, Vec<u8>)>) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        let version = format!("v{}", st.version);
        let mut resources = Vec::new();
        for (name, value) in items {
            let any = Any {
                type_url: type_url.to_owned(),
                value,
            };
            st.resources
                .entry(type_url.to_owned())
                .or_default()
                .insert(name.clone(), (version.clone(), any.clone()));
            resources.push(Resource {
                name,
                version: version.clone(),
                resource: Some(any),
                ..Default::default()
            });
        }
        let resp = st.response(type_url, resources, Vec::new());
        st.push(type_url, resp);
    }

    /// Removes resource `name`, pushing the removal.
    pub fn remove(&self, type_url: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        if let Some(m) = st.resources.get_mut(type_url) {
            m.remove(name);
        }
        let resp = st.response(type_url, Vec::new(), vec![name.to_owned()]);
        st.push(type_url, resp);
    }

    /// Changes resources without pushing (as if changed while no proxy was connected).
    pub fn set_quietly(&self, type_url: &str, name: &str, value: Option<Vec<u8>>) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        let version = format!("v{}", st.version);
        let m = st.resources.entry(type_url.to_owned()).or_default();
        match value {
            Some(value) => {
                m.insert(
                    name.to_owned(),
                    (
                        version,
                        Any {
                            type_url: type_url.to_owned(),
                            value,
                        },
                    ),
                );
            }
            None => {
                m.remove(name);
            }
        }
    }

    /// Makes the CA answer `UNAVAILABLE` (or serve again).
    pub fn set_ca_down(&self, down: bool) {
        self.state.lock().unwrap().ca_down = down;
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The NACKs received: (type, error message).
    pub fn nacks(&self) -> Vec<(String, String)> {
        self.requests()
            .into_iter()
            .filter_map(|r| r.error_detail.map(|e| (r.type_url, e.message)))
            .collect()
    }

    /// Every CA request received.
    pub fn ca_requests(&self) -> Vec<CaRequest> {
        self.state.lock().unwrap().ca_requests.clone()
    }
}

impl State {
    fn push(&mut self, type_url: &str, resp: DeltaDiscoveryResponse) {
        self.streams.retain(|s| !s.out.is_closed());
        for s in &self.streams {
            if s.subscribed.iter().any(|t| t == type_url) {
                let _ = s.out.try_send(Ok(resp.clone()));
            }
        }
    }
}

/// An HBONE workload on `node` in namespace `ns`, with service account `sa`, member of
/// `services` (`namespace/hostname`, (service port, target port)).
pub fn workload(
    name: &str,
    ns: &str,
    ip: std::net::IpAddr,
    sa: &str,
    node: &str,
    services: &[(&str, u16, u16)],
) -> pb::workload::Workload {
    let mut map: HashMap<String, pb::workload::PortList> = HashMap::new();
    for (svc, port, target) in services {
        map.entry((*svc).to_owned())
            .or_default()
            .ports
            .push(pb::workload::Port {
                service_port: u32::from(*port),
                target_port: u32::from(*target),
                app_protocol: 0,
            });
    }
    pb::workload::Workload {
        uid: format!("Kubernetes//Pod/{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        addresses: vec![ip_bytes(ip)],
        tunnel_protocol: pb::workload::TunnelProtocol::Hbone as i32,
        service_account: sa.into(),
        node: node.into(),
        canonical_name: name.into(),
        canonical_revision: "v1".into(),
        workload_name: name.into(),
        services: map,
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    }
}

/// A service `hostname` with `vip` and TCP `ports` (service port, target port).
pub fn service(
    name: &str,
    ns: &str,
    vip: std::net::IpAddr,
    ports: &[(u16, u16)],
) -> pb::workload::Service {
    pb::workload::Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        addresses: vec![pb::workload::NetworkAddress {
            network: String::new(),
            address: ip_bytes(vip),
            length: None,
        }],
        ports: ports
            .iter()
            .map(|(p, t)| pb::workload::Port {
                service_port: u32::from(*p),
                target_port: u32::from(*t),
                app_protocol: pb::workload::AppProtocol::Tcp as i32,
            })
            .collect(),
        ..Default::default()
    }
}

pub fn ip_bytes(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Encodes a workload as an `Address` resource.
pub fn address_of_workload(w: pb::workload::Workload) -> Vec<u8> {
    pb::workload::Address {
        r#type: Some(pb::workload::address::Type::Workload(w)),
    }
    .encode_to_vec()
}

/// Encodes a service as an `Address` resource.
pub fn address_of_service(s: pb::workload::Service) -> Vec<u8> {
    pb::workload::Address {
        r#type: Some(pb::workload::address::Type::Service(s)),
    }
    .encode_to_vec()
}
