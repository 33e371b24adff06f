//! [`ResponseFlags`]: Istio's and Envoy's response flags, one type for L4 and L7, and its
//! label values.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Why a connection or a request failed, `-` when it did not: one type for L4 and L7. The
/// L4 values are Istio's TCP `response_flags` label; the L7 ones Envoy's `%RESPONSE_FLAGS%`
/// in the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// No failure.
    None,
    /// L4: refused by authorization or peer-authentication policy.
    Deny,
    /// L4: the destination could not be reached (also Istio's fallback for other failures).
    ConnectFailure,
    /// L4: the TLS handshake with the peer failed.
    TlsFailure,
    /// L7 `DPE`: the downstream request was malformed or refused by the proxy's checks.
    DownstreamProtocolError,
    /// L7 `RBAC`: refused by authorization policy.
    Rbac,
    /// L7 `NR`: no route or no such service.
    NoRoute,
    /// L7 `UH`: no healthy upstream.
    NoHealthyUpstream,
    /// L7 `UF`: the upstream connection failed.
    UpstreamConnectionFailure,
    /// L7 `DR`: answered by the proxy itself (a direct response or a redirect).
    DirectResponse,
    /// L7 `UT`: the upstream request (or one try of it) timed out.
    UpstreamRequestTimeout,
    /// L7 `URX`: retries (or L4 connect attempts) exhausted on a retriable failure.
    UpstreamRetryLimitExceeded,
    /// L7 `UR`: the upstream reset the stream before or while answering.
    UpstreamRemoteReset,
    /// L7 `UC`: the upstream connection ended before the response.
    UpstreamConnectionTermination,
    /// L7/L4 `UO`: a connection-pool, circuit-breaker, `maxRetries` or retry-budget limit
    /// overflowed.
    UpstreamOverflow,
    /// L7 `FI`: a fault-injected abort.
    FaultInjected,
    /// L7 `DI`: a fault-injected delay.
    DelayInjected,
    /// L7/L4 `RL`: refused by a rate limit.
    RateLimited,
    /// L7 `RLSE`: the rate-limit service failed and the limit fails closed.
    RateLimitServiceError,
    /// L7 `UAEX`: refused by an external authorizer (`action: CUSTOM`).
    UnauthorizedExternalService,
}

label_values!(ResponseFlags {
    None => "-",
    Deny => "DENY",
    ConnectFailure => "CONNECT",
    TlsFailure => "TLS_FAILURE",
    DownstreamProtocolError => "DPE",
    Rbac => "RBAC",
    NoRoute => "NR",
    NoHealthyUpstream => "UH",
    UpstreamConnectionFailure => "UF",
    DirectResponse => "DR",
    UpstreamRequestTimeout => "UT",
    UpstreamRetryLimitExceeded => "URX",
    UpstreamRemoteReset => "UR",
    UpstreamConnectionTermination => "UC",
    UpstreamOverflow => "UO",
    FaultInjected => "FI",
    DelayInjected => "DI",
    RateLimited => "RL",
    RateLimitServiceError => "RLSE",
    UnauthorizedExternalService => "UAEX",
});

impl std::fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
