//! The stream's external authorizer for the L7 layer ([`mesh_l7::layer::ext_authz`]): the
//! providers of the current config, and the checks sent through the proxy's shared gRPC
//! channels ([`crate::proxy::ext_authz::Clients`]) with the stream's peers as attributes.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use mesh_l7::layer::ext_authz::{self, CheckError, CheckInput, CheckResult, Provider};
use tracing::warn;

use super::Stream;
use crate::proxy::ext_authz::{Peers, request};

/// A stream's external authorizer.
#[derive(Clone)]
pub(super) struct Authorizer(pub(super) Arc<Stream>);

impl ext_authz::Authorizer for Authorizer {
    fn active(&self) -> bool {
        // Only where requests are authorized (a server-side proxy), and only when some
        // CUSTOM policy exists: one pointer load otherwise.
        self.0.profile.authz.is_some() && self.0.ctx.state.load().ext_authz.has_custom
    }

    fn provider(&self, name: &str) -> Option<Provider> {
        let state = self.0.ctx.state.load();
        state
            .ext_authz
            .by_name
            .get(name)
            .map(|p| p.settings.clone())
    }

    fn check(
        &self,
        provider: &Provider,
        input: CheckInput,
    ) -> impl Future<Output = Result<CheckResult, CheckError>> + Send + 'static {
        let s = &self.0;
        let state = s.ctx.state.load();
        let name = provider.name.clone();
        let call = state.ext_authz.by_name.get(&*provider.name).map(|p| {
            s.ctx
                .ext_authz
                .check(&state, p, request(input, peers(s)), s.ctx.cfg.socket_mark)
        });
        async move {
            match call {
                Some(call) => call.await,
                // Removed by a reload since the layer looked it up.
                None => Err(CheckError::Unavailable {
                    provider: name,
                    reason: "no longer configured".into(),
                }),
            }
        }
    }

    fn refused<B>(&self, req: &Request<B>, provider: &str, reason: &str) {
        let s = &self.0;
        warn!(
            target: "access",
            direction = s.profile.name,
            src.identity = s.src_identity.as_ref().map_or("-", |i| i.as_str()),
            method = %req.method(),
            path = %req.uri().path(),
            provider,
            reason,
            "request refused by external authorization"
        );
    }
}

/// The stream's two ends as the CheckRequest names them. The destination principal is the
/// identity of this end of the mTLS connection, as Envoy reports its own certificate's URI
/// SAN: the waypoint's, or the sidecar's workload's.
fn peers(s: &Stream) -> Peers {
    let unspecified = std::net::IpAddr::from([0, 0, 0, 0]);
    let Some(a) = &s.profile.authz else {
        // Not reached: the layer is active only with an authz profile.
        return Peers {
            source: s.client.unwrap_or(SocketAddr::new(unspecified, 0)),
            source_principal: None,
            destination: SocketAddr::new(unspecified, 0),
            destination_principal: None,
        };
    };
    let dst = SocketAddr::new(a.destination_ip, a.destination_port);
    // This end's identity: the waypoint's, or the served workload's.
    let own = Some(s.profile.identity.as_str().to_owned());
    Peers {
        source: s.client.unwrap_or(SocketAddr::new(a.self_ip, 0)),
        source_principal: s.src_identity.as_ref().map(|i| i.as_str().to_owned()),
        destination: dst,
        destination_principal: own,
    }
}
