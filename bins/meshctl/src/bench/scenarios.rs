//! The L7 configurations the resilience benchmarks add to the bench mesh (YAML documents,
//! each starting with `---`).

/// Every L7 resilience mechanism configured for the bench service, none of them firing:
/// a timeout and retries (with a budget) that a healthy echo never needs, fault injection and
/// mirroring at 0 %, a local rate limit far above the load, outlier detection and connection
/// pools with high limits.
pub(crate) const FULL_L7: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: server, namespace: bench}
spec:
  hosts: [server.bench.svc]
  http:
  - name: all
    timeout: 10s
    retries: {attempts: 2, perTryTimeout: 5s, retryOn: "5xx,reset,connect-failure"}
    fault:
      delay: {fixedDelay: 1s, percentage: {value: 0}}
      abort: {httpStatus: 503, percentage: {value: 0}}
    mirror: {host: server.bench.svc}
    mirrorPercentage: {value: 0}
    route:
    - destination: {host: server.bench.svc}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: server, namespace: bench}
spec:
  host: server.bench.svc
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 100000, connectTimeout: 5s}
      http: {http1MaxPendingRequests: 100000, http2MaxRequests: 100000, maxRetries: 1000}
    retryBudget: {percent: 20, minRetryConcurrency: 3}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ratelimit, namespace: bench}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 1000000, tokens_per_fill: 1000000, fill_interval: 1s}
            filter_enabled: {runtime_key: on, default_value: {numerator: 100, denominator: HUNDRED}}
            filter_enforced: {runtime_key: enforced, default_value: {numerator: 100, denominator: HUNDRED}}
"#;

/// Routing only: Istio's default retries turned off.
pub(crate) const NO_RETRIES: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: server, namespace: bench}
spec:
  hosts: [server.bench.svc]
  http:
  - route: [{destination: {host: server.bench.svc}}]
    retries: {attempts: 0}
"#;

/// Two retries on 5xx, reset and connect failure, 20 ms per try.
pub(crate) const RETRIES: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: server, namespace: bench}
spec:
  hosts: [server.bench.svc]
  http:
  - route: [{destination: {host: server.bench.svc}}]
    retries: {attempts: 2, perTryTimeout: 20ms, retryOn: "5xx,reset,connect-failure"}
"#;

/// Outlier detection: three 5xx in a row eject an endpoint for 30 s.
pub(crate) const OUTLIER: &str = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: server, namespace: bench}
spec:
  host: server.bench.svc
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 34
"#;
