use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn compile(json: &str) -> (PoolPolicy, Vec<String>) {
    let spec: ConnectionPoolSpec = serde_json::from_str(json).unwrap();
    let mut errs = Vec::new();
    let p = spec.compile("cp", &mut errs);
    (p, errs.into_iter().map(|e| e.field).collect())
}

#[test]
fn compiles_istio_fields() {
    let (p, errs) = compile(
        r#"{"tcp": {"maxConnections": 2, "connectTimeout": "250ms",
                    "tcpKeepalive": {"probes": 3, "time": "60s", "interval": "5s"},
                    "maxConnectionDuration": "1h", "idleTimeout": "30s"},
            "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 4,
                     "maxRequestsPerConnection": 0, "maxRetries": 3, "idleTimeout": "5s",
                     "h2UpgradePolicy": "DO_NOT_UPGRADE", "useClientProtocol": true}}"#,
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(p.max_connections, 2);
    assert_eq!(p.connect_timeout, Some(Duration::from_millis(250)));
    assert_eq!(
        p.keepalive,
        Some(Keepalive {
            probes: Some(3),
            time: Some(Duration::from_secs(60)),
            interval: Some(Duration::from_secs(5))
        })
    );
    assert_eq!(p.http2_max_requests, 4);
    assert_eq!(p.max_retries, 3);
    assert_eq!(p.http_idle_timeout, Some(Duration::from_secs(5)));
    // Istio ConnectionPoolSettings: unset maximums are 2^32-1.
    let (d, _) = compile("{}");
    assert_eq!(d, PoolPolicy::default());
    assert_eq!(d.max_connections, u32::MAX);
}

#[test]
fn rejects_by_name() {
    // Istio h2UpgradePolicy UPGRADE asks to upgrade HTTP/1.1 upstreams: not implemented here.
    let (_, errs) = compile(
        r#"{"tcp": {"maxConnections": 0, "connectTimeout": "x"},
            "http": {"http2MaxRequests": -1, "h2UpgradePolicy": "UPGRADE",
                     "useClientProtocol": false, "maxConcurrentStreams": 10}}"#,
    );
    assert_eq!(
        errs,
        [
            "cp.tcp.maxConnections",
            "cp.tcp.connectTimeout",
            "cp.http.http2MaxRequests",
            "cp.http.h2UpgradePolicy",
            "cp.http.useClientProtocol",
            "cp.http.maxConcurrentStreams",
        ]
    );
    assert!(serde_json::from_str::<ConnectionPoolSpec>(r#"{"tcp": {"maxConn": 1}}"#).is_err());
}

#[test]
fn overflow_is_refused_and_counted() {
    let (p, _) = compile(r#"{"http": {"http2MaxRequests": 2}}"#);
    let c = Arc::new(PoolCounters::default());
    let a = c.try_acquire(&p, Kind::Request).unwrap();
    let _b = c.try_acquire(&p, Kind::Request).unwrap();
    assert!(c.try_acquire(&p, Kind::Request).is_none());
    assert_eq!(c.overflows(), 1);
    drop(a);
    assert!(c.try_acquire(&p, Kind::Request).is_some());
    assert_eq!(
        c.current(Kind::Request),
        1,
        "the temporary permit was given back"
    );
}

proptest! {
    /// Whatever the interleaving of takes and drops, the count never exceeds the limit and
    /// returns to zero.
    #[test]
    fn never_exceeds_the_limit(max in 1u32..8, ops in proptest::collection::vec(any::<bool>(), 0..200)) {
        let p = PoolPolicy { max_connections: max, ..PoolPolicy::default() };
        let c = Arc::new(PoolCounters::default());
        let mut held = Vec::new();
        for take in ops {
            if take {
                if let Some(x) = c.try_acquire(&p, Kind::Connection) { held.push(x); }
            } else {
                held.pop();
            }
            prop_assert!(c.current(Kind::Connection) <= max);
            prop_assert_eq!(c.current(Kind::Connection) as usize, held.len());
        }
        held.clear();
        prop_assert_eq!(c.current(Kind::Connection), 0);
    }
}

/// Istio DestinationRule `ConnectionPoolSettings.TCPSettings.idleTimeout` and
/// `HTTPSettings.idleTimeout`: "If set to 0s, the timeout will be disabled" — accepted as no
/// idle timeout; a negative or malformed one is still rejected by name.
#[test]
fn zero_idle_timeout_disables_it() {
    let (p, errs) = compile(r#"{"tcp": {"idleTimeout": "0s"}, "http": {"idleTimeout": "0s"}}"#);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(p.tcp_idle_timeout, None);
    assert_eq!(p.http_idle_timeout, None);
    let (_, errs) = compile(r#"{"tcp": {"idleTimeout": "-1s"}, "http": {"idleTimeout": "x"}}"#);
    assert_eq!(errs, ["cp.tcp.idleTimeout", "cp.http.idleTimeout"]);
}
