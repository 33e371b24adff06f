//! The admin endpoints of a running proxy: `/config_dump` (the whole serving state,
//! certificates without keys), `/certs`, `/quitquitquit`, `/logging`, and the thread that
//! serves them with the metrics and readiness endpoints. They read the proxy through
//! [`Introspect`], which the runtime implements.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use mesh_telemetry::http::{Request, Response, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ctx::Ctx;
use super::settings::Listening;
use crate::config::{MeshState, Workload};

/// What the admin endpoints read of a running proxy.
pub(crate) trait Introspect: Send + Sync + 'static {
    /// The shared context (state, certificates, telemetry).
    fn ctx(&self) -> &Ctx;
    /// The bound data listeners, by address.
    fn listening(&self) -> Vec<Listening>;
    /// The xDS client's status, when the state comes from a control plane.
    fn xds_status(&self) -> Option<mesh_xds::Status>;
    /// The config generation serving.
    fn generation(&self) -> u64;
    /// Asks the proxy to exit (`POST /quitquitquit`).
    fn quit(&self);
}

fn rfc3339(t: SystemTime) -> String {
    mesh_telemetry::access::rfc3339(t)
}

/// `/config_dump`: the whole serving state, certificates without keys.
pub(crate) fn config_dump(inner: &dyn Introspect) -> serde_json::Value {
    let ctx = inner.ctx();
    let state: Arc<MeshState> = ctx.state.load_full();
    let workloads: Vec<_> = state
        .workloads
        .iter()
        .map(|w| {
            json!({
                "name": w.name,
                "namespace": w.namespace,
                "address": w.address,
                "identity": w.identity.as_str(),
                "serviceAccount": w.service_account,
                "labels": w.labels,
                "node": w.node,
                "hboneAddress": w.hbone_addr,
                "local": ctx.is_local(w),
                "authorizationPolicies": state.authz.applied(&w.key()),
                "mtls": mtls_json(&state, w),
                "waypoint": w.waypoint.as_ref().map(|wp| wp.key()),
                "acceptsOnlyFrom": state.waypoints_of.get(&w.key()).map(|v| v.iter().map(|wp| wp.key()).collect::<Vec<_>>()),
            })
        })
        .collect();
    let services: Vec<_> = state
        .service_ports
        .iter()
        .map(|sp| {
            json!({
                "name": sp.service.name,
                "namespace": sp.service.namespace,
                "hosts": sp.service.hosts,
                "vips": sp.service.vips,
                "port": sp.port,
                "portName": sp.name,
                "protocol": sp.protocol,
                "waypoint": sp.service.waypoint.as_ref().map(|wp| wp.key()),
                "visibility": sp.service.visibility,
                "canonical": sp.service.canonical,
                "endpoints": sp.endpoints.iter().map(|e| format!("{}:{}", e.workload.key(), e.port)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let certs = certificates(ctx);
    let rejection = ctx
        .telemetry
        .last_rejection
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    config_dump_rest(inner, &state, workloads, services, certs, rejection)
}

/// Certificates (chains and roots, never keys), sorted by identity.
fn certificates(ctx: &Ctx) -> Vec<serde_json::Value> {
    let now = SystemTime::now();
    let mut certs: Vec<_> = ctx
        .certs
        .stores()
        .into_iter()
        .map(|s| {
            let c = s.current();
            json!({
                "identity": s.identity().as_str(),
                "notBefore": rfc3339(c.not_before()),
                "notAfter": rfc3339(c.not_after()),
                "expiresInSeconds": c.not_after().duration_since(now).map_or(0, |d| d.as_secs()),
                "chain": c.chain_pem(),
                "roots": c.roots_pem(),
            })
        })
        .collect();
    certs.sort_by(|a, b| a["identity"].as_str().cmp(&b["identity"].as_str()));
    certs
}

fn config_dump_rest(
    inner: &dyn Introspect,
    state: &MeshState,
    workloads: Vec<serde_json::Value>,
    services: Vec<serde_json::Value>,
    certs: Vec<serde_json::Value>,
    rejection: Option<(String, String)>,
) -> serde_json::Value {
    let ctx = inner.ctx();
    let listeners: Vec<_> = inner
        .listening()
        .into_iter()
        .map(|l| json!({"kind": format!("{:?}", l.kind), "address": l.addr, "serves": l.what}))
        .collect();
    let xds = inner.xds_status().map(|s| {
        json!({
            "connected": s.connected,
            "connects": s.connects,
            "acks": s.acks,
            "nacks": s.nacks,
            "lastNack": s.last_nack,
            "lastError": s.last_error,
        })
    });
    json!({
        "xds": xds,
        "node": ctx.node_name,
        "generation": inner.generation(),
        "trustDomain": state.trust_domain.as_str(),
        "rootNamespace": state.root_namespace,
        "clusterId": state.cluster_id,
        "workloads": workloads,
        "services": services,
        "waypoints": waypoints_json(state),
        "authorizationPolicies": state.policies,
        "authorizationFailClosed": state.failed_policies,
        "peerAuthentications": state.peer_authn,
        "requestAuthentications": state.request_authns,
        "jwks": ctx.jwks.dump(),
        "certificates": certs,
        "listeners": listeners,
        "zdsPods": ctx.pods.load().enabled.then(|| super::pods::dump(&ctx.pods.load(), state, &ctx.node_name)),
        "configRejections": {
            "total": ctx.telemetry.config_rejected.get(),
            "last": rejection.map(|(at, error)| json!({"at": at, "error": error})),
        },
    })
}

fn waypoints_json(state: &MeshState) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = state
        .waypoints
        .values()
        .map(|wp| {
            json!({
                "name": wp.name,
                "namespace": wp.namespace,
                "address": wp.hbone_addr(),
                "identity": wp.identity.as_str(),
                "for": wp.waypoint_for,
            })
        })
        .collect();
    v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    v
}

fn mtls_json(state: &MeshState, w: &Workload) -> serde_json::Value {
    let m = state.mtls.workload(&w.key());
    let ports: std::collections::BTreeMap<u16, _> = m.ports.iter().map(|(p, m)| (*p, *m)).collect();
    json!({"mode": m.mode, "ports": ports})
}

/// `/certs`: the certificates this proxy holds, without keys.
fn certs(ctx: &Ctx) -> serde_json::Value {
    serde_json::Value::Array(certificates(ctx))
}

/// The admin routes: `/config_dump`, `/certs`, `/logging` and an index.
pub(crate) fn admin_router(
    inner: Arc<dyn Introspect>,
    log: Option<mesh_telemetry::logging::LogControl>,
) -> Router {
    let (i1, i2, i3) = (inner.clone(), inner.clone(), inner);
    let mut r = Router::new()
        .route("/config_dump", move |_req: &Request| {
            Response::json(&config_dump(&*i1))
        })
        .route("/certs", move |_req: &Request| {
            Response::json(&certs(i2.ctx()))
        })
        .route("/quitquitquit", move |req: &Request| {
            if req.method != http::Method::POST {
                return Response::text(
                    http::StatusCode::METHOD_NOT_ALLOWED,
                    "use POST to stop the proxy\n",
                );
            }
            tracing::info!("exit requested on /quitquitquit");
            i3.quit();
            Response::text(http::StatusCode::OK, "OK\n")
        });
    if let Some(log) = log {
        r = r.merge(log.router());
    }
    let paths = r.paths();
    r.route("/", move |_req: &Request| {
        Response::text(
            http::StatusCode::OK,
            format!("admin endpoints:\n{}\n", paths.join("\n")),
        )
    })
    .local_only()
    .refuse_changes_from(Arc::new(super::own::is_own_socket))
}

/// Binds the admin, metrics and readiness listeners (failing at once if one cannot be bound,
/// or the admin address is not loopback) and serves them on a dedicated thread.
pub(crate) fn spawn_servers(
    servers: Vec<(SocketAddr, Router)>,
    cancel: CancellationToken,
    stopped: CancellationToken,
) -> Result<Vec<SocketAddr>, crate::Error> {
    let mut bound = Vec::new();
    for (addr, router) in servers {
        let l = std::net::TcpListener::bind(addr)
            .map_err(|source| crate::Error::Bind { addr, source })?;
        l.set_nonblocking(true).map_err(crate::Error::Runtime)?;
        bound.push((l, router));
    }
    let addrs = bound
        .iter()
        .filter_map(|(l, _)| l.local_addr().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(crate::Error::Runtime)?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut servers = tokio::task::JoinSet::new();
                for (l, router) in bound {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => {
                            servers.spawn(mesh_telemetry::http::serve(l, router, cancel.clone()));
                        }
                        Err(e) => tracing::error!(error = %e, "admin listener"),
                    }
                }
                cancel.cancelled().await;
                while servers.join_next().await.is_some() {}
            });
            stopped.cancel();
        })
        .map_err(crate::Error::Runtime)?;
    Ok(addrs)
}
