#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use http::StatusCode;

use crate::config::{parse, parse_l7};

fn mesh(providers: &str) -> String {
    format!(
        "apiVersion: dataplane.mesh.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec:\n  extensionProviders:\n{providers}"
    )
}

const CUSTOM: &str = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: ns}\nspec:\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n";

fn err(text: &str) -> String {
    parse(Path::new("mesh.yaml"), text).unwrap_err().to_string()
}

/// Istio's `envoyExtAuthzGrpc` fields and defaults (timeout 10m, statusOnError 403); the
/// `[<namespace>/]<hostname>` form of `service`.
#[test]
fn grpc_providers_are_indexed_by_name() {
    let text = mesh(
        "  - name: opa\n    envoyExtAuthzGrpc: {service: ns/Authz.ns.svc, port: 9000}\n  - name: strict\n    envoyExtAuthzGrpc: {service: authz.ns.svc, port: 9000, timeout: 250ms, failOpen: true, statusOnError: \"503\", clearRouteCache: true}\n",
    ) + CUSTOM;
    let s = parse(Path::new("mesh.yaml"), &text).unwrap();
    assert!(s.ext_authz.has_custom);
    let opa = &s.ext_authz.by_name["opa"];
    assert_eq!((opa.host.as_str(), opa.port), ("authz.ns.svc", 9000));
    assert_eq!(opa.settings.timeout, Duration::from_secs(600));
    assert_eq!(opa.settings.status_on_error, StatusCode::FORBIDDEN);
    assert!(!opa.settings.fail_open);
    let strict = &s.ext_authz.by_name["strict"];
    assert_eq!(strict.settings.timeout, Duration::from_millis(250));
    assert_eq!(
        strict.settings.status_on_error,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(strict.settings.fail_open);
    // Without CUSTOM policies the layer stays off.
    let s = parse(
        Path::new("mesh.yaml"),
        &mesh("  - name: opa\n    envoyExtAuthzGrpc: {service: a.ns.svc, port: 1}\n"),
    )
    .unwrap();
    assert!(!s.ext_authz.has_custom);
}

/// Never silently ignored: unsupported kinds and fields are named.
#[test]
fn unsupported_providers_and_fields_are_rejected_by_name() {
    for (provider, field, why) in [
        (
            "envoyExtAuthzHttp: {service: a.ns.svc, port: 80}",
            "spec.extensionProviders[0].envoyExtAuthzHttp",
            "HTTP ext_authz API is not supported",
        ),
        (
            "zipkin: {service: z.ns.svc, port: 9411}",
            "spec.extensionProviders[0].zipkin",
            "only envoyExtAuthzGrpc",
        ),
        (
            "envoyExtAuthzGrpc: {service: a.ns.svc, port: 80, includeRequestBodyInCheck: {maxRequestBytes: 10}}",
            "envoyExtAuthzGrpc.includeRequestBodyInCheck",
            "bodies are not sent",
        ),
        (
            "envoyExtAuthzGrpc: {service: a.ns.svc, port: 80, headersToUpstreamOnAllow: [x-user]}",
            "envoyExtAuthzGrpc.headersToUpstreamOnAllow",
            "a field of envoyExtAuthzHttp",
        ),
        (
            "envoyExtAuthzGrpc: {service: a.ns.svc, port: 80, statusOnError: \"200\"}",
            "envoyExtAuthzGrpc.statusOnError",
            "not an HTTP error status",
        ),
        (
            "envoyExtAuthzGrpc: {service: a.ns.svc, port: 80, clearRouteCache: false}",
            "envoyExtAuthzGrpc.clearRouteCache",
            "only true is valid",
        ),
        (
            "envoyExtAuthzGrpc: {service: a.ns.svc, port: 70000}",
            "envoyExtAuthzGrpc.port",
            "not a port",
        ),
        (
            "envoyExtAuthzGrpc: {service: a.ns.svc, port: 80, timout: 1s}",
            "envoyExtAuthzGrpc",
            "unknown field `timout`",
        ),
    ] {
        let e = err(&mesh(&format!("  - name: opa\n    {provider}\n")));
        assert!(e.contains(field) && e.contains(why), "{provider}: {e}");
    }
}

/// Istio rejects a CUSTOM policy whose provider is not in the mesh config; here it is an
/// error at the policy (and denied at run time when it slips in through istiod).
#[test]
fn unknown_provider_is_an_error_at_the_policy() {
    let e = err(
        &(mesh("  - name: other\n    envoyExtAuthzGrpc: {service: a.ns.svc, port: 80}\n") + CUSTOM),
    );
    assert!(
        e.contains("(AuthorizationPolicy ns/ext): spec.provider.name: \"opa\" is not one of the mesh's extensionProviders"),
        "{e}"
    );
}

/// Beside istiod (`--xds-address`), the L7 file may carry the providers, and nothing else
/// of a MeshConfig.
#[test]
fn l7_file_carries_only_providers() {
    let text =
        mesh("  - name: opa\n    envoyExtAuthzGrpc: {service: a.ns.svc, port: 80}\n") + CUSTOM;
    let res = parse_l7(Path::new("l7.yaml"), &text).unwrap();
    let (_, providers) = res.extension_providers.as_ref().unwrap();
    assert_eq!(providers[0].name, "opa");
    let e = parse_l7(
        Path::new("l7.yaml"),
        "apiVersion: dataplane.mesh.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: evil.local}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("spec.trustDomain: a MeshConfig in a file given with --xds-address may hold only extensionProviders"), "{e}");
}

/// Following istiod, the waypoint's L7 file brings the providers and the CUSTOM policy into
/// the state the shared assembler builds.
#[test]
fn xds_waypoint_takes_providers_from_its_l7_file() {
    use crate::config::xds::{Local, test_support::store};
    let identity: mesh_identity::SpiffeId = "spiffe://cluster.local/ns/ns/sa/wp".parse().unwrap();
    let mut s = store().serving(Local::Gateway {
        key: "ns/wp".into(),
        identity,
    });
    let l7 = mesh(
        "  - name: opa\n    envoyExtAuthzGrpc: {service: opa.ns.svc.cluster.local, port: 9191, timeout: 1s}\n",
    ) + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: ns}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n";
    s.set_l7(parse_l7(Path::new("l7.yaml"), &l7).unwrap());
    let state = s.build();
    assert!(state.ext_authz.has_custom);
    let opa = &state.ext_authz.by_name["opa"];
    assert_eq!(
        (opa.host.as_str(), opa.port),
        ("opa.ns.svc.cluster.local", 9191)
    );
    assert_eq!(opa.settings.timeout, Duration::from_secs(1));
    let policies = &state.waypoint_policies["Gateway/ns/wp"];
    assert_eq!(policies[0].provider.as_deref(), Some("opa"));
}

/// `timeout` is a protobuf Duration, parsed by the mesh's one duration parser: Istio's
/// `0.5s` is valid (protobuf JSON Duration: decimal seconds), a bare `30` is not (no unit).
#[test]
fn timeout_takes_istio_durations_only() {
    let with = |t: &str| {
        mesh(&format!(
            "  - name: opa\n    envoyExtAuthzGrpc: {{service: a.ns.svc, port: 1, timeout: \"{t}\"}}\n"
        )) + CUSTOM
    };
    let s = parse(Path::new("mesh.yaml"), &with("0.5s")).unwrap();
    assert_eq!(
        s.ext_authz.by_name["opa"].settings.timeout,
        Duration::from_millis(500)
    );
    for bad in ["30", "-1s", "infs"] {
        let e = err(&with(bad));
        assert!(e.contains("timeout"), "{bad}: {e}");
    }
}
