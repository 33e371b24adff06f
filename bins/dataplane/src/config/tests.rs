use super::*;

fn load(text: &str) -> Result<MeshState, ConfigError> {
    parse(Path::new("mesh.yaml"), text)
}

fn err(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

#[test]
fn example_file_compiles() {
    let s = load(include_str!("../../../../examples/mesh.yaml")).unwrap();
    assert_eq!(s.trust_domain.as_str(), DEFAULT_TRUST_DOMAIN);
    let echo = s.workload_by_ip("127.0.0.3".parse().unwrap()).unwrap();
    assert_eq!(
        echo.identity.as_str(),
        "spiffe://cluster.local/ns/demo/sa/echo"
    );
    assert_eq!(echo.node.as_deref(), Some("node-b"));
    assert_eq!(echo.hbone_addr, Some("127.0.0.3:15008".parse().unwrap()));
    let sp = s
        .service_by_vip("127.0.10.1:8080".parse().unwrap())
        .unwrap();
    assert_eq!(sp.endpoints.len(), 2, "echo v1 and v2");
    assert_eq!(sp.endpoints[0].port, 8080);
    // The echo service goes through the demo's waypoint, split by its VirtualService.
    assert_eq!(
        sp.service.waypoint.as_ref().map(|w| w.key()).as_deref(),
        Some("demo/waypoint")
    );
    assert!(s.routes.contains_key("echo.demo.svc.cluster.local"));
    let v2 = s
        .endpoint_set("echo.demo.svc.cluster.local", 8080, Some("v2"))
        .unwrap();
    assert_eq!(v2.endpoints.len(), 1);
    assert_eq!(v2.endpoints[0].workload.name, "echo-v2");
    assert!(
        s.service_by_host("Echo.demo.svc.cluster.local", 8080)
            .is_some()
    );
    let a = s.node("node-a").unwrap();
    assert!(a.service_listeners);
    assert_eq!(a.workloads.len(), 1);
}

const WE: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w, namespace: ns}\nspec:\n";

#[test]
fn names_file_document_field_and_reason() {
    let e = err(&format!("{WE}  address: 10.0.0.1\n  weight: 3\n"));
    assert!(e.starts_with("mesh.yaml: document 1 (WorkloadEntry ns/w): spec.weight: unsupported Istio field `weight`"), "{e}");
    let e = err(&format!("{WE}  address: 10.0.0.1\n  adress: x\n"));
    assert!(e.contains("unknown field `adress`"), "{e}");
    let e = err(&format!("{WE}  address: 1.2.3\n"));
    assert_eq!(
        e,
        "mesh.yaml: document 1 (WorkloadEntry ns/w): spec.address: \"1.2.3\" is not an IP address (host names are not supported here)"
    );
    let e = err(&format!(
        "{WE}  address: 10.0.0.1\n  serviceAccount: bad/sa\n"
    ));
    assert!(
        e.contains("spec.serviceAccount: \"bad/sa\" does not form a valid SPIFFE id"),
        "{e}"
    );
    let e = err(&format!(
        "{WE}  address: 10.0.0.1\n  ports: {{http: 70000}}\n"
    ));
    assert!(e.contains("spec.ports.http: 70000 is not a port"), "{e}");
}

#[test]
fn reports_every_problem_and_cross_references() {
    let text = format!(
        "{WE}  address: 10.0.0.1\n---\n{WE}  address: 10.0.0.1\n---\napiVersion: dataplane.mesh.dev/v1alpha1\nkind: Node\nmetadata: {{name: n}}\nspec:\n  address: 127.0.1.1\n  workloads: [ns/missing]\n---\napiVersion: security.istio.io/v1\nkind: EnvoyFilter\nmetadata: {{name: p}}\nspec: {{}}\n"
    );
    let e = load(&text).unwrap_err();
    let all = e.to_string();
    assert!(all.contains("duplicate WorkloadEntry ns/w"), "{all}");
    assert!(
        all.contains("10.0.0.1 is also the address of WorkloadEntry ns/w"),
        "{all}"
    );
    assert!(
        all.contains("spec.workloads[0]: no WorkloadEntry ns/missing"),
        "{all}"
    );
    assert!(
        all.contains("kind: EnvoyFilter is not supported yet"),
        "{all}"
    );
    assert_eq!(e.issues.len(), 4, "{all}");
}

#[test]
fn service_entry_rules() {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [s.example]\n";
    let e = err(&format!(
        "{se}  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
    ));
    assert!(
        e.contains("spec.resolution: \"DNS\" is not supported"),
        "{e}"
    );
    let e = err(&format!(
        "{se}  ports: [{{number: 80, name: http, protocol: FOO}}]\n"
    ));
    assert!(e.contains("spec.ports[0].protocol"), "{e}");
    let e = err(&format!(
        "{se}  ports: [{{number: 80, name: http}}]\n  endpoints: []\n"
    ));
    assert!(e.contains("unsupported Istio field `endpoints`"), "{e}");
    let e = err(
        "apiVersion: networking.istio.io/v2\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {}\n",
    );
    assert!(
        e.contains("apiVersion: \"networking.istio.io/v2\" is not valid"),
        "{e}"
    );
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: s}\nspec: {}\n");
    assert!(e.contains("unknown kind \"Pod\""), "{e}");
    let e = err("a: [unclosed\n");
    assert!(e.starts_with("mesh.yaml: YAML: "), "{e}");
}

#[test]
fn workload_port_name_overrides_target_port() {
    let text = format!(
        "{WE}  address: 10.0.0.1\n  labels: {{app: a}}\n  ports: {{web: 9090}}\n---\n{}",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s, namespace: ns}\nspec:\n  hosts: [s.ns]\n  addresses: [10.96.0.1]\n  ports:\n  - {number: 80, name: web, targetPort: 8080}\n  - {number: 81, name: other, targetPort: 8081}\n  workloadSelector: {labels: {app: a}}\n"
    );
    let s = load(&text).unwrap();
    assert_eq!(
        s.service_by_vip("10.96.0.1:80".parse().unwrap())
            .unwrap()
            .endpoints[0]
            .port,
        9090
    );
    assert_eq!(
        s.service_by_vip("10.96.0.1:81".parse().unwrap())
            .unwrap()
            .endpoints[0]
            .port,
        8081
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = load(&s);
        }

        #[test]
        fn arbitrary_addresses_are_validated(addr in "[0-9a-f:.]{0,20}") {
            let text = format!("{WE}  address: \"{addr}\"\n");
            match load(&text) {
                Ok(s) => prop_assert!(addr.parse::<IpAddr>().is_ok() && s.workloads.len() == 1),
                Err(e) => prop_assert!(e.to_string().contains("spec.address")),
            }
        }
    }
}
