//! The balancing kinds of a destination (Istio's `loadBalancer.simple`), a leaf module
//! shared by the compiled policy and the balancing choice.

/// Istio's `loadBalancer.simple`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalancer {
    /// Fewest active requests of two random endpoints (Envoy's default; ours too).
    #[default]
    LeastRequest,
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Cheaper of two random endpoints by peak EWMA latency times requests in flight
    /// (linkerd2-proxy's balancer; no Istio `simple` value names it).
    PeakEwma,
}
