//! Locality: where a workload runs (`region/zone/subzone`) and how near an endpoint is to the
//! proxy, as a failover tier (0 nearest) or a `distribute` weight group.
//!
//! Three sources decide it, all compiled here into a [`Placement`] rule:
//! - Istio's workload API `Service.load_balancing` (ztunnel; Kubernetes `trafficDistribution`
//!   is carried through it by istiod): an ordered list of scopes and a mode,
//! - `DestinationRule.trafficPolicy.loadBalancer.localityLbSetting` (`failover`,
//!   `failoverPriority`, `distribute`, `enabled`), effective only with `outlierDetection` for
//!   the failover kinds, as Istio.
//!
//! Invariant: a tier is a small number (`0..=MAX_TIER`); [`EXCLUDED`] means never chosen
//! (a STRICT preference the endpoint does not meet, a `distribute` locality with no weight).

use std::collections::BTreeMap;

/// A tier meaning "never choose this endpoint".
pub const EXCLUDED: u8 = u8::MAX;

/// The largest tier number a rule produces.
pub const MAX_TIER: u8 = 16;

/// Most `distribute.to` groups a rule may name (the chooser keeps them in a bit mask).
pub const MAX_GROUPS: usize = 16;

/// A workload's locality: `region/zone/subzone` (each part may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Subzone.
    pub subzone: String,
}

impl Locality {
    /// Parses `region[/zone[/subzone]]`.
    ///
    /// # Errors
    /// More than three parts, or a part with whitespace or `*`.
    pub fn parse(s: &str) -> Result<Locality, String> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 3 {
            return Err(format!("{s:?}: expected region/zone/subzone"));
        }
        if parts
            .iter()
            .any(|p| p.contains('*') || p.chars().any(char::is_whitespace))
        {
            return Err(format!("{s:?}: a locality part has no `*` nor whitespace"));
        }
        let part = |i: usize| parts.get(i).map_or(String::new(), |p| (*p).to_owned());
        Ok(Locality {
            region: part(0),
            zone: part(1),
            subzone: part(2),
        })
    }

    /// Whether this locality matches a `distribute` pattern: `region/zone/subzone` where a
    /// part may be `*` (matches all below), missing parts match anything.
    pub fn matches(&self, pattern: &str) -> bool {
        let mine = [&self.region, &self.zone, &self.subzone];
        for (i, p) in pattern.split('/').enumerate() {
            if p == "*" {
                return true;
            }
            match mine.get(i) {
                Some(m) if m.as_str() == p => {}
                _ => return false,
            }
        }
        true
    }
}

/// Where a proxy or an endpoint is: what locality rules compare.
#[derive(Debug, Clone, Copy, Default)]
pub struct Place<'a> {
    /// Its locality, if known.
    pub locality: Option<&'a Locality>,
    /// Its node name, if any.
    pub node: Option<&'a str>,
    /// Its cluster.
    pub cluster: &'a str,
    /// Its network.
    pub network: &'a str,
    /// Its labels (for `failoverPriority`).
    pub labels: Option<&'a BTreeMap<String, String>>,
}

impl Place<'_> {
    fn region(&self) -> &str {
        self.locality.map_or("", |l| l.region.as_str())
    }
    fn zone(&self) -> &str {
        self.locality.map_or("", |l| l.zone.as_str())
    }
    fn subzone(&self) -> &str {
        self.locality.map_or("", |l| l.subzone.as_str())
    }

    /// A `failoverPriority` label's value: Istio reads the topology labels from the locality,
    /// the network and the cluster, others from the workload's labels.
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            "topology.kubernetes.io/region" => Some(self.region()),
            "topology.kubernetes.io/zone" => Some(self.zone()),
            "topology.istio.io/subzone" => Some(self.subzone()),
            "topology.istio.io/network" => Some(self.network),
            "topology.istio.io/cluster" => Some(self.cluster),
            "kubernetes.io/hostname" => self.node,
            _ => self.labels?.get(key).map(String::as_str),
        }
    }
}

/// A scope of the workload API's routing preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Same network.
    Network,
    /// Same region.
    Region,
    /// Same zone.
    Zone,
    /// Same subzone.
    Subzone,
    /// Same node.
    Node,
    /// Same cluster.
    Cluster,
}

/// How a routing preference treats endpoints that do not match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Prefer the endpoints matching the most scopes, fall back to the others.
    Failover,
    /// Only endpoints matching every scope.
    Strict,
}

/// A locality rule, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Istio's workload API `load_balancing` (ztunnel): the endpoints matching the longest
    /// prefix of `scopes` first.
    Preference {
        /// Scopes in order.
        scopes: Vec<Scope>,
        /// Failover or strict.
        mode: Mode,
    },
    /// Istio's default locality failover (`localityLbSetting` with `outlierDetection`):
    /// same subzone, then zone, then region, then the `failover` region, then elsewhere.
    Failover {
        /// `failover`: (from region, to region).
        failover: Vec<(String, String)>,
    },
    /// `failoverPriority`: endpoints matching the proxy on all labels first, then on all but
    /// the last, and so on.
    Labels(Vec<String>),
    /// `distribute`: the first rule whose `from` matches the proxy's locality; endpoints in a
    /// `to` locality get its weight, the others none.
    Distribute(Vec<Distribute>),
}

/// One `distribute` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribute {
    /// The proxies it applies to (`region/zone/*`).
    pub from: String,
    /// Target locality patterns and their weights.
    pub to: Vec<(String, u32)>,
}

/// An endpoint's place relative to the proxy under a rule: a failover tier (0 nearest,
/// [`EXCLUDED`]: never) and, for `distribute`, its group (index into the returned weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank {
    /// Failover tier.
    pub tier: u8,
    /// `distribute` group, if any.
    pub group: Option<u8>,
}

impl Placement {
    /// The group weights of a `distribute` rule applying to a proxy at `here`, if any.
    pub fn weights(&self, here: &Place<'_>) -> Option<Vec<u32>> {
        let Placement::Distribute(rules) = self else {
            return None;
        };
        let loc = here.locality?;
        let rule = rules.iter().find(|r| loc.matches(&r.from))?;
        Some(rule.to.iter().map(|(_, w)| *w).collect())
    }

    /// Where `there` (an endpoint) stands for a proxy at `here`.
    pub fn rank(&self, here: &Place<'_>, there: &Place<'_>) -> Rank {
        let tier = |t: usize| Rank {
            tier: u8::try_from(t).unwrap_or(MAX_TIER).min(MAX_TIER),
            group: None,
        };
        match self {
            Placement::Preference { scopes, mode } => {
                let matched = scopes.iter().take_while(|s| same(**s, here, there)).count();
                let missing = scopes.len() - matched;
                if *mode == Mode::Strict && missing > 0 {
                    Rank {
                        tier: EXCLUDED,
                        group: None,
                    }
                } else {
                    tier(missing)
                }
            }
            Placement::Failover { failover } => tier(failover_tier(here, there, failover)),
            Placement::Labels(keys) => {
                let matched = keys
                    .iter()
                    .take_while(|k| {
                        let v = here.label(k);
                        v.is_some() && v == there.label(k)
                    })
                    .count();
                tier(keys.len() - matched)
            }
            Placement::Distribute(rules) => {
                let rule = here
                    .locality
                    .and_then(|l| rules.iter().find(|r| l.matches(&r.from)));
                let Some(rule) = rule else {
                    return tier(0);
                };
                let group = there
                    .locality
                    .and_then(|l| rule.to.iter().position(|(p, _)| l.matches(p)))
                    .filter(|g| rule.to.get(*g).is_some_and(|(_, w)| *w > 0));
                match group.and_then(|g| u8::try_from(g).ok()) {
                    Some(g) => Rank {
                        tier: 0,
                        group: Some(g),
                    },
                    None => Rank {
                        tier: EXCLUDED,
                        group: None,
                    },
                }
            }
        }
    }
}

fn same(scope: Scope, here: &Place<'_>, there: &Place<'_>) -> bool {
    match scope {
        Scope::Network => here.network == there.network,
        Scope::Cluster => here.cluster == there.cluster,
        Scope::Node => here.node.is_some() && here.node == there.node,
        // The locality scopes nest: a zone only matches within the same region.
        Scope::Region => here.locality.is_some() && here.region() == there.region(),
        Scope::Zone => same(Scope::Region, here, there) && here.zone() == there.zone(),
        Scope::Subzone => same(Scope::Zone, here, there) && here.subzone() == there.subzone(),
    }
}

/// Istio's `applyLocalityFailover`: 0 same subzone, 1 same zone, 2 same region, 3 the
/// `failover` region of the proxy's region, 4 elsewhere.
fn failover_tier(here: &Place<'_>, there: &Place<'_>, failover: &[(String, String)]) -> usize {
    if here.locality.is_none() {
        return 0;
    }
    if same(Scope::Subzone, here, there) {
        0
    } else if same(Scope::Zone, here, there) {
        1
    } else if same(Scope::Region, here, there) {
        2
    } else if failover
        .iter()
        .any(|(from, to)| from == here.region() && to == there.region())
    {
        3
    } else {
        4
    }
}
