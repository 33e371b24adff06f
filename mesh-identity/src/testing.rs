//! A fake Istio CA for tests (cargo feature `testing`; never in normal builds): a gRPC
//! `istio.v1.auth.IstioCertificateService` that signs CSRs with a [`LocalCa`] for the identity
//! a node proxy impersonates (`ImpersonatedIdentity`), records each request's impersonation,
//! `authorization` and `clusterid` headers, can be made unavailable, killed and brought back on
//! the same port.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_identity::LocalCa;
//! use mesh_identity::testing::FakeCa;
//! let (ca, _) = LocalCa::load_or_create("/tmp/fake-ca")?;
//! let fake = FakeCa::start(ca, "127.0.0.1:0".parse()?).await?;
//! fake.require_bearer(Some("test-token"));
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prost_types::value::Kind;
use tokio::task::AbortHandle;
use tonic::{Request, Response, Status};

use crate::istio_ca::IMPERSONATED_IDENTITY;
use crate::istio_ca::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::istio_ca::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::{LocalCa, SpiffeId};

/// One CA request as the fake saw it.
#[derive(Debug, Clone)]
pub struct CaRequest {
    /// The `ImpersonatedIdentity` of the request's metadata.
    pub impersonated: Option<String>,
    /// The `authorization` header.
    pub authorization: Option<String>,
    /// The `clusterid` header.
    pub cluster_id: Option<String>,
    /// The requested lifetime.
    pub validity_seconds: i64,
}

#[derive(Default)]
struct State {
    requests: Vec<CaRequest>,
    /// Answer `UNAVAILABLE` while set.
    down: bool,
    /// Requests must carry `authorization: Bearer <this>`.
    bearer: Option<String>,
    /// Sign for this identity instead of the one asked for (a misbehaving CA).
    override_identity: Option<SpiffeId>,
    /// Accept and connection tasks, aborted by `stop`.
    tasks: Vec<AbortHandle>,
}

/// The fake CA; clones share it.
#[derive(Clone)]
pub struct FakeCa {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    ca: Arc<LocalCa>,
}

impl FakeCa {
    /// Serves on `bind` (port 0: a free port), signing with `ca`; any bearer token is
    /// accepted.
    pub async fn start(ca: LocalCa, bind: SocketAddr) -> std::io::Result<FakeCa> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let fake = FakeCa {
            addr: listener.local_addr()?,
            state: Arc::default(),
            ca: Arc::new(ca),
        };
        fake.listen(listener);
        Ok(fake)
    }

    /// The address served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, requests without `authorization: Bearer <token>` are refused
    /// (`UNAUTHENTICATED`); `None` accepts any.
    pub fn require_bearer(&self, token: Option<&str>) {
        self.lock().bearer = token.map(str::to_owned);
    }

    /// Makes the CA answer `UNAVAILABLE` (or serve again). Requests are still recorded.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Signs for `id` whatever is asked (a misbehaving CA), or for the asked identity again.
    pub fn set_override_identity(&self, id: Option<SpiffeId>) {
        self.lock().override_identity = id;
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<CaRequest> {
        self.lock().requests.clone()
    }

    fn listen(&self, listener: tokio::net::TcpListener) {
        let svc = IstioCertificateServiceServer::new(Ca {
            state: self.state.clone(),
            ca: self.ca.clone(),
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

    /// Kills the server: listener closed, every connection dropped.
    pub fn stop(&self) {
        for t in self.lock().tasks.drain(..) {
            t.abort();
        }
    }

    /// Brings it back on the same port.
    pub async fn restart(&self) -> std::io::Result<()> {
        // The aborted accept task drops the old listener at its next poll: retry briefly.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => break r?,
            }
        };
        self.listen(listener);
        Ok(())
    }
}

#[derive(Clone)]
struct Ca {
    state: Arc<Mutex<State>>,
    ca: Arc<LocalCa>,
}

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
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        let (down, bearer, override_identity) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.requests.push(CaRequest {
                impersonated: impersonated.clone(),
                authorization: authorization.clone(),
                cluster_id,
                validity_seconds: r.validity_duration,
            });
            (st.down, st.bearer.clone(), st.override_identity.clone())
        };
        if down {
            return Err(Status::unavailable("CA down (test)"));
        }
        if let Some(token) = bearer
            && authorization.as_deref() != Some(format!("Bearer {token}").as_str())
        {
            return Err(Status::unauthenticated("bearer token required"));
        }
        let id = match override_identity {
            Some(id) => id,
            None => impersonated
                .ok_or_else(|| Status::permission_denied("a node proxy must impersonate"))?
                .parse()
                .map_err(|_| Status::invalid_argument("bad identity"))?,
        };
        let ttl = Duration::from_secs(u64::try_from(r.validity_duration).unwrap_or(3600));
        let chain = self
            .ca
            .sign_csr(&r.csr, &id, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}
