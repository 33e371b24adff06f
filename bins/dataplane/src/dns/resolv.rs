//! The upstream resolvers, from a `resolv.conf` (resolv.conf(5)).
//!
//! As Istio's ztunnel (`SystemForwarder::new`: `read_system_conf()`), the upstreams are the
//! `nameserver` lines of the proxy's own `/etc/resolv.conf` (in Kubernetes, the cluster DNS
//! service), overridable with `--dns-resolv-conf`. Only `nameserver` is read: the asking pod's
//! stub resolver has already applied its `search` list and `ndots` (Istio, too, forwards with
//! the search list removed), and the forward timeout is this proxy's own setting. Other lines
//! are not parsed, so they have no effect.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::settings::DnsError;

/// glibc's `MAXNS`: the resolver reads at most three name servers.
pub const MAX_NAMESERVERS: usize = 3;

/// The `nameserver` addresses of `text` (port 53), at most [`MAX_NAMESERVERS`], in order.
/// An address with a zone (`fe80::1%eth0`) is skipped: a link-local upstream needs the
/// interface, which a socket address here cannot carry.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => addr.parse::<IpAddr>().ok(),
                _ => None,
            }
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .take(MAX_NAMESERVERS)
        .collect()
}

/// The name servers of the file at `path`.
///
/// # Errors
/// [`DnsError::ResolvConf`] when it cannot be read or names no server.
pub fn load(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|e| DnsError::ResolvConf {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let servers = nameservers(&text);
    if servers.is_empty() {
        return Err(DnsError::ResolvConf {
            path: path.to_owned(),
            reason: "no nameserver line".into(),
        });
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers_only() {
        let text = "# kubelet\nsearch ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n\
                    options ndots:5\nnameserver 2001:db8::53 ; second\nnameserver fe80::1%eth0\n\
                    nameserver 10.0.0.3\nnameserver 10.0.0.4\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.96.0.10:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "10.0.0.3:53".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn a_file_without_servers_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(&p, "search x\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("no nameserver"), "{e}");
    }
}
