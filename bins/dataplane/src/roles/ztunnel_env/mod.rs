//! Istio's configuration surface for the ztunnel: the environment variables and files Istio's
//! Helm chart gives its ztunnel container (istio/istio
//! `manifests/charts/ztunnel/templates/daemonset.yaml`), read with the meaning Istio's ztunnel
//! gives them (istio/ztunnel `src/config.rs`), so that the chart's pod spec runs our binary
//! unchanged: `args: [proxy, ztunnel]`, no flags.
//!
//! Every variable of Istio's ztunnel is in [`VARS`] with what it is here: read into a flag
//! (clap `env`, so a flag given on the command line wins), read with Istio's meaning by
//! [`apply`], ignored with one log line at start (optional in Istio and harmless here), or
//! refused at start with an error naming it (a feature we do not have). Istio's default
//! files (`./var/run/secrets/istio/root-cert.pem`, `./var/run/secrets/tokens/istio-token`,
//! relative to the working directory, `/` in the container) are used when they exist.

mod threads;
mod vars;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;

pub use threads::{MAX_WORKER_THREADS, drain_deadline, worker_threads};
pub use vars::{EnvError, IstioEnv, Use, VARS, use_of};

use super::ztunnel::ZtunnelArgs;

/// Istio's root certificate of the control plane and the mesh, relative to the working
/// directory (istio/ztunnel `DEFAULT_ROOT_CERT_PROVIDER`).
pub const DEFAULT_ROOT_CERT: &str = "./var/run/secrets/istio/root-cert.pem";
/// Istio's projected service-account token (audience `istio-ca`), relative to the working
/// directory (istio/ztunnel `DEFAULT_TOKEN_PROVIDER`).
pub const DEFAULT_TOKEN: &str = "./var/run/secrets/tokens/istio-token";
/// Istio's ZDS socket, where istio-cni hands pods over (istio/ztunnel `INPOD_UDS` default).
pub const DEFAULT_ZDS_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// Most `ISTIO_META_*` variables sent as node metadata.
const MAX_NODE_METADATA: usize = 64;
/// Longest `ISTIO_META_*` value sent as node metadata.
const MAX_METADATA_VALUE: usize = 4096;

/// What the environment said besides the flags' values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Variables set but ignored, with why: logged once at start.
    pub ignored: Vec<(String, &'static str)>,
    /// `RUST_LOG` is set and `--log` was given: the flag's filter replaces it after start.
    pub log_flag_wins: bool,
}

/// `cmd` (a ztunnel command line flattening [`ZtunnelArgs`]) with Istio's variables as the
/// `env` of the arguments they set; Istio's `args: [proxy, ztunnel]` are the binary's.
pub fn command(cmd: clap::Command) -> clap::Command {
    VARS.iter().fold(cmd, |cmd, (var, u)| match u {
        Use::Flag(id) => cmd.mut_arg(*id, |a| a.env(*var)),
        _ => cmd,
    })
}

/// Reads what [`command`]'s flags do not: `source(id)` says where argument `id`'s value came
/// from (a command-line value is never replaced); `available` is the host's logical cores;
/// Istio's default files are looked up under `base` (the working directory).
pub fn apply(
    args: &mut ZtunnelArgs,
    source: &dyn Fn(&str) -> Option<ValueSource>,
    env: &IstioEnv,
    available: usize,
    base: &Path,
) -> Result<Applied, EnvError> {
    let from_cli = |id: &str| source(id) == Some(ValueSource::CommandLine);
    let from_env = |id: &str| source(id) == Some(ValueSource::EnvVariable);
    let mut applied = Applied {
        ignored: check_vars(env)?,
        log_flag_wins: false,
    };
    let c = &mut args.common;
    if from_env("xds_address") {
        c.xds_address = c
            .xds_address
            .take()
            .map(|v| url("XDS_ADDRESS", &v))
            .transpose()?;
    }
    if from_env("ca_address") {
        c.ca_address = c
            .ca_address
            .take()
            .map(|v| url("CA_ADDRESS", &v))
            .transpose()?;
    }
    if !from_cli("cluster_id")
        && let Some(id) = cluster_id(env)?
    {
        c.cluster_id = id;
    }
    if !from_cli("drain_timeout")
        && let Some(d) = drain_deadline(env)?
    {
        c.drain_timeout = d;
    }
    if !from_cli("worker_threads")
        && let Some(n) = worker_threads(env, available)?
    {
        c.worker_threads = n;
    }
    if !from_cli("xds_root_ca") {
        c.xds_root_ca = root_cert(env, base)?.or(c.xds_root_ca.take());
    }
    if !from_cli("xds_token") {
        c.xds_token = token(env, base)?.or(c.xds_token.take());
    }
    if let Some(alt) = env.get("ALT_CA_HOSTNAME")?
        && c.xds_server_name.as_deref() != Some(alt)
    {
        return Err(EnvError::unsupported(
            "ALT_CA_HOSTNAME",
            alt,
            "the CA and xDS share one server name: set ALT_XDS_HOSTNAME (--xds-server-name) to the same",
        ));
    }
    if let Some(filter) = env.get("RUST_LOG")? {
        tracing_subscriber::EnvFilter::try_new(filter)
            .map_err(|e| EnvError::invalid("RUST_LOG", filter, e.to_string()))?;
        applied.log_flag_wins = from_cli("log");
    }
    // The chart's INPOD_ENABLED=true: pods come from istio-cni over ZDS, on INPOD_UDS (clap
    // env of --zds-socket) or Istio's default socket (istio/ztunnel `inpod_uds`).
    if source("zds_socket").is_none() && env.bool("INPOD_ENABLED")? == Some(true) {
        args.zds_socket = Some(PathBuf::from(DEFAULT_ZDS_SOCKET));
    }
    args.node_metadata = node_metadata(env)?;
    Ok(applied)
}

/// Refuses what we cannot honour; collects what is ignored.
fn check_vars(env: &IstioEnv) -> Result<Vec<(String, &'static str)>, EnvError> {
    let mut ignored = Vec::new();
    for (var, u) in VARS {
        match u {
            Use::OnlyDefault { ok, why } => {
                if let Some(v) = env.get(var)?
                    && !ok.contains(&v)
                {
                    return Err(EnvError::unsupported(var, v, why));
                }
            }
            Use::Ignored(why) if env.is_set(var) => ignored.push(((*var).to_owned(), *why)),
            _ => {}
        }
    }
    for prefix in ["XDS_HEADER_", "CA_HEADER_"] {
        if let Some((k, v)) = env.with_prefix(prefix).next() {
            return Err(EnvError::unsupported(
                &format!("{prefix}{k}"),
                v,
                "extra gRPC metadata towards the control plane is not sent",
            ));
        }
    }
    for (k, _) in env.with_prefix("ISTIO_METAJSON_") {
        ignored.push((
            format!("ISTIO_METAJSON_{k}"),
            "JSON node metadata is not sent (ISTIO_META_* is)",
        ));
    }
    Ok(ignored)
}

/// Istio's control-plane address: `host:port` means TLS (`https://`), as istio/ztunnel's
/// `validate_uri`; an explicit `http://` or `https://` is kept.
fn url(var: &str, v: &str) -> Result<String, EnvError> {
    let full = if v.contains("://") {
        v.to_owned()
    } else {
        format!("https://{v}")
    };
    let uri: http::Uri = full
        .parse()
        .map_err(|e: http::uri::InvalidUri| EnvError::invalid(var, v, e.to_string()))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(a)) if !a.host().is_empty() => Ok(full),
        _ => Err(EnvError::invalid(
            var,
            v,
            "want host:port (TLS) or an http:// or https:// URL",
        )),
    }
}

/// `ISTIO_META_CLUSTER_ID`, else `CLUSTER_ID` (istio/ztunnel `construct_config`).
fn cluster_id(env: &IstioEnv) -> Result<Option<String>, EnvError> {
    for var in ["ISTIO_META_CLUSTER_ID", "CLUSTER_ID"] {
        if let Some(v) = env.get(var)? {
            if v.is_empty() {
                return Err(EnvError::invalid(
                    var,
                    v,
                    "the cluster id must not be empty",
                ));
            }
            return Ok(Some(v.to_owned()));
        }
    }
    Ok(None)
}

/// The root certificates: `XDS_ROOT_CA` (a file), else Istio's default file when it exists;
/// `CA_ROOT_CA`, when set to other roots, is refused (one root file serves both).
fn root_cert(env: &IstioEnv, base: &Path) -> Result<Option<PathBuf>, EnvError> {
    let xds = root_var(env, "XDS_ROOT_CA", base)?;
    // Only an explicit CA_ROOT_CA is compared: its default is the same file as XDS_ROOT_CA's.
    let ca = match env.is_set("CA_ROOT_CA") {
        true => root_var(env, "CA_ROOT_CA", base)?,
        false => None,
    };
    if let (Some(x), Some(c)) = (&xds, &ca)
        && x != c
    {
        let shown = env.get("CA_ROOT_CA")?.unwrap_or_default();
        return Err(EnvError::unsupported(
            "CA_ROOT_CA",
            shown,
            "the CA and xDS are verified with the same roots (XDS_ROOT_CA)",
        ));
    }
    Ok(xds.or(ca))
}

fn root_var(env: &IstioEnv, var: &str, base: &Path) -> Result<Option<PathBuf>, EnvError> {
    let Some(v) = env.get(var)? else {
        let default = base.join(DEFAULT_ROOT_CERT);
        return Ok(default.is_file().then_some(default));
    };
    if v == "SYSTEM" {
        return Err(EnvError::unsupported(
            var,
            v,
            "the system roots are not used for the control plane; mount istiod's root-cert.pem",
        ));
    }
    let path = PathBuf::from(v);
    if path.is_file() {
        return Ok(Some(path));
    }
    if v.contains("-----BEGIN") {
        return Err(EnvError::unsupported(
            var,
            "<PEM>",
            "inline PEM is not read; mount the certificates as a file and give its path",
        ));
    }
    Err(EnvError::invalid(var, v, "no such file"))
}

/// The control-plane token: `AUTH_TOKEN` (a file), else Istio's default file when it exists.
fn token(env: &IstioEnv, base: &Path) -> Result<Option<PathBuf>, EnvError> {
    let Some(v) = env.get("AUTH_TOKEN")? else {
        let default = base.join(DEFAULT_TOKEN);
        return Ok(default.is_file().then_some(default));
    };
    let path = PathBuf::from(v);
    if path.is_file() {
        return Ok(Some(path));
    }
    // Istio takes a value that is not a file as the token itself; never echo it.
    Err(EnvError::unsupported(
        "AUTH_TOKEN",
        "<redacted>",
        "a literal token is not read; give the path of a token file",
    ))
}

/// `ISTIO_META_<KEY>=<value>` as node metadata `<KEY>: <value>` (istio/ztunnel
/// `construct_proxy_config`, sent in the xDS `Node`), bounded in count and size.
fn node_metadata(env: &IstioEnv) -> Result<BTreeMap<String, String>, EnvError> {
    let mut out = BTreeMap::new();
    for (k, v) in env.with_prefix("ISTIO_META_") {
        let var = format!("ISTIO_META_{k}");
        if k.is_empty() || v.len() > MAX_METADATA_VALUE {
            return Err(EnvError::invalid(
                &var,
                "<long>",
                format!("metadata values are at most {MAX_METADATA_VALUE} bytes"),
            ));
        }
        if out.len() == MAX_NODE_METADATA {
            return Err(EnvError::invalid(
                &var,
                v,
                format!("at most {MAX_NODE_METADATA} ISTIO_META_ variables"),
            ));
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Runs a ztunnel from the command line `C` (flattening [`ZtunnelArgs`], taken out by
/// `into_args`) and Istio's environment. A bad variable is a start-up error naming it (exit
/// code 2).
pub fn main<C: clap::Parser>(into_args: impl FnOnce(C) -> ZtunnelArgs) -> ExitCode {
    let env = IstioEnv::from_process();
    let cmd = command(C::command());
    let matches = match cmd.clone().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(&cmd, &env, e),
    };
    let cli = match C::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let mut args = into_args(cli);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let source = |id: &str| matches.value_source(id);
    let applied = match apply(&mut args, &source, &env, cores, Path::new(".")) {
        Ok(a) => a,
        Err(e) => return startup_error(&e),
    };
    let common = args.common.clone();
    crate::process::process_main("ztunnel", &common, move |log| async move {
        for (var, why) in &applied.ignored {
            tracing::info!(variable = %var, "environment variable ignored: {why}");
        }
        if applied.log_flag_wins
            && let Err(e) = log.set(&args.common.log)
        {
            tracing::warn!(error = %e, "--log");
        }
        super::ztunnel::run(args, log).await
    })
}

/// A clap error; when the bad value came from one of Istio's variables, the error names it.
fn usage_error(cmd: &clap::Command, env: &IstioEnv, e: clap::Error) -> ExitCode {
    let var = e
        .get(clap::error::ContextKind::InvalidArg)
        .map(|a| a.to_string())
        .and_then(|arg| env_var_of(cmd, &arg))
        .filter(|var| env.is_set(var));
    match var {
        Some(var) if !std::env::args().any(|a| e_mentions_flag(cmd, var, &a)) => {
            eprintln!("ztunnel: environment variable {var}: {e}");
            ExitCode::from(2)
        }
        _ => e.exit(),
    }
}

/// The variable behind the argument a clap error shows as `--long <VALUE>`.
fn env_var_of(cmd: &clap::Command, shown: &str) -> Option<&'static str> {
    VARS.iter().find_map(|(var, u)| match u {
        Use::Flag(id) => cmd
            .get_arguments()
            .find(|a| a.get_id() == *id)
            .and_then(|a| a.get_long())
            .filter(|long| shown.starts_with(&format!("--{long} ")) || shown == format!("--{long}"))
            .map(|_| *var),
        _ => None,
    })
}

/// Whether command-line word `word` is the flag that `var` stands in for.
fn e_mentions_flag(cmd: &clap::Command, var: &str, word: &str) -> bool {
    let Some(Use::Flag(id)) = use_of(var) else {
        return false;
    };
    cmd.get_arguments()
        .find(|a| a.get_id() == id)
        .and_then(|a| a.get_long())
        .is_some_and(|long| word == format!("--{long}") || word.starts_with(&format!("--{long}=")))
}

fn startup_error(e: &EnvError) -> ExitCode {
    eprintln!("ztunnel: {e}");
    ExitCode::from(2)
}
