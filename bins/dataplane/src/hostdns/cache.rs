//! The sans-IO part: the answer's safety check, the address choice, the bounded TTL cache.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Why an answer is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The answer holds an address a mesh connection must never be redirected to.
    #[error("DNS answer for {host} holds {addr} ({why}): refused")]
    Unsafe {
        /// The hostname.
        host: String,
        /// The offending address.
        addr: IpAddr,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// The answer holds no address.
    #[error("DNS answer for {host} holds no address")]
    Empty {
        /// The hostname.
        host: String,
    },
    /// The lookup failed (NXDOMAIN, SERVFAIL, no answer in time, a bad name).
    #[error("DNS lookup of {host} failed: {reason}")]
    Lookup {
        /// The hostname.
        host: String,
        /// Why.
        reason: String,
    },
}

/// Addresses that belong to the proxy or its node (its `--address`, the pods it serves in-pod).
#[derive(Debug, Clone, Default)]
pub struct Own {
    /// The addresses.
    pub addrs: Vec<IpAddr>,
    /// A loopback IPv4 network (address, prefix length) answers may point into: for the
    /// in-process test harness only, whose backends live on a loopback block. Never set from
    /// the command line. The proxy's own addresses stay refused.
    pub test_loopback: Option<(Ipv4Addr, u8)>,
}

/// Why `ip` must not be a hostname workload's address, if it must not.
pub fn unsafe_reason(ip: IpAddr, own: &Own) -> Option<&'static str> {
    // `::ffff:127.0.0.1` reaches 127.0.0.1 on a dual-stack socket: judged as the IPv4 it maps.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if own.addrs.iter().any(|a| canonical(*a) == ip) {
        return Some("the proxy's own address");
    }
    match ip {
        IpAddr::V4(v4) if in_test_block(v4, own.test_loopback) => None,
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_test_block(ip: Ipv4Addr, block: Option<(Ipv4Addr, u8)>) -> bool {
    let Some((net, len)) = block else {
        return false;
    };
    let mask = u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0);
    net.is_loopback() && len >= 8 && u32::from(ip) & mask == u32::from(net) & mask
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || ip.octets()[0] == 0 {
        Some("unspecified")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast or broadcast")
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_unicast_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

/// Checks a whole answer: one unsafe address refuses it all (an answer mixing a backend with
/// 127.0.0.1 is hostile or broken; half of it is not trusted either).
pub fn check_answer(host: &str, answer: &[IpAddr], own: &Own) -> Result<(), Refused> {
    for &addr in answer {
        if let Some(why) = unsafe_reason(addr, own) {
            return Err(Refused::Unsafe {
                host: host.to_owned(),
                addr,
                why,
            });
        }
    }
    if answer.is_empty() {
        return Err(Refused::Empty {
            host: host.to_owned(),
        });
    }
    Ok(())
}

/// Istio's choice: an address of the downstream's family (`v6`) if any, else any; `rnd` picks
/// among them (the caller's random number).
pub fn pick(answer: &[IpAddr], v6: bool, rnd: u64) -> Option<IpAddr> {
    let same = answer.iter().filter(|a| a.is_ipv6() == v6).count();
    let (n, family) = if same > 0 {
        (same, Some(v6))
    } else {
        (answer.len(), None)
    };
    if n == 0 {
        return None;
    }
    let i = usize::try_from(rnd % n as u64).ok()?;
    answer
        .iter()
        .filter(|a| family.is_none_or(|f| a.is_ipv6() == f))
        .nth(i)
        .copied()
}

/// The cache's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Hostnames kept at most.
    pub entries: usize,
    /// The longest an answer is kept, whatever its TTL.
    pub max_ttl: Duration,
    /// How long a failure is remembered (so one client cannot turn each connection into a
    /// query).
    pub negative_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            entries: 4096,
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(5),
        }
    }
}

/// A cached outcome: the (checked) addresses, or the failure.
pub type Outcome = Result<Arc<[IpAddr]>, Refused>;

#[derive(Debug)]
struct Entry {
    outcome: Outcome,
    expires: Instant,
}

/// Answers by hostname, each until its TTL (capped) runs out; at most `entries` of them.
#[derive(Debug)]
pub struct Cache {
    limits: Limits,
    map: HashMap<Box<str>, Entry>,
}

impl Cache {
    /// An empty cache.
    pub fn new(limits: Limits) -> Self {
        Cache {
            limits,
            map: HashMap::new(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The live outcome for `host`, if any (an expired one is dropped).
    pub fn get(&mut self, host: &str, now: Instant) -> Option<Outcome> {
        match self.map.get(host) {
            Some(e) if e.expires > now => Some(e.outcome.clone()),
            Some(_) => {
                self.map.remove(host);
                None
            }
            None => None,
        }
    }

    /// Records a lookup: `answer` with its TTL (checked against `own` first), or a failure
    /// (kept `negative_ttl`). Returns the outcome recorded.
    pub fn record(
        &mut self,
        host: &str,
        answer: Result<(Vec<IpAddr>, Duration), Refused>,
        own: &Own,
        now: Instant,
    ) -> Outcome {
        let (outcome, ttl) = match answer {
            Ok((addrs, ttl)) => match check_answer(host, &addrs, own) {
                Ok(()) => (Ok(Arc::from(addrs)), ttl.min(self.limits.max_ttl)),
                Err(e) => (Err(e), self.limits.negative_ttl),
            },
            Err(e) => (Err(e), self.limits.negative_ttl),
        };
        if ttl.is_zero() || self.limits.entries == 0 {
            return outcome;
        }
        if !self.map.contains_key(host) && self.map.len() >= self.limits.entries {
            self.make_room(now);
        }
        self.map.insert(
            host.into(),
            Entry {
                outcome: outcome.clone(),
                expires: now + ttl,
            },
        );
        outcome
    }

    /// Drops the expired entries; if none, the one expiring first.
    fn make_room(&mut self, now: Instant) {
        self.map.retain(|_, e| e.expires > now);
        if self.map.len() < self.limits.entries {
            return;
        }
        let first = self
            .map
            .iter()
            .min_by_key(|(_, e)| e.expires)
            .map(|(k, _)| k.clone());
        if let Some(k) = first {
            self.map.remove(&k);
        }
    }
}
