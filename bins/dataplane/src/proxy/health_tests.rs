use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_l7::resilience::outlier::Outcome;
use mesh_l7::resilience::pool::Kind;
use tokio::time::Instant;

use super::Health;

/// Service `s` with endpoints w1..wn (10.0.0.i:8080) and a DestinationRule `dr` (YAML flow
/// mapping) as its `trafficPolicy`.
fn state(n: u8, dr: &str) -> crate::config::MeshState {
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s, namespace: ns}\n\
         spec: {hosts: [s.ns.svc], addresses: [10.96.0.1], ports: [{number: 80, name: http, targetPort: 8080}], \
         workloadSelector: {labels: {app: s}}}\n",
    );
    for i in 1..=n {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w{i}, namespace: ns}}\nspec: {{address: 10.0.0.{i}, labels: {{app: s}}}}\n"
        ));
    }
    if !dr.is_empty() {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: s, namespace: ns}}\nspec: {{host: s.ns.svc, trafficPolicy: {dr}}}\n"
        ));
    }
    crate::config::parse(Path::new("m.yaml"), &yaml).unwrap()
}

fn ep(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 8080))
}

const OD: &str = "{outlierDetection: {consecutive5xxErrors: 2, maxEjectionPercent: 50, baseEjectionTime: 10s}, \
                  connectionPool: {http: {http2MaxRequests: 2}}}";

/// Envoy outlier.rst: ejected for base × ejections, back when it runs out; the state is the
/// proxy's, so a config swap keeps it; a host without a rule is not tracked at all.
#[tokio::test(start_paused = true)]
async fn ejects_returns_and_survives_a_config_swap() {
    let h = Health::default();
    h.sync(&state(4, OD));
    let t0 = Instant::now();
    h.report("s.ns.svc", ep(1), Outcome::Status(503), t0);
    assert!(!h.is_ejected("s.ns.svc", ep(1), t0));
    h.report("s.ns.svc", ep(1), Outcome::Status(500), t0);
    assert!(h.is_ejected("s.ns.svc", ep(1), Instant::now()));
    // A new config (one more endpoint): still ejected.
    h.sync(&state(5, OD));
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(h.is_ejected("s.ns.svc", ep(1), Instant::now()));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(
        !h.is_ejected("s.ns.svc", ep(1), Instant::now()),
        "back after 10 s"
    );
    // Ejected again right away: twice the base time (Istio baseEjectionTime).
    let t1 = Instant::now();
    h.report("s.ns.svc", ep(1), Outcome::ConnectFailure, t1);
    h.report("s.ns.svc", ep(1), Outcome::Timeout, t1);
    tokio::time::advance(Duration::from_secs(19)).await;
    assert!(h.is_ejected("s.ns.svc", ep(1), Instant::now()));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!h.is_ejected("s.ns.svc", ep(1), Instant::now()));
    // The rule removed: nothing tracked.
    h.sync(&state(5, ""));
    assert!(h.host("s.ns.svc").is_none());
}

/// An attacker controls addresses and hosts it sends to, not the config: reports for
/// unknown hosts or endpoints add nothing, endpoints that left are pruned, and the pool
/// counters are shared by every connection of the proxy (one client cannot exceed them).
#[tokio::test(start_paused = true)]
async fn traffic_cannot_grow_the_state_nor_exceed_the_pool() {
    let h = Health::default();
    h.sync(&state(3, OD));
    let now = Instant::now();
    for i in 0..10_000u32 {
        let a = SocketAddr::from(([192, 0, (i >> 8) as u8, i as u8], 80));
        h.report("s.ns.svc", a, Outcome::Status(500), now);
        h.report(&format!("h{i}.ns.svc"), a, Outcome::Status(500), now);
    }
    assert_eq!(h.hosts.load().len(), 1);
    let host = h.host("s.ns.svc").unwrap();
    assert_eq!(host.cluster().unwrap().len(), 3);
    h.sync(&state(2, OD));
    assert_eq!(
        h.host("s.ns.svc").unwrap().cluster().unwrap().len(),
        2,
        "pruned"
    );
    // http2MaxRequests: 2 across the whole proxy.
    let a = host.admit(Kind::Request).unwrap();
    let b = h.host("s.ns.svc").unwrap().admit(Kind::Request).unwrap();
    assert!(host.admit(Kind::Request).is_err());
    assert_eq!(host.counters.overflows(), 1);
    drop((a, b));
    assert!(host.admit(Kind::Request).unwrap().is_some());
}

/// Only what reached the endpoint counts (Envoy outlier.rst: errors "returned by an upstream
/// host" or local-origin errors of a connection to it): the proxy's own 503s (pool overflow
/// `UO`, no route, an endpoint outside the mesh) are reported as nothing.
#[test]
fn local_answers_are_not_the_endpoints_outcome() {
    use mesh_l7::layer::{Meta, UpstreamFailure};
    use mesh_telemetry::metrics::ResponseFlags as F;
    let resp = |status: u16, flags: F, failure: Option<UpstreamFailure>| {
        let mut r = http::Response::new(());
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        let m = Meta::of(&mut r);
        m.flags = flags;
        m.failure = failure;
        r
    };
    for f in [F::UpstreamOverflow, F::NoRoute, F::NoHealthyUpstream] {
        assert_eq!(super::outcome_of(&resp(503, f, None)), None, "{f:?}");
    }
    // Outside the mesh: flagged UF but never dialled (no typed failure).
    let outside = resp(503, F::UpstreamConnectionFailure, None);
    assert_eq!(super::outcome_of(&outside), None);
    let dialled = resp(
        503,
        F::UpstreamConnectionFailure,
        Some(UpstreamFailure::ConnectFailure),
    );
    assert_eq!(super::outcome_of(&dialled), Some(Outcome::ConnectFailure));
    let reset = resp(503, F::UpstreamRemoteReset, Some(UpstreamFailure::Reset));
    assert_eq!(super::outcome_of(&reset), Some(Outcome::Reset));
    assert_eq!(
        super::outcome_of(&resp(503, F::None, None)),
        Some(Outcome::Status(503))
    );
    assert_eq!(
        super::outcome_of(&resp(200, F::None, None)),
        Some(Outcome::Success)
    );
}
