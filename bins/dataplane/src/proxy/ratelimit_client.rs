//! The global rate limit client: Envoy's `envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit` over gRPC, as Envoy's `envoy.filters.http.ratelimit` calls it. One tonic
//! channel per service endpoint, reused by every stream ([`Clients`]), made and marked as
//! the ext_authz client's ([`crate::proxy::grpc_channel`]).
//!
//! Where the service is: the filter's Istio cluster `outbound|<port>||<host>` names a mesh
//! service (its endpoints, picked round-robin, from the current state) or an IP address. The
//! call is plain gRPC (HTTP/2 prior knowledge) straight to the endpoint, not over HBONE, as
//! Envoy's rate limit cluster is plain unless a DestinationRule adds TLS.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use http::{HeaderName, HeaderValue};
use mesh_l7::layer::{GlobalAnswer, GlobalError};
use mesh_l7::ratelimit::{Descriptor, GlobalFilter};
use mesh_xds::Channel;

use crate::config::MeshState;
use crate::proxy::grpc_channel::{GrpcChannels, GrpcTarget};

/// The proxy's rate limit service channels, by endpoint ([`GrpcChannels`]).
#[derive(Default)]
pub(crate) struct Clients {
    channels: GrpcChannels,
}

impl Clients {
    /// The channel to `addr`, its calls carrying `:authority` `authority` (Envoy's
    /// `envoy_grpc.authority`), made (lazily connecting) on first use. Its connections carry
    /// the proxy's socket `mark`, so a sidecar's own capture rules let them out.
    fn channel(
        &self,
        addr: SocketAddr,
        authority: &str,
        timeout: Duration,
        mark: Option<u32>,
    ) -> Result<Channel, GlobalError> {
        let target = GrpcTarget {
            addr,
            authority: Some(authority.to_owned()),
            timeout,
            mark,
        };
        (self.channels.channel(target)).map_err(|e| GlobalError::Failed(e.to_string()))
    }

    /// Asks the service of `filter` about `descriptors`, its connections marked with `mark`
    /// (the caller bounds the time).
    pub(crate) fn check(
        &self,
        state: &MeshState,
        filter: &GlobalFilter,
        descriptors: Vec<Descriptor>,
        mark: Option<u32>,
    ) -> impl Future<Output = Result<GlobalAnswer, GlobalError>> + Send + 'static {
        let channel = resolve(state, filter)
            .and_then(|a| self.channel(a, &filter.authority, filter.timeout, mark));
        let req = request(filter, descriptors);
        let x_headers = filter.x_headers;
        async move {
            let resp = RateLimitServiceClient::new(channel?)
                .should_rate_limit(req)
                .await
                .map_err(|s| GlobalError::Failed(format!("{:?}: {}", s.code(), s.message())))?;
            answer(resp.into_inner(), x_headers)
        }
    }
}

fn resolve(state: &MeshState, f: &GlobalFilter) -> Result<SocketAddr, GlobalError> {
    if let Some(sp) = state.service_by_host(&f.host, f.port) {
        let ep = sp
            .pick()
            .ok_or_else(|| GlobalError::Failed(format!("{} has no endpoint", f.host)))?;
        return Ok(SocketAddr::new(ep.workload.address, ep.port));
    }
    match f.host.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, f.port)),
        Err(_) => Err(GlobalError::Failed(format!(
            "{}:{} is not a mesh service",
            f.host, f.port
        ))),
    }
}

/// The request as Envoy makes it: the domain, one descriptor per made descriptor, one hit.
pub(crate) fn request(f: &GlobalFilter, descriptors: Vec<Descriptor>) -> RateLimitRequest {
    let descriptors = descriptors.into_iter().map(|d| RateLimitDescriptor {
        entries: d
            .entries
            .into_iter()
            .map(|(key, value)| Entry { key, value })
            .collect(),
        ..RateLimitDescriptor::default()
    });
    RateLimitRequest {
        domain: f.domain.clone(),
        descriptors: descriptors.collect(),
        hits_addend: 1,
    }
}

/// The answer as Envoy reads it: `OVER_LIMIT` refuses, `OK` passes, `UNKNOWN` is an error;
/// the service's `response_headers_to_add` go on the response either way, and with
/// `enable_x_ratelimit_headers` the `x-ratelimit-*` headers of the closest limit.
pub(crate) fn answer(r: RateLimitResponse, x_headers: bool) -> Result<GlobalAnswer, GlobalError> {
    let mut headers: Vec<(HeaderName, HeaderValue)> = r
        .response_headers_to_add
        .iter()
        .filter_map(|h| {
            let n = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
            Some((n, HeaderValue::from_str(&h.value).ok()?))
        })
        .collect();
    if x_headers {
        headers.extend(x_ratelimit(&r.statuses));
    }
    match Code::try_from(r.overall_code) {
        Ok(Code::Ok) => Ok(GlobalAnswer::Ok(headers)),
        Ok(Code::OverLimit) => Ok(GlobalAnswer::OverLimit(headers)),
        _ => Err(GlobalError::Failed(format!(
            "overall_code {}",
            r.overall_code
        ))),
    }
}

/// Envoy's DRAFT_VERSION_03 headers from the status with the fewest requests left:
/// `x-ratelimit-limit: <n>, <n>;w=<window s>`, `-remaining`, `-reset` (seconds).
fn x_ratelimit(statuses: &[DescriptorStatus]) -> Vec<(HeaderName, HeaderValue)> {
    let Some(s) = statuses
        .iter()
        .filter(|s| s.current_limit.is_some())
        .min_by_key(|s| s.limit_remaining)
    else {
        return Vec::new();
    };
    let Some(l) = &s.current_limit else {
        return Vec::new();
    };
    let window: u64 = match l.unit {
        1 => 1,
        2 => 60,
        3 => 3600,
        4 => 86_400,
        7 => 604_800,
        5 => 2_592_000,
        6 => 31_536_000,
        _ => 0,
    };
    let reset = s
        .duration_until_reset
        .as_ref()
        .map_or(0, |d| d.seconds.max(0) as u64 + u64::from(d.nanos > 0));
    let limit = format!("{0}, {0};w={window}", l.requests_per_unit);
    let mut out = vec![(
        HeaderName::from_static("x-ratelimit-remaining"),
        s.limit_remaining.into(),
    )];
    if let Ok(v) = HeaderValue::from_str(&limit) {
        out.insert(0, (HeaderName::from_static("x-ratelimit-limit"), v));
    }
    out.push((HeaderName::from_static("x-ratelimit-reset"), reset.into()));
    out
}
