//! The DNS proxy's command line ([`DnsArgs`]) and what it turns into ([`super::DnsSettings`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::settings::{DnsLimits, DnsSettings};
use crate::duration::parse_duration;

/// Istio's switch for the DNS proxy (`proxyMetadata` / the ztunnel chart's env).
pub const CAPTURE_ENV: &str = "ISTIO_META_DNS_CAPTURE";

/// DNS proxy flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DnsArgs {
    /// Answer DNS in each in-pod workload's network namespace on 127.0.0.1:15053 (UDP and
    /// TCP), as Istio's ztunnel does when istio-cni captures DNS: mesh service names from the
    /// mesh state, the rest relayed upstream. Default, as Istio: `ISTIO_META_DNS_CAPTURE` in
    /// the environment (`true`: on, anything else: off); unset, on for the ztunnel (Istio's
    /// ztunnel) and off for the waypoint and the sidecar (Istio's sidecar agent).
    #[arg(long, value_name = "BOOL")]
    pub dns_capture: Option<bool>,
    /// Also answer DNS on this port of the proxy's own address (local mode: clients are the
    /// node's workloads, known by their source address; others get SERVFAIL).
    #[arg(long, value_name = "PORT")]
    pub dns_port: Option<u16>,
    /// The upstream resolvers: the `nameserver` lines of this file (Istio's ztunnel uses its
    /// own `/etc/resolv.conf`).
    #[arg(long, default_value = "/etc/resolv.conf", value_name = "FILE")]
    pub dns_resolv_conf: PathBuf,
    /// Upstream resolvers as `IP:PORT` (repeatable), instead of `--dns-resolv-conf` (which
    /// can only name port 53).
    #[arg(long, value_name = "IP:PORT")]
    pub dns_upstream: Vec<SocketAddr>,
    /// Time a relayed query may take, all upstreams together; then SERVFAIL.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub dns_forward_timeout: Duration,
    /// Kubernetes cluster domain of service names (`<svc>.<ns>.svc.<domain>`).
    #[arg(long, default_value = "cluster.local", value_name = "DOMAIN")]
    pub dns_cluster_domain: String,
    /// Most queries with the upstreams at once, per DNS listener; more get SERVFAIL at once.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub dns_max_forwarded: usize,
    /// Most open TCP clients per DNS listener.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub dns_max_tcp_connections: usize,
    /// Most queries with the upstreams at once, all DNS listeners together (one listener per
    /// pod); more get SERVFAIL at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub dns_max_forwarded_total: usize,
    /// Most open TCP clients, all DNS listeners together.
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub dns_max_tcp_connections_total: usize,
    /// A DNS TCP client is closed after this long without a complete query.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub dns_tcp_idle_timeout: Duration,
}

impl DnsArgs {
    /// Whether capture is on: the flag, else `ISTIO_META_DNS_CAPTURE` (`env`) is `true`,
    /// else (unset) `unset` (on for the ztunnel, as Istio's: its `dns_proxy` defaults on when
    /// the proxy metadata has no `DNS_CAPTURE`, and istio-cni redirects in-pod port 53 to
    /// 15053 then).
    pub fn capture(&self, env: Option<&str>, unset: bool) -> bool {
        self.dns_capture
            .unwrap_or_else(|| env.map_or(unset, |v| v.trim().eq_ignore_ascii_case("true")))
    }

    /// The DNS settings for a waypoint or sidecar at `ip` (capture off unless asked for), or
    /// `None` when no DNS listener is asked for (the `resolv.conf` is read when the proxy
    /// starts).
    pub fn settings(&self, ip: std::net::IpAddr) -> Option<DnsSettings> {
        self.settings_with(ip, false)
    }

    /// As [`settings`](Self::settings) for a ztunnel: capture on unless
    /// `ISTIO_META_DNS_CAPTURE` or `--dns-capture` says otherwise (Istio's ztunnel default).
    pub fn ztunnel_settings(&self, ip: std::net::IpAddr) -> Option<DnsSettings> {
        self.settings_with(ip, true)
    }

    fn settings_with(&self, ip: std::net::IpAddr, unset: bool) -> Option<DnsSettings> {
        let env = std::env::var(CAPTURE_ENV).ok();
        let capture = self.capture(env.as_deref(), unset);
        let node_addr = self.dns_port.map(|p| SocketAddr::new(ip, p));
        if !capture && node_addr.is_none() {
            return None;
        }
        Some(DnsSettings {
            capture,
            node_addr,
            upstreams: self.dns_upstream.clone(),
            resolv_conf: self
                .dns_upstream
                .is_empty()
                .then(|| self.dns_resolv_conf.clone()),
            forward_timeout: self.dns_forward_timeout,
            cluster_domain: self.dns_cluster_domain.clone(),
            limits: DnsLimits {
                max_forwarded: self.dns_max_forwarded,
                max_tcp_connections: self.dns_max_tcp_connections,
                max_forwarded_total: self.dns_max_forwarded_total,
                max_tcp_connections_total: self.dns_max_tcp_connections_total,
                tcp_idle_timeout: self.dns_tcp_idle_timeout,
                ..DnsLimits::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dns: DnsArgs,
    }

    // Istio's ztunnel `src/config.rs`: `dns_proxy` is `proxy_metadata.get("DNS_CAPTURE")
    // .is_none_or(|v| v.to_lowercase() == "true")` ("Enable by default"); the metadata comes
    // from `ISTIO_META_*` in the environment.
    #[test]
    fn capture_defaults_on_as_istio_and_the_flag_overrides_env() {
        let unset = Cli::parse_from(["x"]).dns;
        // The ztunnel (unset: on) and the waypoint or sidecar (Istio's sidecar agent: off).
        assert!(unset.capture(None, true));
        assert!(!unset.capture(None, false));
        for default in [true, false] {
            assert!(unset.capture(Some("true"), default));
            assert!(unset.capture(Some("TRUE"), default));
            assert!(!unset.capture(Some("false"), default));
            // Other spellings are off, not the default.
            assert!(!unset.capture(Some(""), default));
            assert!(!unset.capture(Some("1"), default));
        }
        let off = Cli::parse_from(["x", "--dns-capture", "false"]).dns;
        assert!(!off.capture(Some("true"), true));
        assert!(!off.capture(None, true));
        let on = Cli::parse_from(["x", "--dns-capture", "true"]).dns;
        assert!(on.capture(Some("false"), false));
    }

    /// The proxy-wide caps default to a bound whatever the number of pods, and the flags
    /// reach the settings.
    #[test]
    fn proxy_wide_caps_default_and_flags() {
        let ip = std::net::IpAddr::from([127, 226, 128, 1]);
        let d = Cli::parse_from(["x", "--dns-capture", "true"]).dns;
        let l = d.settings(ip).map(|s| s.limits);
        let got = l.map(|l| (l.max_forwarded_total, l.max_tcp_connections_total));
        assert_eq!(got, Some((1024, 2048)));
        let set = Cli::parse_from([
            "x",
            "--dns-capture",
            "true",
            "--dns-max-forwarded-total",
            "7",
            "--dns-max-tcp-connections-total",
            "9",
        ])
        .dns;
        let l = set.settings(ip).map(|s| s.limits);
        let got = l.map(|l| (l.max_forwarded_total, l.max_tcp_connections_total));
        assert_eq!(got, Some((7, 9)));
    }
}
