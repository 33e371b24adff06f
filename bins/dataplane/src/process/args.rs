//! The command-line settings every proxy role shares ([`ProxyArgs`]) and what they turn
//! into: the certificate source and the core's [`ProxyConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_identity::{LocalCa, TrustBundle};
use mesh_telemetry::logging::LogControl;

use crate::Error;
use crate::duration::parse_duration;
use crate::proxy::ProxyConfig;

/// Settings every proxy role shares: config, CA, timeouts, telemetry endpoints, logging.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Mesh config file (multi-document YAML of Istio resources and our Node / MeshConfig).
    /// With `--xds-address` (waypoint, sidecar): the L7 resources istiod's workload API does
    /// not carry, and only those (VirtualService, DestinationRule, HTTPRoute,
    /// AuthorizationPolicy, RequestAuthentication).
    #[arg(long, value_name = "FILE", required_unless_present = "xds_address")]
    pub config: Option<PathBuf>,
    /// State directory of the local CA (create it with `meshctl ca init --dir DIR`).
    #[arg(long, value_name = "DIR", required_unless_present = "ca_address")]
    pub ca_dir: Option<PathBuf>,
    /// Take the mesh from istiod's workload API (Delta ADS) instead of a file:
    /// `https://istiod.istio-system.svc:15012` (or `http://` for a plaintext control plane).
    /// Workloads, services, endpoints and L4 policy come from istiod; a waypoint or sidecar
    /// takes its L7 resources from `--config` beside it.
    #[arg(long, value_name = "URL")]
    pub xds_address: Option<String>,
    /// Take workload certificates from Istio's CA (`IstioCertificateService`) instead of a
    /// local CA: a ztunnel asks on behalf of each local workload (`ImpersonatedIdentity`), a
    /// waypoint or sidecar for its own identity with its own token. Usually the same URL as
    /// `--xds-address`.
    #[arg(long, value_name = "URL", conflicts_with = "ca_dir")]
    pub ca_address: Option<String>,
    /// PEM root certificates of the control plane (istiod's `istio-ca-root-cert`
    /// `root-cert.pem`): verify its TLS and, with `--ca-address`, are the mesh trust bundle.
    #[arg(long, value_name = "FILE")]
    pub xds_root_ca: Option<PathBuf>,
    /// A file holding the bearer token for the control plane (a projected service-account
    /// token with audience `istio-ca`), re-read at each connect.
    #[arg(long, value_name = "FILE")]
    pub xds_token: Option<PathBuf>,
    /// Name the control plane's certificate must carry (default: the URL's host; istiod's is
    /// `istiod.istio-system.svc`).
    #[arg(long, value_name = "NAME")]
    pub xds_server_name: Option<String>,
    /// HTTP/2 keepalive ping interval on the control-plane connection; a control plane that
    /// leaves a ping unanswered for `--xds-keepalive-timeout` is dropped and redialled.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub xds_keepalive_interval: Duration,
    /// See `--xds-keepalive-interval`.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub xds_keepalive_timeout: Duration,
    /// Cluster id (Istio's `CLUSTER_ID`): sent to the control plane and the CA, and the
    /// cluster in metrics for control-plane configs.
    #[arg(long, default_value = crate::config::DEFAULT_CLUSTER_ID, value_name = "ID")]
    pub cluster_id: String,
    /// The network this proxy is on (Istio's `NETWORK`; default: the default network, empty).
    /// Workloads and service addresses istiod puts on another network are kept but not
    /// reachable: multi-network gateways are not supported.
    #[arg(long, default_value = "", value_name = "NAME")]
    pub network: String,
    /// Lifetime of workload certificates issued by the local CA (renewed at half-life).
    #[arg(long, default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub cert_ttl: Duration,
    /// Data-plane worker threads.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub worker_threads: usize,
    /// Limit for connecting to a destination (HBONE peer or local application).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// How long open connections may finish after SIGTERM/SIGINT before they are closed.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,
    /// Time an HTTP/1.1 client has to send a complete request head (also the longest an
    /// idle keep-alive connection waits for its next request) at the L7 servers (waypoint,
    /// sidecar).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub http_header_timeout: Duration,
    /// Most connections open at once over all data listeners (HBONE, SOCKS5, VIPs, capture);
    /// more are closed at accept and counted in `mesh_connections_refused_total`.
    #[arg(long, default_value_t = 50_000, value_name = "N")]
    pub max_connections: usize,
    /// Most connections open at once on one data listener.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub max_connections_per_listener: usize,
    /// How often the config file is checked for changes (a changed, valid file is applied at
    /// once; an invalid one is logged and the last good config keeps serving).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub config_poll_interval: Duration,
    /// Close pooled HBONE connections that carried no tunnel for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub pool_idle_timeout: Duration,
    /// HBONE (HTTP/2 over mTLS) limits.
    #[command(flatten)]
    pub hbone: crate::limits::HboneArgs,
    /// The DNS proxy (15053).
    #[command(flatten)]
    pub dns: crate::dns::DnsArgs,
    /// Admin port (`/config_dump`, `/certs`, `/logging`), on the proxy's address when that is
    /// a loopback address, else on 127.0.0.1; 0 disables it.
    #[arg(long, default_value_t = 15000, value_name = "PORT")]
    pub admin_port: u16,
    /// Admin listen address (must be loopback), overriding the default.
    #[arg(long, value_name = "IP:PORT")]
    pub admin_addr: Option<SocketAddr>,
    /// Prometheus port (`/metrics`, `/stats/prometheus`) on the proxy's address; 0 disables it.
    #[arg(long, default_value_t = 15020, value_name = "PORT")]
    pub metrics_port: u16,
    /// Prometheus listen address, overriding `<address>:<metrics-port>`.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Readiness port (`/healthz/ready`) on the proxy's address; 0 disables it.
    #[arg(long, default_value_t = 15021, value_name = "PORT")]
    pub readiness_port: u16,
    /// Readiness listen address, overriding `<address>:<readiness-port>`.
    #[arg(long, value_name = "IP:PORT")]
    pub readiness_addr: Option<SocketAddr>,
    /// Where the JSON access log (one line per connection) goes: `stdout`, `off`, or a file.
    #[arg(long, default_value = "stdout", value_name = "stdout|off|FILE")]
    pub access_log: mesh_telemetry::access::Sink,
    /// Cap on label sets per metric; connections past it are counted under `unknown` labels.
    #[arg(long, default_value_t = mesh_telemetry::metrics::DEFAULT_MAX_SERIES, value_name = "N")]
    pub max_metric_series: usize,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `info,access=warn`);
    /// `RUST_LOG` overrides it. Change it at run time with `POST /logging?level=…` on the
    /// admin port.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub log: String,
    /// `SO_MARK` on every socket the proxy opens, so capture rules leave its own traffic alone
    /// (`meshctl capture` skips mark 1337, Istio's). Default: 1337 for a sidecar, unmarked for
    /// ztunnel and waypoint; 0 turns marking off.
    #[arg(long, value_name = "MARK")]
    pub socket_mark: Option<u32>,
    /// Answer each accepted HBONE CONNECT's 200 with the destination workload's `baggage`
    /// (cluster, namespace, workload, canonical service and revision, region, zone), as
    /// Istio 1.29+'s ztunnel does (its `ENABLE_RESPONSE_BAGGAGE`, default true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub response_baggage: bool,
}

impl ProxyArgs {
    pub(crate) fn config_file(&self) -> Result<&std::path::Path, Error> {
        self.config
            .as_deref()
            .ok_or(Error::Usage("--config FILE is required"))
    }

    pub(crate) fn root_pem(&self) -> Result<Option<Vec<u8>>, Error> {
        self.xds_root_ca
            .as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|e| {
                    Error::Runtime(std::io::Error::new(
                        e.kind(),
                        format!("--xds-root-ca {}: {e}", p.display()),
                    ))
                })
            })
            .transpose()
    }

    /// The certificate source: Istio's CA (`--ca-address`, for `whom`) or the local CA
    /// (`--ca-dir`); and the mesh trust bundle.
    pub(crate) fn cert_provider(
        &self,
        whom: CaFor,
    ) -> Result<(Arc<dyn mesh_identity::CertProvider>, TrustBundle), Error> {
        if let Some(addr) = &self.ca_address {
            let pem = self.root_pem()?.ok_or(Error::Usage(
                "--xds-root-ca FILE (the mesh root certificates) is required with --ca-address",
            ))?;
            let bundle = TrustBundle::from_pem(&String::from_utf8_lossy(&pem))?;
            let mut control_plane = mesh_identity::grpc::ControlPlane::new(addr.clone());
            control_plane.ca_pem = Some(pem);
            control_plane.server_name = self.xds_server_name.clone();
            control_plane.connect_timeout = self.connect_timeout;
            let client = mesh_identity::istio_ca::IstioCaClient::new(
                mesh_identity::istio_ca::IstioCaConfig {
                    control_plane,
                    token_file: self.xds_token.clone(),
                    cluster_id: Some(self.cluster_id.clone()),
                    validity: self.cert_ttl,
                    impersonate: whom == CaFor::Workloads,
                    trust_roots_pem: None,
                },
            )?;
            let client = match whom {
                CaFor::Own(Some(id)) => client.only_for(id),
                _ => client,
            };
            return Ok((Arc::new(client), bundle));
        }
        let dir = self
            .ca_dir
            .as_deref()
            .ok_or(Error::Usage("--ca-dir DIR is required"))?;
        let ca = LocalCa::load(dir)?.with_ttl(self.cert_ttl);
        let bundle = ca.trust_bundle()?;
        Ok((Arc::new(ca), bundle))
    }

    /// The proxy settings for a proxy whose own address is `ip`.
    pub fn proxy_config(&self, ip: std::net::IpAddr, log: LogControl) -> ProxyConfig {
        let mut cfg = ProxyConfig {
            admin_addr: listen_addr(self.admin_addr, loopback_or(ip), self.admin_port),
            metrics_addr: listen_addr(self.metrics_addr, ip, self.metrics_port),
            readiness_addr: listen_addr(self.readiness_addr, ip, self.readiness_port),
            access_log: self.access_log.clone(),
            max_metric_series: self.max_metric_series,
            log: Some(log),
            connect_timeout: self.connect_timeout,
            l7: crate::proxy::L7Limits {
                header_timeout: self.http_header_timeout,
            },
            max_connections: self.max_connections,
            max_connections_per_listener: self.max_connections_per_listener,
            drain_timeout: self.drain_timeout,
            ..ProxyConfig::default()
        };
        cfg.socket_mark = self.socket_mark.filter(|m| *m != 0);
        cfg.response_baggage = self.response_baggage;
        cfg.pool.idle_timeout = self.pool_idle_timeout;
        cfg.pool.connect_timeout = self.connect_timeout;
        self.hbone.apply(&mut cfg);
        cfg.dns = self.dns.settings(ip);
        cfg.follows_istiod = self.xds_address.is_some();
        cfg
    }
}

/// Whose certificates a proxy asks Istio's CA for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaFor {
    /// A node proxy's workloads, on behalf of each (`ImpersonatedIdentity`; istiod grants it
    /// to ztunnel only).
    Workloads,
    /// Its own identity, with its own token (waypoint, sidecar); the identity when known up
    /// front.
    Own(Option<mesh_identity::SpiffeId>),
}

/// `ip` if it is a loopback address (a node of a local mesh), else `127.0.0.1`: where the
/// admin and SOCKS5 listeners go by default, never reachable from the network.
pub(crate) fn loopback_or(ip: std::net::IpAddr) -> std::net::IpAddr {
    if ip.is_loopback() {
        ip
    } else {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    }
}

/// `explicit`, else `ip:port` unless `port` is 0.
pub(crate) fn listen_addr(
    explicit: Option<SocketAddr>,
    ip: std::net::IpAddr,
    port: u16,
) -> Option<SocketAddr> {
    match (explicit, port) {
        (Some(a), _) => Some(a),
        (None, 0) => None,
        (None, p) => Some(SocketAddr::new(ip, p)),
    }
}
