#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn vs_kind() -> KubeKind {
    KUBE_KINDS[0]
}

fn watch(ns: &str) -> WatchKey {
    WatchKey {
        kind: vs_kind(),
        namespace: ns.into(),
    }
}

/// A VirtualService as the API server returns it (server-set metadata, status).
fn vs(ns: &str, name: &str, dest: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": name, "namespace": ns, "uid": "u-1", "resourceVersion": "7",
            "generation": 2, "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        "spec": {
            "hosts": [format!("{name}.{ns}.svc.cluster.local")],
            "http": [{"route": [{"destination": {"host": dest}}]}],
        },
        "status": {"observedGeneration": 2},
    })
}

fn issues(a: &Applied) -> String {
    match a {
        Applied::Rejected { issues, .. } => issues
            .iter()
            .map(|i| format!("{}: {}: {}", i.location, i.field, i.reason))
            .collect::<Vec<_>>()
            .join("\n"),
        other => panic!("not rejected: {other:?}"),
    }
}

#[test]
fn an_object_becomes_the_l7_file_document() {
    let mut o = KubeObjects::new(KubeLimits::default());
    let w = watch("ns");
    assert_eq!(o.apply(&w, &vs("ns", "web", "a")), Applied::Changed);
    // Same spec, new resourceVersion and status: nothing to rebuild.
    let mut again = vs("ns", "web", "a");
    again["metadata"]["resourceVersion"] = json!("8");
    again["status"] = json!({"observedGeneration": 3});
    assert_eq!(o.apply(&w, &again), Applied::Unchanged);
    let (res, problems) = o.resources();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(res.virtual_services.len(), 1);
    assert_eq!(res.virtual_services[0].location, "VirtualService ns/web");
    assert!(o.delete(&w, &vs("ns", "web", "a")));
    assert!(o.resources().0.is_empty());
}

#[test]
fn a_bad_object_is_rejected_by_name_and_its_last_good_version_stays() {
    let mut o = KubeObjects::new(KubeLimits::default());
    let w = watch("ns");
    o.apply(&w, &vs("ns", "web", "a"));
    let mut bad = vs("ns", "web", "a");
    bad["spec"]["http"][0]["timeoutt"] = json!("1s");
    let a = o.apply(&w, &bad);
    let text = issues(&a);
    assert!(
        text.starts_with("VirtualService ns/web: spec.http[0]"),
        "{text}"
    );
    assert!(text.contains("timeoutt"), "{text}");
    assert!(matches!(a, Applied::Rejected { fresh: true, .. }));
    // The same bad version again (a resync) is not a new rejection.
    assert!(matches!(
        o.apply(&w, &bad),
        Applied::Rejected { fresh: false, .. }
    ));
    assert_eq!(o.len(), 1);
    assert_eq!(o.rejected(), 1);
    // Others still apply.
    assert_eq!(o.apply(&w, &vs("ns", "api", "b")), Applied::Changed);
    assert_eq!(o.resources().0.virtual_services.len(), 2);
}

#[test]
fn checks_of_the_l7_file_apply() {
    // Istio: a selector on labels istiod does not send would match nothing (the L7 file's
    // rule, `l7file.rs`); the same object from Kubernetes is refused the same way.
    let mut o = KubeObjects::new(KubeLimits::default());
    let w = WatchKey {
        kind: KUBE_KINDS[3],
        namespace: "ns".into(),
    };
    let p = json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                 "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]},
    });
    let text = issues(&o.apply(&w, &p));
    assert!(
        text.contains("AuthorizationPolicy ns/p: spec.selector.matchLabels.app"),
        "{text}"
    );
}

#[test]
fn an_object_of_another_namespace_is_refused() {
    // Attack: an API server (or a proxy in front of it) answering a watch of `ns` with an
    // object of `victim`; it must not land in `victim`'s policies or routes.
    let mut o = KubeObjects::new(KubeLimits::default());
    let text = issues(&o.apply(&watch("ns"), &vs("victim", "web", "evil")));
    assert!(text.contains("metadata.namespace"), "{text}");
    assert!(o.is_empty());
}

#[test]
fn unknown_top_level_fields_and_other_kinds_are_refused_by_name() {
    let mut o = KubeObjects::new(KubeLimits::default());
    let mut x = vs("ns", "web", "a");
    x["specc"] = json!({});
    assert!(issues(&o.apply(&watch("ns"), &x)).contains("VirtualService ns/web: specc: "));
    let mut y = vs("ns", "web", "a");
    y["kind"] = json!("DestinationRule");
    assert!(issues(&o.apply(&watch("ns"), &y)).contains(": kind: expected VirtualService"));
}

#[test]
fn caps_on_count_and_size() {
    let limits = KubeLimits {
        max_objects: 3,
        max_object_bytes: 2048,
    };
    let mut o = KubeObjects::new(limits);
    let w = watch("ns");
    for i in 0..3 {
        assert_eq!(
            o.apply(&w, &vs("ns", &format!("r{i}"), "a")),
            Applied::Changed
        );
    }
    assert!(issues(&o.apply(&w, &vs("ns", "r3", "a"))).contains("more than 3 objects"));
    // A held object may still change at the cap.
    assert!(o.delete(&w, &vs("ns", "r2", "a")));
    let mut big = vs("ns", "big", "a");
    big["metadata"]["labels"] = json!({"x": "y".repeat(4096)});
    assert!(issues(&o.apply(&w, &big)).contains("larger than 2048"));
    assert_eq!(o.len(), 2);
}

#[test]
fn a_relist_replaces_a_watch_only_when_complete() {
    let mut o = KubeObjects::new(KubeLimits::default());
    let w = watch("ns");
    let other = watch("other");
    o.apply(&w, &vs("ns", "gone", "a"));
    o.apply(&w, &vs("ns", "kept", "a"));
    o.apply(&other, &vs("other", "x", "a"));
    o.init(&w);
    o.init_apply(&w, &vs("ns", "kept", "b"));
    let mut bad = vs("ns", "gone", "a");
    bad["spec"]["hosts"] = json!(42);
    assert!(matches!(o.init_apply(&w, &bad), Applied::Rejected { .. }));
    o.init_apply(&w, &vs("ns", "new", "a"));
    // Until InitDone the old objects serve.
    assert_eq!(o.len(), 3);
    assert!(o.init_done(&w));
    let res = o.resources().0;
    let names: Vec<_> = res
        .virtual_services
        .iter()
        .map(|v| v.location.clone())
        .collect();
    // `gone` was listed in a bad version: its last good one stays.
    assert_eq!(
        names,
        [
            "VirtualService ns/gone",
            "VirtualService ns/kept",
            "VirtualService ns/new",
            "VirtualService other/x"
        ]
    );
    // A relist without `gone`: removed, and its rejection forgotten.
    o.init(&w);
    o.init_apply(&w, &vs("ns", "kept", "b"));
    assert!(o.init_done(&w));
    assert_eq!(o.len(), 2);
    assert_eq!(o.rejected(), 0);
    // The same list again changes nothing.
    o.init(&w);
    o.init_apply(&w, &vs("ns", "kept", "b"));
    assert!(!o.init_done(&w));
    assert!(o.forget(&w));
    assert_eq!(o.len(), 1);
}

#[derive(Debug, Clone)]
enum Ev {
    Init(u8),
    InitApply(u8, u8),
    InitDone(u8),
    Apply(u8, u8),
    Delete(u8, u8),
    Forget(u8),
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (0..2u8).prop_map(Ev::Init),
        (0..2u8, 0..12u8).prop_map(|(w, n)| Ev::InitApply(w, n)),
        (0..2u8).prop_map(Ev::InitDone),
        (0..2u8, 0..12u8).prop_map(|(w, n)| Ev::Apply(w, n)),
        (0..2u8, 0..12u8).prop_map(|(w, n)| Ev::Delete(w, n)),
        (0..2u8).prop_map(Ev::Forget),
    ]
}

proptest! {
    /// Whatever the API server sends, the objects held stay under the cap, every one held
    /// was accepted in its own namespace, and they always assemble without a problem.
    #[test]
    fn events_never_exceed_the_cap(events in proptest::collection::vec(ev(), 0..60)) {
        let mut o = KubeObjects::new(KubeLimits { max_objects: 5, max_object_bytes: 4096 });
        let ws = [watch("a"), watch("b")];
        for e in events {
            match e {
                Ev::Init(w) => o.init(&ws[usize::from(w)]),
                Ev::InitApply(w, n) => {
                    let w = &ws[usize::from(w)];
                    o.init_apply(w, &vs(&w.namespace, &format!("r{n}"), "d"));
                }
                Ev::InitDone(w) => {
                    o.init_done(&ws[usize::from(w)]);
                }
                Ev::Apply(w, n) => {
                    let w = &ws[usize::from(w)];
                    // Every third object names the other namespace: always refused.
                    let ns = if n % 3 == 0 { "c" } else { w.namespace.as_str() };
                    o.apply(w, &vs(ns, &format!("r{n}"), "d"));
                }
                Ev::Delete(w, n) => {
                    let w = &ws[usize::from(w)];
                    o.delete(w, &vs(&w.namespace, &format!("r{n}"), "d"));
                }
                Ev::Forget(w) => {
                    o.forget(&ws[usize::from(w)]);
                }
            }
            prop_assert!(o.len() <= 5);
            prop_assert!(o.rejected() <= 5);
        }
        let (res, problems) = o.resources();
        prop_assert!(problems.is_empty());
        prop_assert!(res.virtual_services.iter().all(|v| !v.location.contains(" c/")));
    }
}

/// The example mesh plus service `shop` (namespace `shop`) bound to the demo waypoint across
/// namespaces, and service `plain` (namespace `plain`) with no waypoint.
fn scoped_mesh() -> crate::config::MeshState {
    let extra = r#"
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: shop, namespace: shop}
spec: {address: 127.0.0.9, serviceAccount: shop, labels: {app: shop}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: shop
  namespace: shop
  labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: demo}
spec:
  hosts: [shop.shop.svc.cluster.local]
  addresses: [127.0.10.9]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: shop}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: plain, namespace: plain}
spec: {address: 127.0.0.10, serviceAccount: plain, labels: {app: plain}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: plain}
spec:
  hosts: [plain.plain.svc.cluster.local]
  addresses: [127.0.10.10]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: plain}}
"#;
    let text = format!(
        "{}{extra}",
        include_str!("../../../../../examples/mesh.yaml")
    );
    crate::config::parse(std::path::Path::new("mesh.yaml"), &text).unwrap()
}

#[test]
fn a_waypoint_watches_its_services_namespaces_a_sidecar_every_services() {
    let state = scoped_mesh();
    let mut scope = KubeScope {
        own_namespace: "demo".into(),
        own_address: "127.0.1.3".parse().unwrap(),
        every_service: false,
        max_namespaces: 32,
    };
    let names = |s: &KubeScope| {
        let (set, left_out) = s.namespaces(&state);
        (set.into_iter().collect::<Vec<_>>(), left_out)
    };
    // Istio gives a waypoint the config of the services bound to it (here across
    // namespaces with istio.io/use-waypoint-namespace), its own namespace's and the root's.
    assert_eq!(
        names(&scope),
        (vec!["demo".into(), "istio-system".into(), "shop".into()], 0)
    );
    // A proxy at another address serves none of them.
    scope.own_address = "127.0.1.99".parse().unwrap();
    assert_eq!(
        names(&scope),
        (vec!["demo".into(), "istio-system".into()], 0)
    );
    // A sidecar routes to every service.
    scope.every_service = true;
    let (all, _) = names(&scope);
    assert!(
        all.contains(&"plain".to_owned()) && all.contains(&"shop".to_owned()),
        "{all:?}"
    );
    // Capped: own and root first.
    scope.max_namespaces = 2;
    assert_eq!(
        names(&scope),
        (vec!["demo".into(), "istio-system".into()], 2)
    );
}
