//! What the L7 proxy is on a stream, as data: how it reports, whose identity its upstream
//! tunnels carry, where JWT rules and authorization policies come from (or none), and where
//! requests go. One constructor per place an HTTP stack sits — a waypoint's listener, the
//! client side (the `outbound_http` layer), the server side (the `inbound_http` layer) — all
//! here; the request path itself (`http`) reads the data and never asks which role it is.

use std::net::IpAddr;
use std::sync::Arc;

use mesh_telemetry::metrics::{Reporter, SecurityPolicy};

use crate::config::{ServicePort, Waypoint, Workload};

/// The L7 proxy's description of a stream.
#[derive(Clone)]
pub(crate) struct Profile {
    /// Its name in logs (`waypoint`, `outbound`, `inbound`).
    pub(crate) name: &'static str,
    /// The metrics reporter.
    pub(crate) reporter: Reporter,
    /// The access log's reporter (`waypoint`, `source`, `destination`).
    pub(crate) log_reporter: &'static str,
    /// The metrics security policy label.
    pub(crate) security: SecurityPolicy,
    /// The identity upstream tunnels present.
    pub(crate) identity: mesh_identity::SpiffeId,
    /// The workload upstream tunnels leave from (its address or network namespace); `None`:
    /// the proxy's own.
    pub(crate) tunnel_source: Option<Arc<Workload>>,
    /// Where JWT rules come from; `None`: no JWT authentication here.
    pub(crate) authn: Option<Authn>,
    /// Where authorization policies come from; `None`: none here (the server side's).
    pub(crate) authz: Option<Authz>,
    /// Where requests go.
    pub(crate) upstream: Upstream,
    /// Which `EnvoyFilter` rate limits apply.
    pub(crate) rate_limits: RateLimitScope,
}

/// Which `EnvoyFilter` rate limits apply: their patch context and the key of their policy.
#[derive(Clone)]
pub(crate) enum RateLimitScope {
    /// `SIDECAR_INBOUND` of the workload at this address, for the app's port.
    Inbound(IpAddr, u16),
    /// `GATEWAY`: the waypoint with this target key.
    Gateway(String),
    /// `SIDECAR_OUTBOUND` of the workload at this address.
    Outbound(IpAddr),
}

/// The `RequestAuthentication`s that apply.
#[derive(Clone)]
pub(crate) enum Authn {
    /// Those whose `targetRefs` name one of these keys (merged, in order).
    Targets(Vec<String>),
    /// Those selecting the workload with this key.
    Workload(String),
}

/// The `AuthorizationPolicy`s that apply, and the connection's destination.
#[derive(Clone)]
pub(crate) struct Authz {
    /// Which.
    pub(crate) policies: Policies,
    /// Plaintext to this workload port: refused per request once `STRICT` applies (a
    /// keep-alive connection outlives a switch to STRICT).
    pub(crate) strict: Option<(String, u16)>,
    /// The proxy's address (the source when no client address is known).
    pub(crate) self_ip: IpAddr,
    /// Where the request went, as policies see it.
    pub(crate) destination_ip: IpAddr,
    /// Its port.
    pub(crate) destination_port: u16,
}

/// Which policies.
#[derive(Clone)]
pub(crate) enum Policies {
    /// Those whose `targetRefs` name this waypoint's Gateway or the addressed Service.
    Targets(Arc<Waypoint>),
    /// Those of the workload with this key (selector, namespace, mesh).
    Workload(String),
}

/// Where requests go.
#[derive(Clone)]
pub(crate) enum Upstream {
    /// Routed (the addressed service's routes) to mesh endpoints, over HBONE.
    Mesh,
    /// The local app, unrouted.
    App {
        /// The workload.
        workload: Arc<Workload>,
        /// The app's port.
        port: u16,
    },
}

impl Profile {
    /// A waypoint: JWT and L7 policy of its targets (the addressed service, its own
    /// Gateway), reporter `waypoint`, upstream tunnels with the waypoint's identity.
    pub(crate) fn waypoint(waypoint: Arc<Waypoint>, service: Option<&Arc<ServicePort>>) -> Profile {
        let targets = service
            .map(|sp| sp.service.target_key.clone())
            .into_iter()
            .chain([waypoint.target_key.clone()])
            .collect();
        let rate_limits = RateLimitScope::Gateway(waypoint.target_key.clone());
        Profile {
            name: "waypoint",
            reporter: Reporter::Waypoint,
            log_reporter: "waypoint",
            security: SecurityPolicy::MutualTls,
            identity: waypoint.identity.clone(),
            tunnel_source: None,
            authn: Some(Authn::Targets(targets)),
            authz: Some(Authz {
                strict: None,
                self_ip: waypoint.address,
                destination_ip: service
                    .and_then(|sp| sp.service.vips.first().copied())
                    .unwrap_or(waypoint.address),
                destination_port: service.map_or(0, |sp| sp.port),
                policies: Policies::Targets(waypoint),
            }),
            upstream: Upstream::Mesh,
            rate_limits,
        }
    }

    /// The client side (captured outbound, the `outbound_http` layer): routing only (policy
    /// is the server side's), reporter `source`, upstream tunnels with the client workload's
    /// identity and address.
    pub(crate) fn client_side(workload: Arc<Workload>) -> Profile {
        Profile {
            name: "outbound",
            reporter: Reporter::Source,
            log_reporter: "source",
            // As Istio's client sidecars report it.
            security: SecurityPolicy::Unknown,
            identity: workload.identity.clone(),
            rate_limits: RateLimitScope::Outbound(workload.address),
            tunnel_source: Some(workload),
            authn: None,
            authz: None,
            upstream: Upstream::Mesh,
        }
    }

    /// The server side (the `inbound_http` layer; over HBONE when `mtls`, else captured
    /// plaintext): the workload's JWT rules and policies, per request, then the app on `port`.
    pub(crate) fn server_side(workload: Arc<Workload>, port: u16, mtls: bool) -> Profile {
        let key = workload.key();
        Profile {
            name: "inbound",
            reporter: Reporter::Destination,
            log_reporter: "destination",
            security: if mtls {
                SecurityPolicy::MutualTls
            } else {
                SecurityPolicy::Unknown
            },
            identity: workload.identity.clone(),
            tunnel_source: Some(workload.clone()),
            authn: Some(Authn::Workload(key.clone())),
            authz: Some(Authz {
                strict: (!mtls).then(|| (key.clone(), port)),
                self_ip: workload.address,
                destination_ip: workload.address,
                destination_port: port,
                policies: Policies::Workload(key),
            }),
            rate_limits: RateLimitScope::Inbound(workload.address, port),
            upstream: Upstream::App { workload, port },
        }
    }
}

/// The waypoint's policies for a stream to `service` (`None`: to a workload): those whose
/// `targetRefs` name the service or the waypoint's Gateway. Used by the HTTP and TCP paths.
pub(crate) fn waypoint_policies<'s>(
    state: &'s crate::config::MeshState,
    waypoint: &Waypoint,
    service: Option<&ServicePort>,
) -> Vec<&'s mesh_authz::Policy> {
    let service_key = service.map(|sp| sp.service.target_key.as_str());
    std::iter::once(waypoint.target_key.as_str())
        .chain(service_key)
        .filter_map(|key| state.waypoint_policies.get(key))
        .flat_map(|ps| ps.iter().map(|p| &**p))
        .collect()
}
