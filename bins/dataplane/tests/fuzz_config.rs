//! Fuzzing the YAML mesh config loader (`mesh_dataplane::config::parse`) over arbitrary text,
//! over the example configs (plus policy kinds) with mutations (YAML syntax tokens, anchors
//! and aliases, field names, chunks repeated up to 64 KiB), and over alias bombs.
//!
//! Properties: no panic, every load within the time bound (a bomb of a few hundred bytes
//! must not cost millions of nodes), and
//! - loading is deterministic (same verdict, same error text);
//! - an error names the file and, for each issue, where and why; an accepted config has a
//!   workload index that finds each of its workloads by address;
//! - the unmutated examples load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/mutate.rs"]
mod mutate;

use std::path::Path;

use mesh_dataplane::config::{ConfigError, MeshState, parse};
use proptest::prelude::*;

const POLICIES: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [\"cluster.local/ns/demo/sa/client\"], ipBlocks: [10.0.0.0/8]}}]
    to: [{operation: {ports: [\"8080\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7, namespace: demo}
spec:
  targetRefs: [{kind: Service, name: echo}]
  action: DENY
  rules:
  - to: [{operation: {paths: [\"/admin*\", \"/api/{*}/x\"], methods: [POST]}}]
    when: [{key: \"request.headers[x-user]\", values: [evil]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: \"\", name: echo}]
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks.json
    audiences: [api]
    timeout: 1.5s
    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  mtls: {mode: STRICT}
  portLevelMtls: {\"8080\": {mode: PERMISSIVE}}
";

fn seeds() -> Vec<Vec<u8>> {
    let mesh = include_str!("../../../examples/mesh.yaml");
    let mixed = include_str!("../../../examples/mesh-mixed.yaml");
    vec![
        mesh.as_bytes().to_vec(),
        mixed.as_bytes().to_vec(),
        format!("{mesh}{POLICIES}").into_bytes(),
    ]
}

const DICT: &[&[u8]] = &[
    b"\n---\n",
    b"\n- ",
    b": ",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b"? ",
    b"|\n",
    b">-\n",
    b"!!binary ",
    b"!!str ",
    b"!custom ",
    b"%YAML 1.2\n",
    b"~",
    b"null",
    b".inf",
    b"0x10",
    b"1e999",
    b"65536",
    b"no",
    b"\t",
    b"#",
    b"'",
    b"kind: ",
    b"metadata:",
    b"spec:",
    b"name: ",
    b"namespace: ",
    b"labels:",
    b"address: ",
    b"selector: {matchLabels: {}}",
    b"targetRefs: [{kind: Gateway, name: waypoint}]",
    b"ports: [{number: 0}]",
    b"::1",
    b"/0",
    b"spiffe://",
];

/// A billion laughs: `levels` anchors, each a list of `width` aliases of the previous one.
fn bomb(levels: usize, width: usize) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Bomb\nl0: &l0 [\"x\", \"x\"]\n");
    for l in 1..levels {
        let items = vec![format!("*l{}", l - 1); width].join(", ");
        s.push_str(&format!("l{l}: &l{l} [{items}]\n"));
    }
    s
}

fn load(text: &str) -> Result<MeshState, ConfigError> {
    mutate::timed("config::parse", text.len(), || {
        parse(Path::new("fuzz.yaml"), text)
    })
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let first = load(text);
    let second = parse(Path::new("fuzz.yaml"), text);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            prop_assert_eq!(a.workloads.len(), b.workloads.len());
            for w in &a.workloads {
                prop_assert!(
                    a.workload_by_ip(w.address).is_some(),
                    "{} not indexed",
                    w.name
                );
            }
        }
        (Err(a), Err(b)) => {
            prop_assert_eq!(&a.issues, &b.issues, "nondeterministic error");
            prop_assert!(!a.issues.is_empty());
            for i in &a.issues {
                prop_assert!(!i.location.is_empty() && !i.reason.is_empty(), "{:?}", i);
            }
            prop_assert!(a.to_string().starts_with("fuzz.yaml: "));
        }
        _ => prop_assert!(false, "nondeterministic verdict"),
    }
    Ok(())
}

#[test]
fn known_examples_load() {
    for s in seeds() {
        load(std::str::from_utf8(&s).unwrap()).unwrap();
    }
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn arbitrary_text(b in mutate::bytes(2000)) {
        check(&mutate::text(&b))?;
    }

    #[test]
    fn near_valid_configs(b in mutate::near(seeds(), DICT)) {
        check(&mutate::text(&b))?;
    }

    #[test]
    fn alias_bombs(levels in 2usize..12, width in 2usize..12) {
        check(&bomb(levels, width))?;
    }
}
