//! Istio's ztunnel variables read with Istio's meaning. Each corner case cites istio/ztunnel
//! `src/config.rs` (and its tests) or the chart, istio/istio
//! `manifests/charts/ztunnel/templates/daemonset.yaml`.

use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use proptest::prelude::*;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: ZtunnelArgs,
}

/// Parses `argv` with `env` as the process environment would be for clap, then applies it.
fn run(argv: &[&str], env: &[(&str, &str)], base: &Path) -> Result<ZtunnelArgs, EnvError> {
    run_applied(argv, env, base).map(|(a, _)| a)
}

fn run_applied(
    argv: &[&str],
    env: &[(&str, &str)],
    base: &Path,
) -> Result<(ZtunnelArgs, Applied), EnvError> {
    let env_snapshot = IstioEnv::from_pairs(env.iter().copied());
    // clap reads `env` from the process; without set_var (banned), hand it the flag values
    // the way clap would by turning Flag variables into arguments marked as env-sourced.
    let mut words: Vec<String> = vec!["ztunnel".into()];
    let mut env_ids = Vec::new();
    let cmd = command(Cli::command());
    for (var, value) in env {
        if let Some(Use::Flag(id)) = use_of(var) {
            let long = cmd
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_long())
                .unwrap();
            if argv.iter().any(|w| *w == format!("--{long}")) {
                continue;
            }
            words.push(format!("--{long}={value}"));
            env_ids.push(id);
        }
    }
    words.extend(argv.iter().map(|s| (*s).to_owned()));
    let matches = cmd
        .try_get_matches_from(&words)
        .map_err(|e| EnvError::invalid("argv", &words.join(" "), e.to_string()))?;
    let mut args = Cli::from_arg_matches(&matches).unwrap().args;
    let source = |id: &str| {
        if env_ids.contains(&id) {
            Some(ValueSource::EnvVariable)
        } else {
            matches.value_source(id)
        }
    };
    let applied = apply(&mut args, &source, &env_snapshot, 8, base)?;
    Ok((args, applied))
}

fn nowhere() -> PathBuf {
    PathBuf::from("/nonexistent-mesh-test-dir")
}

#[test]
fn every_flag_variable_names_an_argument() {
    let cmd = command(Cli::command());
    for (var, u) in VARS {
        if let Use::Flag(id) = u {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id);
            assert!(arg.is_some(), "{var} → {id}: no such argument");
            assert_eq!(arg.unwrap().get_env(), Some(std::ffi::OsStr::new(var)));
        }
    }
}

#[test]
fn chart_environment_sets_the_ztunnel() {
    // The chart's env with default values (daemonset.yaml): CA_ADDRESS / XDS_ADDRESS
    // `istiod.istio-system.svc:15012`, ISTIO_META_CLUSTER_ID `Kubernetes`,
    // TERMINATION_GRACE_PERIOD_SECONDS "30", ZTUNNEL_CPU_LIMIT from limits.cpu (the node's
    // cores without a limit), ZTUNNEL_RESOURCE_CPU_REQUEST from requests.cpu 200m with
    // divisor 1 → "1"; ISTIO_META_ENABLE_HBONE from the ambient profile's proxyMetadata.
    let env = [
        ("CA_ADDRESS", "istiod.istio-system.svc:15012"),
        ("XDS_ADDRESS", "istiod.istio-system.svc:15012"),
        ("RUST_LOG", "info"),
        ("RUST_BACKTRACE", "1"),
        ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ("INPOD_ENABLED", "true"),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
        ("POD_NAME", "ztunnel-abcde"),
        ("POD_NAMESPACE", "istio-system"),
        ("NODE_NAME", "node-1"),
        ("INSTANCE_IP", "10.0.0.7"),
        ("SERVICE_ACCOUNT", "ztunnel"),
        ("ISTIO_META_ENABLE_HBONE", "true"),
        ("ZTUNNEL_CPU_LIMIT", "16"),
        ("ZTUNNEL_RESOURCE_CPU_REQUEST", "1"),
    ];
    let (a, applied) = run_applied(&[], &env, &nowhere()).unwrap();
    // validate_uri: no scheme → https.
    assert_eq!(
        a.common.xds_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(
        a.common.ca_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(a.node, "node-1");
    assert_eq!(a.address, Some("10.0.0.7".parse().unwrap()));
    assert_eq!(
        (a.pod_name.as_str(), a.pod_namespace.as_str()),
        ("ztunnel-abcde", "istio-system")
    );
    assert_eq!(a.common.cluster_id, "Kubernetes");
    // self_termination_deadline: 30 > 10 → 30 - 5.
    assert_eq!(a.common.drain_timeout, Duration::from_secs(25));
    // default_worker_threads: ceil(16 × 0.25) = 4 ≥ request 1, ≥ 2.
    assert_eq!(a.common.worker_threads, 4);
    assert_eq!(
        a.node_metadata.get("ENABLE_HBONE").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        a.node_metadata.get("CLUSTER_ID").map(String::as_str),
        Some("Kubernetes")
    );
    let ignored: Vec<&str> = applied.ignored.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(ignored, ["SERVICE_ACCOUNT"]);
    // INPOD_ENABLED=true without INPOD_UDS: Istio's default ZDS socket.
    assert_eq!(a.zds_socket.as_deref(), Some(Path::new(DEFAULT_ZDS_SOCKET)));
    assert!(!applied.log_flag_wins);
}

#[test]
fn flags_override_the_environment() {
    let env = [
        ("NODE_NAME", "from-env"),
        ("ISTIO_META_CLUSTER_ID", "env-cluster"),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
        ("ZTUNNEL_WORKER_THREADS", "7"),
        ("XDS_ADDRESS", "istiod:15012"),
        ("RUST_LOG", "debug"),
    ];
    let argv = [
        "--node",
        "from-flag",
        "--cluster-id",
        "flag-cluster",
        "--drain-timeout",
        "3s",
        "--worker-threads",
        "3",
        "--xds-address",
        "http://127.0.0.1:1",
        "--ca-dir",
        "y",
        "--log",
        "warn",
    ];
    let (a, applied) = run_applied(&argv, &env, &nowhere()).unwrap();
    assert_eq!(a.node, "from-flag");
    assert_eq!(a.common.cluster_id, "flag-cluster");
    assert_eq!(a.common.drain_timeout, Duration::from_secs(3));
    assert_eq!(a.common.worker_threads, 3);
    // A flag's URL is taken as given (no https:// added).
    assert_eq!(a.common.xds_address.as_deref(), Some("http://127.0.0.1:1"));
    assert!(applied.log_flag_wins);
}

#[test]
fn response_baggage_as_istio() {
    const ARGV: &[&str] = &["--node", "n", "--config", "c", "--ca-dir", "y"];
    // istio/ztunnel `src/config.rs`: ENABLE_RESPONSE_BAGGAGE, `parse_default(.., true)`.
    let on = run(ARGV, &[], &nowhere()).unwrap();
    assert!(on.common.response_baggage);
    let env = [("ENABLE_RESPONSE_BAGGAGE", "false")];
    let off = run(ARGV, &env, &nowhere()).unwrap();
    assert!(!off.common.response_baggage);
    assert!(run(ARGV, &[("ENABLE_RESPONSE_BAGGAGE", "no")], &nowhere()).is_err());
}

#[test]
fn cluster_id_prefers_istio_meta() {
    // construct_config: ISTIO_META_CLUSTER_ID, else CLUSTER_ID, else "Kubernetes".
    let base = ["--node", "n", "--config", "x", "--ca-dir", "y"];
    let a = run(
        &base,
        &[("CLUSTER_ID", "c1"), ("ISTIO_META_CLUSTER_ID", "c2")],
        &nowhere(),
    );
    assert_eq!(a.unwrap().common.cluster_id, "c2");
    let a = run(&base, &[("CLUSTER_ID", "c1")], &nowhere()).unwrap();
    assert_eq!(a.common.cluster_id, "c1");
    let a = run(&base, &[], &nowhere()).unwrap();
    assert_eq!(a.common.cluster_id, "Kubernetes");
    let e = run(&base, &[("CLUSTER_ID", "")], &nowhere()).unwrap_err();
    assert!(e.to_string().contains("CLUSTER_ID"), "{e}");
}

#[test]
fn drain_deadline_follows_the_grace_period() {
    // self_termination_deadline: > 10 s keeps 5 s, else 1 s, at least 1 s; an explicit
    // CONNECTION_TERMINATION_DEADLINE wins.
    let d = |env: &[(&str, &str)]| drain_deadline(&IstioEnv::from_pairs(env.iter().copied()));
    let g = |s: &str| d(&[("TERMINATION_GRACE_PERIOD_SECONDS", s)]).unwrap();
    assert_eq!(g("30"), Some(Duration::from_secs(25)));
    assert_eq!(g("11"), Some(Duration::from_secs(6)));
    assert_eq!(g("10"), Some(Duration::from_secs(9)));
    assert_eq!(g("1"), Some(Duration::from_secs(1)));
    // Istio's `secs - 1` would underflow at 0; we keep the 1 s floor.
    assert_eq!(g("0"), Some(Duration::from_secs(1)));
    let both = [
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
        ("CONNECTION_TERMINATION_DEADLINE", "12s"),
    ];
    assert_eq!(d(&both).unwrap(), Some(Duration::from_secs(12)));
    assert_eq!(d(&[]).unwrap(), None);
    let e = d(&[("TERMINATION_GRACE_PERIOD_SECONDS", "-3")]).unwrap_err();
    assert!(
        e.to_string().contains("TERMINATION_GRACE_PERIOD_SECONDS"),
        "{e}"
    );
}

#[test]
fn worker_threads_as_istio_computes_them() {
    let w = |env: &[(&str, &str)], cores| {
        worker_threads(&IstioEnv::from_pairs(env.iter().copied()), cores)
    };
    // None of the variables: our default stays.
    assert_eq!(w(&[], 64).unwrap(), None);
    // parse_worker_threads tests: a number, 0 = all cores, a percentage (rounded up).
    assert_eq!(w(&[("ZTUNNEL_WORKER_THREADS", "3")], 8).unwrap(), Some(3));
    assert_eq!(w(&[("ZTUNNEL_WORKER_THREADS", "0")], 8).unwrap(), Some(8));
    assert_eq!(w(&[("ZTUNNEL_WORKER_THREADS", "50%")], 8).unwrap(), Some(4));
    assert_eq!(w(&[("ZTUNNEL_WORKER_THREADS", "10%")], 8).unwrap(), Some(1));
    // The percentage is of ZTUNNEL_CPU_LIMIT when set.
    let env = [
        ("ZTUNNEL_WORKER_THREADS", "25%"),
        ("ZTUNNEL_CPU_LIMIT", "16"),
    ];
    assert_eq!(w(&env, 2).unwrap(), Some(4));
    // default_worker_threads: an explicit limit wins even below 2; the request raises it.
    assert_eq!(
        w(&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "1")], 64).unwrap(),
        Some(1)
    );
    let env = [
        ("ZTUNNEL_RESOURCE_CPU_LIMIT", "500m"),
        ("ZTUNNEL_RESOURCE_CPU_REQUEST", "3"),
    ];
    assert_eq!(w(&env, 64).unwrap(), Some(3));
    // No limit: a quarter of the cores, at least the request and 2.
    assert_eq!(w(&[("ZTUNNEL_CPU_LIMIT", "4")], 64).unwrap(), Some(2));
    let env = [
        ("ZTUNNEL_CPU_LIMIT", "64"),
        ("ZTUNNEL_RESOURCE_CPU_REQUEST", "1"),
    ];
    assert_eq!(w(&env, 2).unwrap(), Some(16));
    for bad in ["abc", "-1", "0%", "101%", "x%"] {
        let e = w(&[("ZTUNNEL_WORKER_THREADS", bad)], 8).unwrap_err();
        assert!(
            e.to_string().contains("ZTUNNEL_WORKER_THREADS"),
            "{bad}: {e}"
        );
    }
    let e = w(&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "0")], 8).unwrap_err();
    assert!(e.to_string().contains("ZTUNNEL_RESOURCE_CPU_LIMIT"), "{e}");
}

#[test]
fn attack_thread_and_metadata_counts_are_capped() {
    // One typo (or a hostile values.env) must not start a million threads or send a huge
    // node metadata to istiod.
    let w = |env: &[(&str, &str)]| worker_threads(&IstioEnv::from_pairs(env.iter().copied()), 8);
    assert!(w(&[("ZTUNNEL_WORKER_THREADS", "1000000")]).is_err());
    let huge = [
        ("ZTUNNEL_CPU_LIMIT", "99999999"),
        ("ZTUNNEL_WORKER_THREADS", "0"),
    ];
    assert_eq!(w(&huge).unwrap(), Some(MAX_WORKER_THREADS));
    assert_eq!(
        w(&[("ZTUNNEL_CPU_LIMIT", "99999999")]).unwrap(),
        Some(MAX_WORKER_THREADS)
    );
    assert!(w(&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "1e300")]).is_err());
    let many: Vec<(String, String)> = (0..=MAX_NODE_METADATA)
        .map(|i| (format!("ISTIO_META_K{i}"), "v".to_owned()))
        .collect();
    assert!(node_metadata(&IstioEnv::from_pairs(many)).is_err());
    let big = [("ISTIO_META_BIG", "x".repeat(MAX_METADATA_VALUE + 1))];
    assert!(node_metadata(&IstioEnv::from_pairs(big)).is_err());
}

#[test]
fn default_files_are_used_when_they_exist() {
    // construct_config: XDS_ROOT_CA / CA_ROOT_CA default to ./var/run/secrets/istio/root-cert.pem
    // and AUTH_TOKEN to ./var/run/secrets/tokens/istio-token, each only when the file exists.
    let dir = tempfile::tempdir().unwrap();
    let argv = [
        "--node",
        "n",
        "--xds-address",
        "http://127.0.0.1:1",
        "--ca-dir",
        "y",
    ];
    let a = run(&argv, &[], dir.path()).unwrap();
    assert_eq!((a.common.xds_root_ca, a.common.xds_token), (None, None));
    let root = dir.path().join(DEFAULT_ROOT_CERT);
    let token = dir.path().join(DEFAULT_TOKEN);
    for f in [&root, &token] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "x").unwrap();
    }
    let a = run(&argv, &[], dir.path()).unwrap();
    assert_eq!(a.common.xds_root_ca.as_ref(), Some(&root));
    assert_eq!(a.common.xds_token.as_ref(), Some(&token));
    // The flags win over the files.
    let mut with_flags = argv.to_vec();
    with_flags.extend(["--xds-root-ca", "/r.pem", "--xds-token", "/t"]);
    let a = run(&with_flags, &[], dir.path()).unwrap();
    assert_eq!(a.common.xds_root_ca, Some(PathBuf::from("/r.pem")));
    assert_eq!(a.common.xds_token, Some(PathBuf::from("/t")));
    // Named files.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, "x").unwrap();
    let o = other.to_str().unwrap();
    let a = run(&argv, &[("XDS_ROOT_CA", o), ("AUTH_TOKEN", o)], dir.path()).unwrap();
    assert_eq!(a.common.xds_root_ca.as_deref(), Some(other.as_path()));
    // CA_ROOT_CA naming other roots than XDS_ROOT_CA: one root file serves both.
    let e = run(&argv, &[("CA_ROOT_CA", o)], dir.path()).unwrap_err();
    assert!(e.to_string().contains("CA_ROOT_CA"), "{e}");
    assert!(run(&argv, &[("CA_ROOT_CA", o), ("XDS_ROOT_CA", o)], dir.path()).is_ok());
}

#[test]
fn unusable_files_are_named() {
    let argv = [
        "--node",
        "n",
        "--xds-address",
        "http://127.0.0.1:1",
        "--ca-dir",
        "y",
    ];
    for (var, value) in [
        ("XDS_ROOT_CA", "/no/such/root.pem"),
        ("XDS_ROOT_CA", "SYSTEM"),
        ("XDS_ROOT_CA", "-----BEGIN CERTIFICATE-----\nMII..."),
        ("AUTH_TOKEN", "/no/such/token"),
    ] {
        let e = run(&argv, &[(var, value)], &nowhere()).unwrap_err();
        assert!(e.to_string().contains(var), "{var}: {e}");
    }
    // A literal token (Istio's StaticToken) is refused and never echoed.
    let e = run(&argv, &[("AUTH_TOKEN", "eyJsecret")], &nowhere()).unwrap_err();
    assert!(!e.to_string().contains("eyJsecret"), "{e}");
}

#[test]
fn addresses_as_istio_reads_them() {
    // validate_uri: a scheme-less host:port is TLS; explicit schemes are kept.
    assert_eq!(
        url("X", "istiod.istio-system.svc:15012").unwrap(),
        "https://istiod.istio-system.svc:15012"
    );
    assert_eq!(
        url("X", "http://127.0.0.1:15010").unwrap(),
        "http://127.0.0.1:15010"
    );
    assert_eq!(url("X", "https://a:1").unwrap(), "https://a:1");
    for bad in ["", "ftp://a:1", "http://", "a b:1"] {
        let e = url("XDS_ADDRESS", bad).unwrap_err();
        assert!(e.to_string().contains("XDS_ADDRESS"), "{bad:?}: {e}");
    }
}

#[test]
fn features_we_lack_are_refused_by_name() {
    let argv = [
        "--node",
        "n",
        "--xds-address",
        "http://127.0.0.1:1",
        "--ca-dir",
        "y",
    ];
    for (var, value) in [
        ("PROXY_MODE", "dedicated"),
        ("PROXY_MODE", "bogus"),
        ("XDS_ON_DEMAND", "true"),
        ("FAKE_CA", "true"),
        ("ENABLE_PROXY", "false"),
        ("ENABLE_ORIG_SRC", "true"),
        ("CLUSTER_DOMAIN", "corp.example"),
        ("CRL_PATH", "/var/run/secrets/istio/crl/ca-crl.pem"),
        ("LOCAL_XDS_PATH", "/etc/local.yaml"),
        ("PROXY_CONFIG", "concurrency: 2"),
        ("XDS_HEADER_X_TENANT", "a"),
        ("CA_HEADER_X_TENANT", "a"),
        ("ISTIO_META_DNS_PROXY_ADDR", "127.0.0.1:53"),
        ("ALT_CA_HOSTNAME", "ca.example"),
        ("RUST_LOG", "info,[[["),
        ("XDS_ON_DEMAND", "yes"),
    ] {
        let e = run(&argv, &[(var, value)], &nowhere()).unwrap_err();
        assert!(e.to_string().contains(var), "{var}={value}: {e}");
    }
    // Istio's defaults are accepted.
    let ok = [
        ("PROXY_MODE", "shared"),
        ("XDS_ON_DEMAND", "false"),
        ("ENABLE_PROXY", "true"),
        ("CLUSTER_DOMAIN", "cluster.local"),
        ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc"),
        ("ALT_CA_HOSTNAME", "istiod.istio-system.svc"),
    ];
    let a = run(&argv, &ok, &nowhere()).unwrap();
    assert_eq!(a.common.network, "");
    // NETWORK (set by the chart only when `network` is given) is the proxy's network.
    let a2 = run(&argv, &[("NETWORK", "net-1")], &nowhere()).unwrap();
    assert_eq!(a2.common.network, "net-1");
    assert_eq!(
        a.common.xds_server_name.as_deref(),
        Some("istiod.istio-system.svc")
    );
}

#[test]
fn not_utf8_is_named() {
    use std::os::unix::ffi::OsStringExt;
    let env = IstioEnv::from_os([(
        OsString::from("NODE_NAME"),
        OsString::from_vec(vec![0xff, 0xfe]),
    )]);
    let e = env.get("NODE_NAME").unwrap_err();
    assert_eq!(
        e,
        EnvError::NotUtf8 {
            var: "NODE_NAME".into()
        }
    );
}

use std::ffi::OsString;

proptest! {
    /// Whatever the variables hold, the thread count is an error or within 1..=MAX.
    #[test]
    fn threads_are_bounded(
        wt in proptest::option::of("[0-9]{0,8}%?"),
        limit in proptest::option::of("[0-9]{0,6}m?"),
        request in proptest::option::of("[0-9]{0,6}m?"),
        cpu in proptest::option::of("[0-9]{0,8}"),
        cores in 1usize..4096,
    ) {
        let mut env = Vec::new();
        for (k, v) in [
            ("ZTUNNEL_WORKER_THREADS", wt),
            ("ZTUNNEL_RESOURCE_CPU_LIMIT", limit),
            ("ZTUNNEL_RESOURCE_CPU_REQUEST", request),
            ("ZTUNNEL_CPU_LIMIT", cpu),
        ] {
            if let Some(v) = v {
                env.push((k.to_owned(), v));
            }
        }
        let any = !env.is_empty();
        match worker_threads(&IstioEnv::from_pairs(env), cores) {
            Ok(Some(n)) => prop_assert!((1..=MAX_WORKER_THREADS).contains(&n)),
            Ok(None) => prop_assert!(!any),
            Err(e) => {
                let named = e.to_string().contains("ZTUNNEL_");
                prop_assert!(named, "{}", e);
            }
        }
    }

    /// The grace period always gives a deadline of at least 1 s and below the period + 1.
    #[test]
    fn deadline_is_before_the_kill(secs in 0u64..1_000_000) {
        let s = secs.to_string();
        let env = IstioEnv::from_pairs([("TERMINATION_GRACE_PERIOD_SECONDS", s.as_str())]);
        let d = drain_deadline(&env).unwrap().unwrap();
        prop_assert!(d >= Duration::from_secs(1));
        prop_assert!(secs <= 1 || d < Duration::from_secs(secs));
    }
}
