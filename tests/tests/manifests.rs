//! The deployment files in `deploy/` against the binaries' real command lines, and the
//! cross-object invariants that make Istio route through them. (Their schemas are checked by
//! `scripts/validate-manifests.py`, run by `scripts/test`.)
//!
//! - Every container of ours (image `registry.example.com/mesh/<binary>:…`) in
//!   `deploy/k8s/**/*.yaml`: its `args`, with `$(VAR)` expanded from its env as the kubelet
//!   does, parse with the binary's own clap arguments (`WaypointArgs`, `SidecarArgs`), or, for
//!   `meshctl`, run with `--dry-run` and print the rules they would install.
//! - The waypoint: Gateway, ServiceAccount, Deployment labels, Service and `--gateway` agree.
//! - Least privilege, as an attacker would probe it: no privileged or host-namespace pod, only
//!   the capture init container holds capabilities, the RBAC reads only, the build context
//!   leaves out local CA keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;

/// Where our images are pushed in the examples; the path's last part is the binary.
const OUR_IMAGES: &str = "registry.example.com/mesh/";
/// The pod IP the expansion of `status.podIP` yields (this test's loopback block).
const POD_IP: &str = "127.227.0.1";

#[derive(Debug, Parser)]
struct WaypointCli {
    #[command(flatten)]
    args: mesh_dataplane::WaypointArgs,
}

#[derive(Debug, Parser)]
struct SidecarCli {
    #[command(flatten)]
    args: mesh_dataplane::SidecarArgs,
}

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// Every document of every manifest (not the Helm values), with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut files = Vec::new();
    let mut dirs = vec![k8s_dir()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("values.yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 4,
        "manifests not found in {}",
        k8s_dir().display()
    );
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let parsed: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.strip_prefix(k8s_dir()).unwrap().display().to_string();
        docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
    }
    docs
}

fn kind<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The pod spec of a Pod or of a workload's template.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(&doc["spec"]),
        "Deployment" | "DaemonSet" | "StatefulSet" | "Job" => {
            Some(&doc["spec"]["template"]["spec"])
        }
        _ => None,
    }
}

/// Init containers and containers of a pod spec.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |k| spec[k].as_array().into_iter().flatten())
}

/// A container's args with `$(VAR)` replaced from its env, as the kubelet expands them; a
/// reference to an undefined variable stays literal in Kubernetes, which here is a failure.
fn expanded_args(c: &Value, namespace: &str, pod: &str) -> Vec<String> {
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let value = match (
            &e["value"],
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Value::String(v), _) => v.clone(),
            (_, Some("status.podIP")) => POD_IP.to_string(),
            (_, Some("metadata.namespace")) => namespace.to_string(),
            (_, Some("metadata.name")) => pod.to_string(),
            (_, other) => panic!("env {}: unexpected source {other:?}", e["name"]),
        };
        env.insert(e["name"].as_str().unwrap().to_string(), value);
    }
    let args = c["args"].as_array().map(Vec::as_slice).unwrap_or_default();
    args.iter()
        .map(|a| {
            let mut s = a.as_str().expect("args are strings").to_string();
            for (k, v) in &env {
                s = s.replace(&format!("$({k})"), v);
            }
            assert!(
                !s.contains("$("),
                "{}: undefined variable in {s:?}",
                c["name"]
            );
            s
        })
        .collect()
}

/// Our containers: (file, binary, namespace, container).
fn ours(docs: &[(String, Value)]) -> Vec<(String, String, String, Value)> {
    let mut out = Vec::new();
    for (file, doc) in docs {
        let Some(spec) = pod_spec(doc) else { continue };
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
        for c in containers(spec) {
            let image = c["image"].as_str().unwrap();
            if let Some(rest) = image.strip_prefix(OUR_IMAGES) {
                let binary = rest.split(':').next().unwrap().to_string();
                out.push((file.clone(), binary, ns.to_string(), c.clone()));
            }
        }
    }
    out
}

/// The manifests' waypoint and sidecar arguments are accepted by the binaries' own clap
/// definitions, and mean what the manifests intend (istiod, its CA, the pod IP).
#[test]
fn proxy_args_parse_with_the_real_command_line() {
    let docs = documents();
    let mut seen = BTreeMap::new();
    for (file, binary, ns, c) in ours(&docs) {
        let args = expanded_args(&c, &ns, "echo");
        let argv = std::iter::once(binary.clone()).chain(args.iter().cloned());
        let (xds, ca, address) = match binary.as_str() {
            "waypoint" => {
                let a = WaypointCli::try_parse_from(argv)
                    .unwrap_or_else(|e| panic!("{file}: waypoint {args:?}: {e}"))
                    .args;
                assert_eq!(a.gateway, format!("{ns}/waypoint"), "{file}");
                assert!(a.kube.kube, "{file}: waypoint L7 from Kubernetes (--kube)");
                (a.common.xds_address, a.common.ca_address, a.address)
            }
            "sidecar" => {
                let a = SidecarCli::try_parse_from(argv)
                    .unwrap_or_else(|e| panic!("{file}: sidecar {args:?}: {e}"))
                    .args;
                assert_eq!(a.workload, format!("{ns}/echo"), "{file}");
                // Non-root: no socket mark (CAP_NET_ADMIN); capture excludes it by uid.
                assert_eq!(a.common.socket_mark, Some(0), "{file}");
                assert!(a.kube.kube, "{file}: sidecar L7 from Kubernetes (--kube)");
                (a.common.xds_address, a.common.ca_address, a.address)
            }
            "meshctl" => {
                meshctl_dry_run(&file, &args);
                *seen.entry(binary).or_insert(0) += 1;
                continue;
            }
            other => panic!("{file}: no check for image {other}"),
        };
        let istiod = Some("https://istiod.istio-system.svc:15012".to_string());
        assert_eq!(xds, istiod, "{file}: {binary} --xds-address");
        assert_eq!(ca, istiod, "{file}: {binary} --ca-address");
        assert_eq!(
            address,
            Some(POD_IP.parse().unwrap()),
            "{file}: {binary} --address"
        );
        *seen.entry(binary).or_insert(0) += 1;
    }
    let kinds: Vec<_> = seen.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        ["meshctl", "sidecar", "waypoint"],
        "containers checked: {seen:?}"
    );
}

/// The capture init container's arguments, run for real with `--dry-run` (no root needed):
/// the rules redirect to the sidecar's ports and skip the sidecar's uid.
fn meshctl_dry_run(file: &str, args: &[String]) {
    assert_eq!(args[..2], ["capture", "install"], "{file}: {args:?}");
    let out = std::process::Command::new(mesh_tests::bin("meshctl"))
        .args(args)
        .arg("--dry-run")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{file}: meshctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("--uid-owner 1337 -j RETURN"), "{stdout}");
    assert!(stdout.contains("REDIRECT --to-ports 15001"), "{stdout}");
    assert!(stdout.contains("REDIRECT --to-ports 15006"), "{stdout}");
    // `--mark 0`: the sidecar marks nothing, so no mark rule either.
    assert!(!stdout.contains("--mark"), "{stdout}");
}

/// What makes istiod send ztunnel traffic to our waypoint and expect its identity:
/// - a Gateway of class `istio-waypoint` whose `spec.addresses` is one `Hostname` is
///   "unmanaged" (istiod deploys nothing and uses that Service: Istio
///   `pilot/pkg/config/kube/gatewaycommon/gateway_utils.go` `IsManaged`, and
///   `gateway/conversion.go` `extractGatewayServices`, which expands a short name);
/// - the ztunnels expect the service accounts of the pods labelled
///   `gateway.networking.k8s.io/gateway-name: <gateway>` (Istio
///   `pilot/pkg/serviceregistry/ambient/waypoints.go` `gatewayToWaypointTransform`), and our
///   waypoint presents the identity of the service account named after its Gateway;
/// - the HBONE listener is `mesh`, 15008, protocol `HBONE` (Istio's waypoint Gateways).
#[test]
fn waypoint_gateway_service_and_identity_agree() {
    let docs = documents();
    let gw = kind(&docs, "Gateway", "waypoint");
    let ns = gw["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(gw["spec"]["gatewayClassName"], "istio-waypoint");
    let addresses = gw["spec"]["addresses"].as_array().unwrap();
    assert_eq!(
        addresses.len(),
        1,
        "exactly one address: unmanaged only then"
    );
    assert_eq!(addresses[0]["type"], "Hostname");
    let svc_name = "waypoint";
    assert_eq!(
        addresses[0]["value"],
        format!("{svc_name}.{ns}.svc.cluster.local")
    );
    let listeners = gw["spec"]["listeners"].as_array().unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["port"] == 15008 && l["protocol"] == "HBONE"),
        "{listeners:?}"
    );

    let svc = kind(&docs, "Service", svc_name);
    let dep = kind(&docs, "Deployment", "waypoint");
    let template = &dep["spec"]["template"];
    let pod_labels = &template["metadata"]["labels"];
    assert_eq!(
        pod_labels["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );
    // Not captured by ambient, no Envoy injected: the waypoint is the proxy.
    assert_eq!(pod_labels["istio.io/dataplane-mode"], "none");
    assert_eq!(pod_labels["sidecar.istio.io/inject"], "false");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[k], v,
            "the Service selects the waypoint pods ({k})"
        );
    }
    let ports: Vec<_> = svc["spec"]["ports"].as_array().unwrap().iter().collect();
    assert!(
        ports
            .iter()
            .any(|p| p["port"] == 15008 && p["appProtocol"] == "hbone")
    );
    // Identity: spiffe://<td>/ns/<ns>/sa/<gateway name>.
    assert_eq!(template["spec"]["serviceAccountName"], "waypoint");
    kind(&docs, "ServiceAccount", "waypoint");
    let bindings = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "ClusterRoleBinding")
        .filter(|(_, d)| {
            d["subjects"].as_array().unwrap().iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == "waypoint" && s["namespace"] == ns
            })
        })
        .count();
    assert_eq!(bindings, 1, "the waypoint may read the L7 kinds");
}

/// The Helm values for Istio's ztunnel chart replace the image only, with a full reference
/// (the chart uses an `image` containing "/" as is; hub/tag/variant could be rewritten by
/// the `ambient` profile's `variant: distroless`).
#[test]
fn ztunnel_values_set_only_the_image() {
    let text = std::fs::read_to_string(k8s_dir().join("ztunnel/values.yaml")).unwrap();
    let values: Value = serde_saphyr::from_str(&text).unwrap();
    let map = values.as_object().unwrap();
    assert_eq!(map.keys().collect::<Vec<_>>(), ["image"]);
    let image = map["image"].as_str().unwrap();
    assert!(
        image.starts_with(OUR_IMAGES) && image.contains("/ztunnel:"),
        "{image}"
    );
}

/// Least privilege, read as an attacker looking for a foothold would: no pod shares the
/// node's namespaces or filesystem, no container is privileged or can gain privileges, only
/// the capture init container holds capabilities (NET_ADMIN and NET_RAW, as Istio's
/// istio-init), the proxies run as uid 1337 on a read-only root, and the L7 reader role can
/// read nothing else (no Secrets) and write nothing.
#[test]
fn least_privilege() {
    let docs = documents();
    let mut checked = 0;
    for (file, doc) in &docs {
        let Some(spec) = pod_spec(doc) else { continue };
        for k in ["hostNetwork", "hostPID", "hostIPC"] {
            assert_ne!(spec[k], true, "{file}: {k}");
        }
        for v in spec["volumes"].as_array().into_iter().flatten() {
            assert!(v.get("hostPath").is_none(), "{file}: hostPath volume {v}");
        }
        no_api_token_for_the_application(file, spec);
        for c in containers(spec) {
            let sc = &c["securityContext"];
            assert_ne!(sc["privileged"], true, "{file}: {} privileged", c["name"]);
            if !c["image"].as_str().unwrap().starts_with(OUR_IMAGES) {
                continue;
            }
            checked += 1;
            let name = c["name"].as_str().unwrap();
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}: {name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{file}: {name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{file}: {name}"
            );
            let add = &sc["capabilities"]["add"];
            if c["args"][0] == "capture" {
                assert_eq!(
                    add,
                    &serde_json::json!(["NET_ADMIN", "NET_RAW"]),
                    "{file}: {name}"
                );
            } else {
                assert!(add.is_null(), "{file}: {name} adds capabilities {add}");
                assert_eq!(sc["runAsNonRoot"], true, "{file}: {name}");
                assert_eq!(sc["runAsUser"], 1337, "{file}: {name}");
            }
        }
    }
    assert_eq!(checked, 3, "waypoint, sidecar, capture init");

    let role = kind(&docs, "ClusterRole", "mesh-l7-reader");
    for rule in role["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                "{rule}"
            );
        }
        for list in ["apiGroups", "resources"] {
            for item in rule[list].as_array().unwrap() {
                let s = item.as_str().unwrap();
                assert!(
                    !s.is_empty() && s != "*",
                    "{list} {s:?}: core group or wildcard"
                );
            }
        }
    }
}

/// The pod's service account may read every AuthorizationPolicy, VirtualService and
/// EnvoyFilter (mesh-l7-reader): a container that is not ours (the application) must get no
/// API token, neither automounted (the pod says `automountServiceAccountToken: false`) nor
/// from a projected token volume. Kubernetes docs, "Configure Service Accounts for Pods":
/// opting out of automounting at the pod level, and the projected `kube-api-access` volume.
fn no_api_token_for_the_application(file: &str, spec: &Value) {
    let theirs: Vec<&Value> = containers(spec)
        .filter(|c| !c["image"].as_str().unwrap().starts_with(OUR_IMAGES))
        .collect();
    if theirs.is_empty() {
        return;
    }
    assert_eq!(
        spec["automountServiceAccountToken"], false,
        "{file}: the application's container would get the API token"
    );
    let tokens: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| {
            v["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s.get("serviceAccountToken").is_some())
        })
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for c in theirs {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap();
            assert!(
                !tokens.contains(&name),
                "{file}: {} mounts the token volume {name}",
                c["name"]
            );
        }
    }
    // The sidecar still finds its token where kube-rs's in-cluster config reads it.
    let kube_api = containers(spec)
        .filter(|c| {
            c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a == "--kube")
        })
        .all(|c| {
            c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
                m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
                    && tokens.contains(&m["name"].as_str().unwrap())
            })
        });
    assert!(kube_api, "{file}: a --kube container has no API token");
}

/// The image build context leaves out what must never reach an image layer: the demo's local
/// CA (its private key is in `.meshctl/`), the git history, build output.
#[test]
fn docker_build_context_excludes_local_secrets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for must in [".meshctl/", ".git/", "target/"] {
        assert!(lines.contains(&must), ".dockerignore lacks {must}");
    }
}

/// The L7 reader role grants exactly the kinds the Kubernetes source (`--kube`) watches:
/// a kind added to the source without the role would be forbidden in a cluster, one in the
/// role but not watched would be a needless grant.
#[test]
fn l7_reader_role_grants_exactly_what_the_source_watches() {
    let docs = documents();
    let role = kind(&docs, "ClusterRole", "mesh-l7-reader");
    let mut granted = std::collections::BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                granted.insert((
                    g.as_str().unwrap().to_string(),
                    r.as_str().unwrap().to_string(),
                ));
            }
        }
    }
    let watched: std::collections::BTreeSet<_> = mesh_dataplane::config::k8s::KUBE_KINDS
        .iter()
        .map(|k| (k.group.to_string(), k.plural.to_string()))
        .collect();
    assert_eq!(granted, watched);
}
