//! The ext_authz client (Envoy's `envoy.service.auth.v3.Authorization/Check` over gRPC) that
//! the L7 layer's `Authorizer` asks: one tonic channel per provider endpoint, reused by every
//! request and stream of the proxy ([`Clients`]), the `CheckRequest` as Envoy fills it
//! ([`request`]) and the `CheckResponse` read back into the layer's terms ([`convert`]).
//!
//! Where the authorizer is: the provider's `service` is a mesh host; its endpoints come from
//! the proxy's current state (the service port `port`), one picked round-robin per check.
//! The call is plain gRPC (HTTP/2 prior knowledge) straight to that endpoint, not over
//! HBONE: the authorizer is infrastructure the proxy itself talks to, as Envoy's ext_authz
//! cluster is a plain cluster unless a DestinationRule adds TLS. An authorizer workload that
//! requires mTLS (STRICT) therefore refuses the proxy: run it PERMISSIVE on its gRPC port.

mod convert;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use mesh_l7::layer::ext_authz::{CheckError, CheckResult};
use mesh_xds::Channel;

use crate::config::MeshState;
use crate::config::ext_authz::ExtAuthzProvider;
use crate::proxy::grpc_channel::{GrpcChannels, GrpcTarget};

pub(crate) use convert::{Peers, convert, request};

/// The proxy's ext_authz channels, by endpoint ([`GrpcChannels`]).
#[derive(Default)]
pub(crate) struct Clients {
    channels: GrpcChannels,
}

impl Clients {
    /// The channel to `addr` for `provider`, made (lazily connecting) on first use. Its
    /// connections carry the proxy's socket mark, so a sidecar's own capture rules let them
    /// out as the proxy's traffic.
    fn channel(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        mark: Option<u32>,
    ) -> Result<Channel, String> {
        let target = GrpcTarget {
            addr,
            authority: None,
            timeout,
            mark,
        };
        self.channels.channel(target).map_err(|e| e.to_string())
    }

    /// Asks `provider` (resolved in `state`) about `req`. The caller bounds the time.
    pub(crate) fn check(
        &self,
        state: &MeshState,
        provider: &ExtAuthzProvider,
        req: CheckRequest,
        mark: Option<u32>,
    ) -> impl Future<Output = Result<CheckResult, CheckError>> + Send + use<> {
        let name = provider.settings.name.clone();
        let channel = resolve(state, provider)
            .ok_or_else(|| format!("no endpoint for {}:{}", provider.host, provider.port))
            .and_then(|addr| self.channel(addr, provider.settings.timeout, mark));
        async move {
            let channel = channel.map_err(|reason| CheckError::Unavailable {
                provider: name.clone(),
                reason,
            })?;
            let resp = AuthorizationClient::new(channel)
                .check(req)
                .await
                .map_err(|s| {
                    let reason = format!("{:?}: {}", s.code(), s.message());
                    // gRPC UNAVAILABLE (14): not reached (connect refused, reset, no route).
                    if s.code() as i32 == 14 {
                        CheckError::Unavailable {
                            provider: name.clone(),
                            reason,
                        }
                    } else {
                        CheckError::Failed {
                            provider: name.clone(),
                            reason,
                        }
                    }
                })?;
            Ok(convert(resp.into_inner()))
        }
    }
}

/// The provider's endpoint for this check: one of its service port's endpoints,
/// round-robin.
fn resolve(state: &MeshState, p: &ExtAuthzProvider) -> Option<SocketAddr> {
    let sp = state.service_by_host(&p.host, p.port)?;
    let ep = sp.pick()?;
    Some(SocketAddr::new(ep.workload.address, ep.port))
}
