//! Istio's ztunnel environment: a snapshot of the process environment ([`IstioEnv`]), the
//! error a bad value is ([`EnvError`]), and what each variable Istio's ztunnel or its Helm
//! chart knows is to us ([`VARS`]). Names and meanings from istio/ztunnel `src/config.rs`
//! and istio/istio `manifests/charts/ztunnel/templates/daemonset.yaml`.

use std::collections::BTreeMap;
use std::ffi::OsString;

/// A variable's value that cannot be used, or a feature we do not have: a start-up error
/// naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// The value does not parse (or is out of range).
    #[error("environment variable {var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The value asks for an Istio feature this ztunnel does not have.
    #[error("environment variable {var}={value:?} is not supported by this ztunnel: {reason}")]
    Unsupported {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is missing, and what to do instead.
        reason: &'static str,
    },
    /// The value is not UTF-8.
    #[error("environment variable {var}: the value is not UTF-8")]
    NotUtf8 {
        /// The variable.
        var: String,
    },
}

impl EnvError {
    pub(super) fn invalid(var: &str, value: &str, reason: impl Into<String>) -> EnvError {
        EnvError::Invalid {
            var: var.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    pub(super) fn unsupported(var: &str, value: &str, reason: &'static str) -> EnvError {
        EnvError::Unsupported {
            var: var.to_owned(),
            value: value.to_owned(),
            reason,
        }
    }
}

/// A snapshot of the environment, so the reading is a pure function of it (tests build one
/// from pairs; the process takes [`IstioEnv::from_process`]).
#[derive(Debug, Clone, Default)]
pub struct IstioEnv {
    vars: BTreeMap<String, String>,
    not_utf8: Vec<String>,
}

impl IstioEnv {
    /// The process's environment.
    pub fn from_process() -> IstioEnv {
        IstioEnv::from_os(std::env::vars_os())
    }

    /// An environment of `pairs`.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> IstioEnv {
        IstioEnv {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            not_utf8: Vec::new(),
        }
    }

    pub(super) fn from_os(pairs: impl IntoIterator<Item = (OsString, OsString)>) -> IstioEnv {
        let mut env = IstioEnv::default();
        for (k, v) in pairs {
            let Ok(k) = k.into_string() else { continue };
            match v.into_string() {
                Ok(v) => {
                    env.vars.insert(k, v);
                }
                Err(_) => env.not_utf8.push(k),
            }
        }
        env
    }

    /// The value of `var`, if set.
    pub fn get(&self, var: &str) -> Result<Option<&str>, EnvError> {
        if self.not_utf8.iter().any(|v| v == var) {
            return Err(EnvError::NotUtf8 {
                var: var.to_owned(),
            });
        }
        Ok(self.vars.get(var).map(String::as_str))
    }

    /// Whether `var` is set (to anything).
    pub fn is_set(&self, var: &str) -> bool {
        self.vars.contains_key(var) || self.not_utf8.iter().any(|v| v == var)
    }

    /// The variables whose names start with `prefix`, with the prefix removed.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.vars
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }

    /// `var` as Istio parses a boolean (Rust's `bool::from_str`: `true` or `false`).
    pub fn bool(&self, var: &str) -> Result<Option<bool>, EnvError> {
        self.get(var)?
            .map(|v| {
                v.parse::<bool>()
                    .map_err(|_| EnvError::invalid(var, v, "must be true or false"))
            })
            .transpose()
    }
}

/// What a variable of Istio's ztunnel is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Read into the command-line argument with this id (clap `env`): the flag overrides it.
    Flag(&'static str),
    /// Read with Istio's meaning by [`super::apply`] (several variables, defaults, files), or
    /// by the module that owns it (`ISTIO_META_DNS_CAPTURE`: `crate::dns::DnsArgs`).
    Read,
    /// Honoured by the Rust runtime itself (`RUST_BACKTRACE`).
    Runtime,
    /// Accepted and logged once at start as ignored: optional in Istio, and harmless here.
    Ignored(&'static str),
    /// Refused at start when set to anything but one of `ok` (Istio's default): a feature
    /// this ztunnel does not have.
    OnlyDefault {
        /// The accepted values (Istio's default behaviour).
        ok: &'static [&'static str],
        /// What is missing, and what to do instead.
        why: &'static str,
    },
}

/// Every variable of Istio's ztunnel (`src/config.rs`) and its chart, and what it is here.
/// Variables under the `ISTIO_META_` prefix are node metadata (see [`super::apply`]);
/// `XDS_HEADER_*` / `CA_HEADER_*` are refused; `ISTIO_METAJSON_*` are ignored.
pub const VARS: &[(&str, Use)] = &[
    ("CA_ADDRESS", Use::Flag("ca_address")),
    ("XDS_ADDRESS", Use::Flag("xds_address")),
    ("NODE_NAME", Use::Flag("node")),
    ("INSTANCE_IP", Use::Flag("address")),
    ("POD_NAME", Use::Flag("pod_name")),
    ("POD_NAMESPACE", Use::Flag("pod_namespace")),
    ("ALT_XDS_HOSTNAME", Use::Flag("xds_server_name")),
    ("SECRET_TTL", Use::Flag("cert_ttl")),
    (
        "POOL_UNUSED_RELEASE_TIMEOUT",
        Use::Flag("pool_idle_timeout"),
    ),
    ("HTTP2_STREAM_WINDOW_SIZE", Use::Flag("hbone_stream_window")),
    (
        "HTTP2_CONNECTION_WINDOW_SIZE",
        Use::Flag("hbone_connection_window"),
    ),
    ("PACKET_MARK", Use::Flag("socket_mark")),
    ("NETWORK", Use::Flag("network")),
    ("CLUSTER_ID", Use::Read),
    ("ISTIO_META_CLUSTER_ID", Use::Read),
    ("TERMINATION_GRACE_PERIOD_SECONDS", Use::Read),
    ("CONNECTION_TERMINATION_DEADLINE", Use::Read),
    ("ZTUNNEL_WORKER_THREADS", Use::Read),
    ("ZTUNNEL_CPU_LIMIT", Use::Read),
    ("ZTUNNEL_RESOURCE_CPU_LIMIT", Use::Read),
    ("ZTUNNEL_RESOURCE_CPU_REQUEST", Use::Read),
    ("XDS_ROOT_CA", Use::Read),
    // The DNS proxy on 127.0.0.1:15053 in each pod: on when unset, as Istio's ztunnel; off
    // when set to anything but `true` (read by `crate::dns::DnsArgs`, `--dns-capture`
    // overrides it).
    ("ISTIO_META_DNS_CAPTURE", Use::Read),
    ("CA_ROOT_CA", Use::Read),
    ("AUTH_TOKEN", Use::Read),
    ("ALT_CA_HOSTNAME", Use::Read),
    ("RUST_LOG", Use::Read),
    ("RUST_BACKTRACE", Use::Runtime),
    (
        "PROXY_MODE",
        Use::OnlyDefault {
            ok: &["shared"],
            why: "a dedicated (per-workload) proxy is our `sidecar` binary",
        },
    ),
    (
        "XDS_ON_DEMAND",
        Use::OnlyDefault {
            ok: &["false"],
            why: "on-demand xDS is not implemented; the full workload API is subscribed",
        },
    ),
    (
        "FAKE_CA",
        Use::OnlyDefault {
            ok: &["false"],
            why: "no built-in fake CA; use --ca-dir with a local CA",
        },
    ),
    (
        "ENABLE_PROXY",
        Use::OnlyDefault {
            ok: &["true"],
            why: "a DNS-only ztunnel is not implemented",
        },
    ),
    (
        "ENABLE_ORIG_SRC",
        Use::OnlyDefault {
            ok: &["false"],
            why: "spoofing the original source address towards applications is not implemented",
        },
    ),
    (
        "CLUSTER_DOMAIN",
        Use::OnlyDefault {
            ok: &["cluster.local"],
            why: "service host names are matched under cluster.local only",
        },
    ),
    (
        "LOCALHOST_APP_TUNNEL",
        Use::OnlyDefault {
            ok: &["true"],
            why: "turning off tunnels to localhost applications is not implemented",
        },
    ),
    (
        "CRL_PATH",
        Use::OnlyDefault {
            ok: &[],
            why: "certificate revocation lists are not checked; refusing rather than accepting revoked peers",
        },
    ),
    (
        "LOCAL_XDS_PATH",
        Use::OnlyDefault {
            ok: &[],
            why: "Istio's local xDS file format is not read; use --config with Istio resources",
        },
    ),
    (
        "LOCAL_XDS",
        Use::OnlyDefault {
            ok: &[],
            why: "Istio's local xDS format is not read; use --config with Istio resources",
        },
    ),
    (
        "PROXY_CONFIG",
        Use::OnlyDefault {
            ok: &[""],
            why: "a ProxyConfig document is not read; set the individual variables or flags",
        },
    ),
    (
        "PREFERED_SERVICE_NAMESPACE",
        Use::OnlyDefault {
            ok: &[],
            why: "a preferred namespace for duplicate service host names is not implemented",
        },
    ),
    (
        "ISTIO_META_DNS_PROXY_ADDR",
        Use::OnlyDefault {
            ok: &[],
            why: "the DNS proxy address is fixed (15053)",
        },
    ),
    ("LOG_FORMAT", Use::Ignored("logs are written as text lines")),
    ("INPOD_ENABLED", Use::Read),
    (
        "SERVICE_ACCOUNT",
        Use::Ignored(
            "no self-proxy listener for the ztunnel's own metrics; 15020 is served in plaintext",
        ),
    ),
    (
        "TRUST_DOMAIN",
        Use::Ignored("only names the ztunnel's own identity, used by Istio's self-proxy listener"),
    ),
    ("KEEPALIVE_TIME", Use::Ignored("TCP keepalive tuning")),
    ("KEEPALIVE_INTERVAL", Use::Ignored("TCP keepalive tuning")),
    ("KEEPALIVE_RETRIES", Use::Ignored("TCP keepalive tuning")),
    ("KEEPALIVE_ENABLED", Use::Ignored("TCP keepalive tuning")),
    (
        "USER_TIMEOUT_ENABLED",
        Use::Ignored("TCP user-timeout tuning"),
    ),
    ("HTTP2_FRAME_SIZE", Use::Ignored("HTTP/2 frame-size tuning")),
    (
        "POOL_MAX_STREAMS_PER_CONNECTION",
        Use::Ignored("pooled HBONE connections carry at most 100 tunnels, Istio's default"),
    ),
    (
        "IPV6_ENABLED",
        Use::Ignored("listeners bind the pod's own addresses"),
    ),
    (
        "UNSTABLE_ENABLE_SOCKS5",
        Use::Ignored("SOCKS5 follows --socks5-port (on loopback)"),
    ),
    (
        "AUTHZ_POLICY_INFO_LOGGING",
        Use::Ignored("policy decisions log at debug; raise the level with RUST_LOG"),
    ),
    (
        "PROXY_WORKLOAD_INFO",
        Use::Ignored("only read with PROXY_MODE=dedicated"),
    ),
    ("ENABLE_RESPONSE_BAGGAGE", Use::Flag("response_baggage")),
];

/// What `var` is to us, if it is one of Istio's ztunnel variables.
pub fn use_of(var: &str) -> Option<Use> {
    VARS.iter().find(|(v, _)| *v == var).map(|(_, u)| *u)
}
