//! meshctl validate / ca, ztunnel --help, and the demo, run as real processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use mesh_identity::{TrustBundle, WorkloadCert, verify_chain};
use mesh_tests::*;

const WE: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web, namespace: shop}\nspec:\n";

#[test]
fn validate_names_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.yaml",
            format!("{WE}  address: 10.0.0.1\n  adress: 10.0.0.2\n"),
            "spec.adress",
            "unknown field `adress`",
        ),
        (
            "badip.yaml",
            format!("{WE}  address: 10.0.0.300\n"),
            "spec.address",
            "\"10.0.0.300\" is not an IP address",
        ),
        (
            "badid.yaml",
            format!("{WE}  address: 10.0.0.1\n  serviceAccount: \"web/admin\"\n"),
            "spec.serviceAccount",
            "does not form a valid SPIFFE id",
        ),
    ];
    for (name, text, field, reason) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (ok, _, err) = meshctl(&["validate", path.to_str().unwrap()], dir.path());
        assert!(!ok, "{name} must be rejected");
        assert!(
            err.contains(path.to_str().unwrap()),
            "names the file: {err}"
        );
        assert!(
            err.contains("(WorkloadEntry shop/web)"),
            "names the document: {err}"
        );
        assert!(err.contains(field), "names the field {field}: {err}");
        assert!(err.contains(reason), "gives the reason: {err}");
    }
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh.yaml");
    let (ok, out, err) = meshctl(&["validate", example.to_str().unwrap()], dir.path());
    assert!(ok, "{err}");
    assert!(
        out.contains("valid (3 workloads, 1 service ports, 2 nodes"),
        "{out}"
    );
}

#[test]
fn ca_init_is_reused_and_issued_certificates_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let (ok, out, _) = meshctl(&["ca", "init", "--dir", ca.to_str().unwrap()], dir.path());
    assert!(ok && out.contains("created"), "{out}");
    let root = std::fs::read_to_string(ca.join("root-cert.pem")).unwrap();
    let (ok, out, _) = meshctl(&["ca", "init", "--dir", ca.to_str().unwrap()], dir.path());
    assert!(ok && out.contains("reused"), "{out}");
    assert_eq!(
        root,
        std::fs::read_to_string(ca.join("root-cert.pem")).unwrap(),
        "same root"
    );

    let out_dir = dir.path().join("tool");
    let id = "spiffe://cluster.local/ns/tools/sa/curl";
    let (ok, _, err) = meshctl(
        &[
            "ca",
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--id",
            id,
            "--out",
            out_dir.to_str().unwrap(),
            "--ttl",
            "1h",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap();
    let cert =
        WorkloadCert::from_pem(&read("cert.pem"), &read("key.pem"), &read("ca.pem")).unwrap();
    assert_eq!(cert.identity().as_str(), id);
    let bundle = TrustBundle::from_pem(&root).unwrap();
    assert_eq!(verify_chain(&bundle, cert.chain()).unwrap().as_str(), id);
    let mode = std::fs::metadata(out_dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (ok, _, err) = meshctl(
        &[
            "ca",
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--id",
            "spiffe://cluster.local/ns/x",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        err.contains("--id") && err.contains("/ns/<namespace>/sa/<service-account>"),
        "{err}"
    );
}

#[test]
fn ztunnel_help_explains_every_flag() {
    let out = std::process::Command::new(bin("ztunnel"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = help.lines().collect();
    for flag in [
        "--config",
        "--node",
        "--ca-dir",
        "--socks5-port",
        "--socks5-addr",
        "--cert-ttl",
        "--worker-threads",
        "--connect-timeout",
        "--drain-timeout",
        "--config-poll-interval",
        "--pool-idle-timeout",
        "--log",
    ] {
        let i = lines
            .iter()
            .position(|l| l.split_whitespace().next() == Some(flag))
            .unwrap_or_else(|| panic!("{flag} missing:\n{help}"));
        // Short help puts the text after the value name; long help on the next line.
        let same_line: Vec<&str> = lines[i].split_whitespace().skip(2).collect();
        let next = lines.get(i + 1).map_or("", |l| l.trim());
        let explained = !same_line.is_empty() || (!next.is_empty() && !next.starts_with('-'));
        assert!(explained, "{flag} has no explanation:\n{help}");
    }
}

#[test]
fn ztunnel_rejects_bad_config_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, format!("{WE}  address: nope\n")).unwrap();
    let out = std::process::Command::new(bin("ztunnel"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--node",
            "a",
            "--ca-dir",
            dir.path().to_str().unwrap(),
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.address: \"nope\" is not an IP address"),
        "{err}"
    );
}

/// The demo uses the embedded default addresses (127.0.1.x nodes, VIP 127.0.10.1:8080); no
/// other test uses them.
#[test]
fn demo_carries_requests_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = meshctl(
        &["demo", "--duration", "4s", "--interval", "500ms"],
        dir.path(),
    );
    assert!(ok, "demo failed:\n{out}\n{err}");
    assert!(out.contains("local CA: created"), "{out}");
    assert!(out.contains("curl http://127.0.10.1:8080/hello"), "{out}");
    assert!(
        out.contains("-> 200 in"),
        "a request went end to end:\n{out}"
    );
    assert!(out.contains("echo from workload demo/echo"), "{out}");
    assert!(
        out.contains(r#"access] {"timestamp""#)
            && out.contains(r#""src.identity":"spiffe://cluster.local/ns/demo/sa/client""#),
        "{out}"
    );
    assert!(
        out.contains("ztunnel node-a exited (exit status: 0)"),
        "{out}"
    );
    assert!(
        out.contains("ztunnel node-b exited (exit status: 0)"),
        "{out}"
    );
    assert!(out.contains("demo stopped cleanly"), "{out}");
    // Everything is gone: the VIP and HBONE ports can be bound again.
    std::net::TcpListener::bind("127.0.10.1:8080").unwrap();
    std::net::TcpListener::bind("127.0.0.3:15008").unwrap();
    // A second run reuses the CA.
    let (ok, out, _) = meshctl(&["demo", "--duration", "1s"], dir.path());
    assert!(ok && out.contains("local CA: reused"), "{out}");

    // The mixed-mode variant: echo v2 behind its own sidecar, reached through the waypoint by
    // the ambient client.
    let mixed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh-mixed.yaml");
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = meshctl(
        &[
            "demo",
            "--config",
            mixed.to_str().unwrap(),
            "--duration",
            "5s",
            "--interval",
            "100ms",
        ],
        dir.path(),
    );
    assert!(ok, "mixed demo failed:\n{out}\n{err}");
    assert!(out.contains("[sidecar demo/echo-v2]"), "{out}");
    assert!(out.contains("echo from workload demo/echo-v2"), "{out}");
    assert!(
        out.contains("sidecar demo/echo-v2 exited (exit status: 0)"),
        "{out}"
    );
}
