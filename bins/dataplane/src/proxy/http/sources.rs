//! What the request layers ask of a stream: trace ids, JWT rules and keys, authorization
//! policies and connection facts, route tables — read from the current config per request,
//! as the stream's [`Profile`](crate::proxy::profiles::Profile) describes them.

use std::sync::Arc;

use http::{HeaderValue, Request};
use mesh_authz::jwt::{Authenticator, JwtError, KeySet, KeySource};
use mesh_l7::layer::authz::Check;
use mesh_l7::layer::{AuthzSource, JwtSource, Lookup, RouteSource, Scope, TraceIds};
use tracing::warn;

use super::Stream;
use crate::proxy::profiles::{Authn, Policies, Upstream};

/// Trace ids as every hop of the mesh makes them.
#[derive(Clone, Copy)]
pub(super) struct Ids;

impl TraceIds for Ids {
    fn request_id(&self) -> HeaderValue {
        mesh_hbone::headers::new_request_id()
    }

    fn traceparent(&self) -> HeaderValue {
        mesh_hbone::headers::new_traceparent()
    }

    fn valid_traceparent(&self, v: &str) -> bool {
        mesh_hbone::headers::valid_traceparent(v)
    }
}

/// A stream's policy and route sources.
#[derive(Clone)]
pub(super) struct Sources(pub(super) Arc<Stream>);

impl JwtSource for Sources {
    fn authenticator(&self) -> Option<Arc<Authenticator>> {
        let s = &self.0;
        let state = s.ctx.state.load();
        match s.profile.authn.as_ref()? {
            Authn::Workload(key) => state.sidecar_authn.get(key).cloned(),
            Authn::Targets(keys) => {
                if state.waypoint_authn.is_empty() {
                    return None;
                }
                let mut found = keys.iter().filter_map(|k| state.waypoint_authn.get(k));
                let first = found.next()?;
                match found.next() {
                    None => Some(first.clone()),
                    Some(second) => {
                        let rules = first.rules().iter().chain(second.rules());
                        let rules = rules.chain(found.flat_map(|a| a.rules()));
                        Some(Arc::new(Authenticator::new(rules.cloned().collect())))
                    }
                }
            }
        }
    }

    fn keys(&self, src: &KeySource) -> Option<Arc<KeySet>> {
        self.0.ctx.jwks.get(src)
    }

    fn refetch(&self, src: KeySource) -> impl Future<Output = ()> + Send + 'static {
        let s = self.0.clone();
        async move {
            s.ctx.jwks.refetch(&src).await;
        }
    }

    fn refused<B>(&self, req: &Request<B>, reason: &JwtError) {
        let s = &self.0;
        warn!(
            target: "access",
            direction = s.profile.name,
            src.identity = s.src_identity.as_ref().map_or("-", |i| i.as_str()),
            method = %req.method(),
            path = %req.uri().path(),
            reason = %reason,
            "request refused by JWT authentication: 401"
        );
    }
}

impl AuthzSource for Sources {
    fn with_scope<R>(&self, f: impl FnOnce(Scope<'_>) -> R) -> R {
        let s = &self.0;
        let Some(authz) = &s.profile.authz else {
            return f(Scope::Open);
        };
        let state = s.ctx.state.load();
        let policies: Vec<&mesh_authz::Policy> = match &authz.policies {
            Policies::Targets(waypoint) => {
                crate::proxy::profiles::waypoint_policies(&state, waypoint, s.service.as_deref())
            }
            Policies::Workload(key) => state.authz.policies_of(key).iter().map(|p| &**p).collect(),
        };
        let deny = authz
            .strict
            .as_ref()
            .is_some_and(|(key, port)| state.mtls.strict(key, *port));
        let source_ip = s.client.map_or(authz.self_ip, |c| c.ip());
        f(Scope::Check(Check {
            normalization: state.path_normalization,
            deny,
            policies: &policies,
            conn: mesh_authz::Connection {
                source_ip,
                // `remote.ip`: the original client, as the peer proxy asserts it.
                remote_ip: Some(source_ip),
                // Captured plaintext has no peer identity.
                source_principal: s
                    .src_identity
                    .as_ref()
                    .map(|i| i.as_str().strip_prefix("spiffe://").unwrap_or(i.as_str())),
                source_namespace: s.src_identity.as_ref().map(|i| i.namespace()),
                destination_ip: authz.destination_ip,
                destination_port: authz.destination_port,
            },
        }))
    }

    fn denied<B>(&self, req: &Request<B>, path: &str, reason: &str) {
        let s = &self.0;
        warn!(
            target: "access",
            direction = s.profile.name,
            src.identity = s.src_identity.as_ref().map_or("-", |i| i.as_str()),
            method = %req.method(),
            path = %path,
            reason = %reason,
            "request refused by authorization policy: 403"
        );
    }
}

impl RouteSource for Sources {
    fn lookup(&self) -> Lookup {
        let s = &self.0;
        if let Upstream::App { .. } = s.profile.upstream {
            return Lookup::Direct;
        }
        let Some(sp) = &s.service else {
            return Lookup::NoService;
        };
        let host = sp.service.hosts.first().map_or("", String::as_str);
        Lookup::Table {
            table: s.ctx.state.load().routes.get(host).cloned(),
            port: sp.port,
        }
    }
}
