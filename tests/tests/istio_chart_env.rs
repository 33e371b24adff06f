//! Our `ztunnel` binary as the container of Istio's ztunnel DaemonSet: started with exactly
//! the environment and arguments of Istio's Helm chart (istio/istio
//! `manifests/charts/ztunnel/templates/daemonset.yaml`, default `values.yaml`, ambient
//! profile `manifests/helm-profiles/ambient.yaml`), its projected token and root certificate
//! at the chart's mount paths (relative to the working directory, as istio/ztunnel's
//! `DEFAULT_ROOT_CERT_PROVIDER` / `DEFAULT_TOKEN_PROVIDER` read them), against the fake
//! istiod. It comes up ready on 15021, serves metrics on 15020 and the admin on 15000, and
//! carries traffic with certificates from the CA. A flag overrides its variable; a bad
//! value is a start-up error naming the variable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_identity::LocalCa;
use mesh_tests::fake_cni::FakeCni;
use mesh_tests::istiod::FakeIstiod;
use mesh_tests::{Proc, bin, http, http_get};

/// The chart's container `args`.
const CHART_ARGS: [&str; 2] = ["proxy", "ztunnel"];

/// The chart's container `env`, as it renders with default values. Values from the downward
/// API (`fieldRef`, `resourceFieldRef`) are what Kubernetes would give on a 2-core node
/// without a CPU limit; `CA_ADDRESS` / `XDS_ADDRESS` (`istiod.istio-system.svc:15012` by
/// default, TLS) point at the fake istiod, which serves plaintext gRPC: the one change.
fn chart_env(instance_ip: IpAddr, istiod: &FakeIstiod) -> Vec<(&'static str, String)> {
    vec![
        ("CA_ADDRESS", format!("http://{}", istiod.ca_addr)),
        ("XDS_ADDRESS", format!("http://{}", istiod.xds_addr)),
        // logLevel: info.
        ("RUST_LOG", "info".into()),
        ("RUST_BACKTRACE", "1".into()),
        // multiCluster.clusterName "" → "Kubernetes".
        ("ISTIO_META_CLUSTER_ID", "Kubernetes".into()),
        ("INPOD_ENABLED", "true".into()),
        // terminationGracePeriodSeconds: 30.
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30".into()),
        ("POD_NAME", "ztunnel-x7k2p".into()),
        ("POD_NAMESPACE", "istio-system".into()),
        ("NODE_NAME", "node-1".into()),
        ("INSTANCE_IP", instance_ip.to_string()),
        ("SERVICE_ACCOUNT", "ztunnel".into()),
        // The ambient profile's meshConfig.defaultConfig.proxyMetadata.
        ("ISTIO_META_ENABLE_HBONE", "true".into()),
        // limits.cpu, divisor 1, no limit set: the node's allocatable cores.
        ("ZTUNNEL_CPU_LIMIT", "2".into()),
        // requests.cpu 200m, divisor 1: rounded up to 1.
        ("ZTUNNEL_RESOURCE_CPU_REQUEST", "1".into()),
    ]
}

/// The chart's env plus `INPOD_UDS`: Istio's default ZDS socket is the hostPath
/// `/var/run/ztunnel/ztunnel.sock` (the chart mounts `cni-ztunnel-sock-dir` there); the test
/// points it into its temp dir, where no istio-cni agent listens.
fn chart_env_in(dir: &Path, ip: IpAddr, istiod: &FakeIstiod) -> Vec<(&'static str, String)> {
    let mut env = chart_env(ip, istiod);
    let sock = dir.join("var/run/ztunnel/ztunnel.sock");
    env.push(("INPOD_UDS", sock.display().to_string()));
    env
}

struct Fixture {
    dir: tempfile::TempDir,
    istiod: FakeIstiod,
}

/// A working directory holding the chart's two mounted files, and the fake istiod.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path().join("ca")).unwrap();
    // volumeMounts: istiod-ca-cert at /var/run/secrets/istio, istio-token at
    // /var/run/secrets/tokens (path istio-token, audience istio-ca).
    let root = dir.path().join("var/run/secrets/istio/root-cert.pem");
    let token = dir.path().join("var/run/secrets/tokens/istio-token");
    for (f, text) in [
        (&root, ca.trust_bundle().unwrap().to_pem()),
        (&token, "test-token\n".to_owned()),
    ] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    }
    let istiod = FakeIstiod::start(ca).await;
    Fixture { dir, istiod }
}

/// The binary with exactly `env` (nothing inherited), in `cwd`, with `args`.
fn ztunnel_cmd(cwd: &Path, env: &[(&str, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("ztunnel"));
    cmd.env_clear()
        .current_dir(cwd)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

async fn status(addr: SocketAddr, path: &str) -> u16 {
    http(addr, "GET", path).await.map_or(0, |(s, _)| s)
}

/// Polls `/healthz/ready` (every 50 ms, 15 s) until 200.
async fn until_ready(ip: IpAddr) {
    let addr = SocketAddr::new(ip, 15021);
    for _ in 0..300 {
        if status(addr, "/healthz/ready").await == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr}/healthz/ready never answered 200");
}

/// The first xDS request carrying the node (polled, 5 s).
async fn first_request(
    istiod: &FakeIstiod,
) -> envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
    for _ in 0..100 {
        // (The node goes with a stream's first request.)
        if let Some(r) = istiod.requests().into_iter().find(|r| r.node.is_some()) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no xDS request");
}

/// The chart's pod spec runs our binary: it follows istiod as Istio's node, connects to
/// istio-cni's ZDS socket (INPOD_ENABLED), is not ready before the agent's first snapshot and
/// ready after it, and serves Istio's ports. (Pods handed over by ZDS carrying traffic:
/// `zds_pods`, `zds_pods_e2e`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_pod_spec_runs_our_ztunnel() {
    let f = fixture().await;
    let ip: IpAddr = "127.222.3.1".parse().unwrap();
    let env = chart_env_in(f.dir.path(), ip, &f.istiod);
    let sock = f.dir.path().join("var/run/ztunnel/ztunnel.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let mut agent = FakeCni::bind(&sock).unwrap();
    let cmd = ztunnel_cmd(f.dir.path(), &env, &CHART_ARGS);
    let z = Proc::start("ztunnel (chart env)", cmd, Some("ztunnel ready"));
    // The ztunnel dials the agent and says hello (ZDS version 1).
    assert_eq!(agent.accept().await.unwrap(), 1);
    let readiness = SocketAddr::new(ip, 15021);
    // Istio's ztunnel is ready only after the agent's first snapshot.
    let (code, body) = http(readiness, "GET", "/healthz/ready").await.unwrap();
    assert_eq!(code, 500, "{body}");
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    until_ready(ip).await;

    // Istio's endpoints: readiness 15021, Prometheus 15020 (both paths, the chart's
    // prometheus.io/port annotation), admin 15000 on localhost (our pod address is loopback).
    let metrics = SocketAddr::new(ip, 15020);
    assert!(
        http_get(metrics, "/stats/prometheus")
            .await
            .contains("process_start_time_seconds")
    );
    assert_eq!(status(metrics, "/metrics").await, 200);
    assert_eq!(
        status(SocketAddr::new(ip, 15000), "/config_dump").await,
        200
    );

    // The control plane saw Istio's node: id, cluster, metadata from ISTIO_META_*.
    let node = first_request(&f.istiod).await.node.unwrap();
    assert_eq!(
        node.id,
        "ztunnel~127.222.3.1~ztunnel-x7k2p.istio-system~istio-system.svc.cluster.local"
    );
    let meta = node.metadata.unwrap().fields;
    let text = |k: &str| match meta.get(k).and_then(|v| v.kind.clone()) {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(text("ENABLE_HBONE"), "true");
    assert_eq!(text("CLUSTER_ID"), "Kubernetes");
    assert_eq!(text("NODE_NAME"), "node-1");
    // The chart's variables we do not use are named once at start.
    let logs = z.logs();
    assert_eq!(
        logs.matches("variable=SERVICE_ACCOUNT").count(),
        1,
        "{logs}"
    );
}

/// A flag given beside the chart's environment wins over its variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_overrides_its_variable() {
    let f = fixture().await;
    let env = chart_env_in(f.dir.path(), "127.222.3.2".parse().unwrap(), &f.istiod);
    let mut args = CHART_ARGS.to_vec();
    args.extend(["--address", "127.222.3.3", "--pod-name", "from-flag"]);
    // `--zds-socket` also overrides INPOD_UDS: an agent at the flag's path.
    let sock = f.dir.path().join("flag.sock");
    let flag_sock = sock.display().to_string();
    args.extend(["--zds-socket", &flag_sock]);
    let mut agent = FakeCni::bind(&sock).unwrap();
    let cmd = ztunnel_cmd(f.dir.path(), &env, &args);
    let _z = Proc::start("ztunnel (flag)", cmd, Some("ztunnel ready"));
    assert_eq!(agent.accept().await.unwrap(), 1);
    assert_eq!(agent.snapshot_sent().await.unwrap(), Ok(()));
    until_ready("127.222.3.3".parse().unwrap()).await;
    assert_eq!(
        status("127.222.3.2:15021".parse().unwrap(), "/healthz/ready").await,
        0
    );
    let node = first_request(&f.istiod).await.node.unwrap();
    assert_eq!(
        node.id,
        "ztunnel~127.222.3.3~from-flag.istio-system~istio-system.svc.cluster.local"
    );
}

/// A bad value, or a feature we lack, stops the start with exit code 2 and names the
/// variable; nothing is bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_variable_is_a_startup_error_naming_it() {
    let f = fixture().await;
    let ip: IpAddr = "127.222.3.4".parse().unwrap();
    let cases: &[(&str, &str)] = &[
        ("INSTANCE_IP", "not-an-ip"),
        ("ZTUNNEL_WORKER_THREADS", "lots"),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "thirty"),
        ("XDS_ADDRESS", "ftp://istiod:15012"),
        ("RUST_LOG", "info,[[["),
        // peerCaCrl.enabled renders CRL_PATH: revocation is not checked, so refuse.
        ("CRL_PATH", "/var/run/secrets/istio/crl/ca-crl.pem"),
        ("PROXY_MODE", "dedicated"),
        ("AUTH_TOKEN", "/var/run/secrets/tokens/missing"),
    ];
    for (var, value) in cases {
        let mut env = chart_env_in(f.dir.path(), ip, &f.istiod);
        env.retain(|(k, _)| k != var);
        env.push((var, (*value).to_owned()));
        let cmd = ztunnel_cmd(f.dir.path(), &env, &CHART_ARGS);
        let mut z = Proc::start(&format!("ztunnel ({var})"), cmd, None);
        let code = z.wait_exit(Duration::from_secs(10)).expect("exits").code();
        // (stderr is read by a thread: give it the last lines.)
        for _ in 0..100 {
            if z.logs().contains(var) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(z.logs().contains(var), "{var}: {}", z.logs());
        assert_eq!(code, Some(2), "{var}={value}: {}", z.logs());
        assert_eq!(
            status(SocketAddr::new(ip, 15021), "/healthz/ready").await,
            0
        );
    }
}
