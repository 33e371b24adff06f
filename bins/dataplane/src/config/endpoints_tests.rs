//! Endpoint choice through a parsed config: `WorkloadEntry.locality`, a `DestinationRule`'s
//! locality failover (with outlier detection), the L4 pick with a routing preference, and the
//! per-endpoint stats kept across config swaps.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mesh_l7::balance::locality::{Mode, Placement, Scope};

use super::super::{EndpointRegistry, MeshState, Service, ServicePort, parse};
use super::{Choice, Endpoint};

/// Node a (client, us-east/a/1), node b (web1 us-east/a/1, web2 us-east/b/1, web3 eu/x/1)
/// behind `web.ns.svc`; `dr` is the DestinationRule's `trafficPolicy`.
fn mesh(dr: &str, extra: &str) -> String {
    let mut y = String::from(
        "apiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {name: a}\nspec: {address: 10.9.0.1, workloads: [ns/client]}\n---\napiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {name: b}\nspec: {address: 10.9.0.2, workloads: [ns/web1, ns/web2, ns/web3]}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: client, namespace: ns}\nspec: {address: 10.9.0.10, locality: us-east/a/1}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web, namespace: ns}\nspec:\n  hosts: [web.ns.svc]\n  addresses: [10.9.0.100]\n  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]\n  workloadSelector: {labels: {app: web}}\n",
    );
    for (i, l) in ["us-east/a/1", "us-east/b/1", "eu/x/1"].iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web{}, namespace: ns}}\nspec: {{address: 10.9.0.2{}, labels: {{app: web}}, locality: {l}{extra}}}\n",
            i + 1,
            i + 1
        ));
    }
    if !dr.is_empty() {
        y.push_str(&format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: ns}}\nspec:\n  host: web.ns.svc\n  trafficPolicy: {dr}\n"));
    }
    y
}

fn load(y: &str) -> MeshState {
    parse(Path::new("mesh.yaml"), y).unwrap()
}

fn addr(i: u8) -> SocketAddr {
    format!("10.9.0.2{i}:8080").parse().unwrap()
}

fn name(e: &Endpoint) -> &str {
    &e.workload.name
}

#[test]
fn workload_entry_locality_is_parsed_or_rejected_by_name() {
    let s = load(&mesh("", ""));
    let w = s.workload_by_ip("10.9.0.22".parse().unwrap()).unwrap();
    let l = w.locality.as_ref().unwrap();
    assert_eq!((l.region.as_str(), l.zone.as_str()), ("us-east", "b"));
    let e = parse(Path::new("mesh.yaml"), &mesh("", "/extra/part")).unwrap_err();
    assert!(e.to_string().contains("spec.locality"), "{e}");
}

// Istio: with outlierDetection, locality failover applies by default (same zone first, then
// the region, then elsewhere); docs/tasks/traffic-management/locality-load-balancing/failover.
#[test]
fn l7_fails_over_zone_region_elsewhere() {
    let s = load(&mesh("{outlierDetection: {consecutive5xxErrors: 1}}", ""));
    EndpointRegistry::default().bind(&s, "a");
    let set = s.endpoint_set("web.ns.svc", 80, None).unwrap();
    let mut ejected: Vec<SocketAddr> = Vec::new();
    for want in ["web1", "web2", "web3"] {
        for _ in 0..20 {
            let (ep, _g) = set
                .choose_with(
                    |a| !ejected.contains(&a),
                    Choice::default(),
                    tokio::time::Instant::now(),
                )
                .unwrap();
            assert_eq!(name(ep), want);
        }
        ejected.push(addr(u8::try_from(ejected.len() + 1).unwrap()));
    }
    // Without outlier detection Istio applies no locality preference: all three are used.
    let s = load(&mesh("{loadBalancer: {simple: ROUND_ROBIN}}", ""));
    EndpointRegistry::default().bind(&s, "a");
    let set = s.endpoint_set("web.ns.svc", 80, None).unwrap();
    let names: std::collections::HashSet<String> = (0..6)
        .map(|_| name(set.choose().unwrap().0).to_owned())
        .collect();
    assert_eq!(names.len(), 3);
}

// Envoy previous_hosts: a retry avoids the endpoints earlier attempts tried.
#[test]
fn l7_retry_avoids_tried_endpoints() {
    let s = load(&mesh("{loadBalancer: {simple: LEAST_REQUEST}}", ""));
    EndpointRegistry::default().bind(&s, "a");
    let set = s.endpoint_set("web.ns.svc", 80, None).unwrap();
    let tried = [addr(1), addr(3)];
    for _ in 0..30 {
        let c = Choice {
            tried: &tried,
            hash: None,
        };
        let (ep, _g) = set
            .choose_with(|_| true, c, tokio::time::Instant::now())
            .unwrap();
        assert_eq!(name(ep), "web2");
    }
}

// ztunnel load_balance: STRICT keeps to endpoints matching every scope, even all unhealthy.
#[test]
fn l4_strict_preference_never_leaves_the_zone() {
    let s = load(&mesh("", ""));
    let sp = s.service_by_vip("10.9.0.100:80".parse().unwrap()).unwrap();
    let svc = &sp.service;
    let strict = Service {
        name: svc.name.clone(),
        namespace: svc.namespace.clone(),
        hosts: svc.hosts.clone(),
        vips: svc.vips.clone(),
        telemetry: svc.telemetry.clone(),
        waypoint: None,
        target_key: svc.target_key.clone(),
        weighted_waypoints: None,
        load_balancing: Some(Placement::Preference {
            scopes: vec![Scope::Region, Scope::Zone],
            mode: Mode::Strict,
        }),
        visibility: svc.visibility,
        canonical: svc.canonical,
    };
    let sp2 = ServicePort::new(
        Arc::new(strict),
        80,
        "http".into(),
        sp.protocol,
        sp.endpoints.clone(),
    );
    sp2.bind(&super::super::Here::of(&s, "a"), "");
    for _ in 0..10 {
        assert_eq!(name(sp2.pick().unwrap()), "web1");
        // Ejected: panic within the zone, never elsewhere.
        assert_eq!(name(sp2.pick_with(|_| false, &[]).unwrap()), "web1");
    }
}

// Warmup (Envoy slow start) needs first-seen times kept across config swaps: endpoints of the
// first config are warm; one added later ramps up from `minimumPercent`.
#[tokio::test(start_paused = true)]
async fn warmup_ramps_a_new_endpoint_across_swaps() {
    let dr = "{loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 100s}}";
    let reg = EndpointRegistry::default();
    // First config: web1 and web2 only (web3 unlabelled).
    let first = mesh(dr, "").replacen(
        "address: 10.9.0.23, labels: {app: web}",
        "address: 10.9.0.23, labels: {app: other}",
        1,
    );
    let s1 = load(&first);
    reg.bind(&s1, "a");
    let share = |s: &MeshState| {
        let set = s.endpoint_set("web.ns.svc", 80, None).unwrap();
        let n = (0..3000)
            .filter(|_| name(set.choose().unwrap().0) == "web3")
            .count();
        n as f64 / 3000.0
    };
    assert_eq!(share(&s1), 0.0);
    tokio::time::advance(std::time::Duration::from_secs(1000)).await;
    let s2 = load(&mesh(dr, ""));
    reg.bind(&s2, "a");
    let fresh = share(&s2);
    assert!(
        fresh < 0.1,
        "new endpoint starts near 10% of a warm one's share: {fresh}"
    );
    tokio::time::advance(std::time::Duration::from_secs(50)).await;
    // A config swap in between keeps web3's first-seen time.
    let s3 = load(&mesh(dr, ""));
    reg.bind(&s3, "a");
    let half = share(&s3);
    assert!(half > fresh && half < 0.3, "half-way: {half}");
    tokio::time::advance(std::time::Duration::from_secs(60)).await;
    let warm = share(&s3);
    assert!((0.28..=0.39).contains(&warm), "warm: a third, {warm}");
}

// A waypoint's locality is its own workload's (Istio: the waypoint pod's), found by its
// address.
#[test]
fn waypoint_takes_its_own_workloads_locality() {
    let y = mesh("{outlierDetection: {consecutive5xxErrors: 1}}", "")
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: ns}\nspec:\n  gatewayClassName: istio-waypoint\n  addresses: [{value: 10.9.0.3}]\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: wp-pod, namespace: ns}\nspec: {address: 10.9.0.3, locality: eu/x/9}\n";
    let s = load(&y);
    let here = super::super::Here::of(&s, "ns/wp");
    assert_eq!(here.locality.unwrap().region, "eu");
    EndpointRegistry::default().bind(&s, "ns/wp");
    let set = s.endpoint_set("web.ns.svc", 80, None).unwrap();
    // Same region first (web3, eu/x/1), though a different subzone.
    assert_eq!(name(set.choose().unwrap().0), "web3");
}

// Attacker: distinct hash keys (and requests) never add per-endpoint state; the registry holds
// the current config's endpoints only, pruned when one leaves.
#[test]
fn registry_is_bounded_by_the_config_not_by_traffic() {
    let dr = "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}";
    let reg = EndpointRegistry::default();
    let s = load(&mesh(dr, ""));
    reg.bind(&s, "a");
    let set = s.endpoint_set("web.ns.svc", 80, None).unwrap();
    let mut used = std::collections::HashSet::new();
    for k in 0..5000u64 {
        let c = Choice {
            tried: &[],
            hash: Some(mesh_l7::balance::hash::hash_bytes(&[&k.to_le_bytes()])),
        };
        used.insert(
            name(
                set.choose_with(|_| true, c, tokio::time::Instant::now())
                    .unwrap()
                    .0,
            )
            .to_owned(),
        );
    }
    assert_eq!(used.len(), 3);
    assert_eq!(reg.tracked(), 3);
    let fewer = mesh(dr, "").replacen(
        "address: 10.9.0.23, labels: {app: web}",
        "address: 10.9.0.23, labels: {app: other}",
        1,
    );
    reg.bind(&load(&fewer), "a");
    assert_eq!(reg.tracked(), 2, "web3 left: pruned");
}

// Istio (pilot ambient ServiceEntry conversion): the `networking.istio.io/traffic-distribution:
// PreferClose` annotation becomes routing preference [NETWORK, REGION, ZONE, SUBZONE],
// FAILOVER, which ztunnel applies per connection: the client's zone first.
#[test]
fn l4_prefer_close_from_the_service_entry_annotation() {
    let y = mesh("", "").replace(
        "metadata: {name: web, namespace: ns}\nspec:\n  hosts",
        "metadata: {name: web, namespace: ns, annotations: {networking.istio.io/traffic-distribution: PreferClose}}\nspec:\n  hosts",
    );
    let s = load(&y);
    let sp = s.service_by_vip("10.9.0.100:80".parse().unwrap()).unwrap();
    assert!(sp.service.load_balancing.is_some());
    EndpointRegistry::default().bind(&s, "a");
    for _ in 0..10 {
        assert_eq!(name(sp.pick().unwrap()), "web1");
    }
    // web1 unhealthy: the next tier (same region, other zone) before another region.
    assert_eq!(name(sp.pick_with(|a| a != addr(1), &[]).unwrap()), "web2");
    let bad = y.replace("PreferClose", "Nearby");
    let e = parse(Path::new("mesh.yaml"), &bad).unwrap_err().to_string();
    assert!(
        e.contains("metadata.annotations[networking.istio.io/traffic-distribution]"),
        "{e}"
    );
}

/// Attack: a config of many hashed sets (Maglev 65 537 slots each; `ringHash` up to 2^20)
/// used to build every table for every set in every role at apply, ztunnel included, which
/// never chooses from a set. Binding is now O(endpoints); a set's tables are built on its
/// first choice, and only that set's (Istio: a `consistentHash` table per cluster, built by
/// the proxy that routes to it).
#[test]
fn tables_are_built_on_first_use_only() {
    let s = load(&mesh(
        "{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}}",
        "",
    ));
    EndpointRegistry::default().bind(&s, "a");
    assert!(!s.endpoint_sets.is_empty());
    assert!(s.endpoint_sets.values().all(|set| !set.is_built()));
    let set = s.endpoint_sets.values().next().unwrap();
    let hash = Some(42);
    let choice = Choice { tried: &[], hash };
    let first = set.choose_with(|_| true, choice, tokio::time::Instant::now());
    let first = first.map(|(e, _)| e.addr());
    assert!(first.is_some());
    assert!(set.is_built());
    // Built from the binding (this proxy's place): the same key, the same endpoint.
    let again = set.choose_with(|_| true, choice, tokio::time::Instant::now());
    assert_eq!(again.map(|(e, _)| e.addr()), first);
}
