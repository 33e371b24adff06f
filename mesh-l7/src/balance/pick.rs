//! The endpoint choice (sans-IO): a [`Layout`] built at config time groups endpoints by
//! locality tier (or `distribute` group) with their hash tables; [`pick`] takes the caller's
//! view of the endpoints (health, tried, cost, warmth) and a [`Draw`] (round-robin turn, random
//! seed, hash key) and returns an endpoint.
//!
//! Order of preference, as Envoy: the nearest tier takes the traffic its health allows
//! (Envoy's priority load with overprovisioning factor 1.4: all of it while at least 1/1.4 of
//! its endpoints are healthy), the rest spills to the next tiers; within a tier the balancer. Eligible means healthy and not tried by an earlier attempt of the request (Envoy's
//! `previous_hosts`); if none is, tried ones are allowed again; if none is healthy, any endpoint
//! in the layout (Envoy's panic mode). STRICT exclusions never enter the layout.
//!
//! No allocation per pick; work per pick is bounded by the endpoints of the tier (plus the
//! hash table's walk, bounded by [`MAX_WALK`] slots).

use super::LoadBalancer;
use super::hash::{Table, TableKind};
use super::locality::{EXCLUDED, Rank};

/// The caller's view of its endpoints, by index.
pub trait Endpoints {
    /// Whether endpoint `i` is healthy (not ejected).
    fn healthy(&self, i: usize) -> bool;
    /// Whether an earlier attempt of this request tried endpoint `i`.
    fn tried(&self, i: usize) -> bool;
    /// The balancer's cost of endpoint `i`: requests in flight (LEAST_REQUEST) or the peak
    /// EWMA cost.
    fn cost(&self, i: usize) -> f64;
    /// Its warmup share, 0..=1 (1: warm).
    fn warmth(&self, i: usize) -> f64;
}

/// One request's randomness and key.
#[derive(Debug, Clone, Copy)]
pub struct Draw {
    /// Round-robin turn.
    pub turn: usize,
    /// Random seed.
    pub seed: u64,
    /// Consistent-hash key, if the policy hashes and the request has one.
    pub hash: Option<u64>,
}

#[derive(Debug, Clone)]
struct Range {
    start: usize,
    end: usize,
    weight: u32,
    table: Option<Table>,
}

/// Endpoints grouped for choice: tiers in order, or weighted groups.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    order: Vec<usize>,
    ranges: Vec<Range>,
    weighted: bool,
}

impl Layout {
    /// Groups endpoints by `ranks` (one per endpoint). With `weights` (a `distribute` rule),
    /// ranges are chosen by their group's weight, else in tier order. With `hash`, each range
    /// gets a table over its endpoints' stable `ids`.
    pub fn build(
        ranks: &[Rank],
        weights: Option<&[u32]>,
        hash: Option<TableKind>,
        ids: &[u64],
    ) -> Layout {
        let mut keyed: Vec<(u8, u8, usize)> = ranks
            .iter()
            .enumerate()
            .filter(|(_, r)| r.tier != EXCLUDED)
            .map(|(i, r)| (r.tier, r.group.unwrap_or(0), i))
            .collect();
        keyed.sort_unstable();
        let mut layout = Layout {
            order: keyed.iter().map(|k| k.2).collect(),
            ranges: Vec::new(),
            weighted: weights.is_some(),
        };
        let mut start = 0;
        while let Some(&(tier, group, _)) = keyed.get(start) {
            let len = keyed
                .iter()
                .skip(start)
                .take_while(|k| k.0 == tier && k.1 == group)
                .count();
            let end = start + len;
            let weight = weights.map_or(1, |w| w.get(usize::from(group)).copied().unwrap_or(0));
            let table = hash.and_then(|kind| {
                let range_ids: Vec<u64> = layout
                    .order
                    .get(start..end)
                    .unwrap_or_default()
                    .iter()
                    .map(|i| ids.get(*i).copied().unwrap_or(*i as u64))
                    .collect();
                Table::build(kind, &range_ids)
            });
            layout.ranges.push(Range {
                start,
                end,
                weight,
                table,
            });
            start = end;
        }
        layout
    }

    /// The number of endpoints that may ever be chosen.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no endpoint may ever be chosen.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Untried,
    Healthy,
    Panic,
}

/// A small deterministic generator (splitmix64) from the draw's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Chooses an endpoint index, or `None` when the layout has none.
pub fn pick(layout: &Layout, lb: LoadBalancer, eps: &impl Endpoints, draw: Draw) -> Option<usize> {
    let start = if layout.weighted || layout.ranges.len() < 2 {
        0
    } else {
        spill(layout, eps, Rng(draw.seed ^ 0x5851_f42d_4c95_7f2d).unit())
    };
    for pass in [Pass::Untried, Pass::Healthy, Pass::Panic] {
        let ok = |i: usize| match pass {
            Pass::Untried => eps.healthy(i) && !eps.tried(i),
            Pass::Healthy => eps.healthy(i),
            Pass::Panic => true,
        };
        let mut rng = Rng(draw.seed);
        let found = if layout.weighted {
            pick_weighted(layout, lb, eps, draw, &mut rng, &ok)
        } else {
            // From the tier the priority load chose, then the others nearest first.
            let ranges = layout.ranges.iter();
            (ranges.clone().skip(start))
                .chain(ranges.take(start))
                .find_map(|r| pick_in(layout, r, lb, eps, draw, &mut rng, &ok))
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Envoy's overprovisioning factor (1.4): a tier with at least 1/1.4 of its endpoints
/// healthy takes all the traffic it is offered.
const OVERPROVISIONING: f64 = 1.4;

fn health(layout: &Layout, r: &Range, eps: &impl Endpoints) -> f64 {
    let n = r.end - r.start;
    let healthy = (layout.order.get(r.start..r.end).unwrap_or_default().iter())
        .filter(|i| eps.healthy(**i))
        .count();
    (OVERPROVISIONING * healthy as f64 / n.max(1) as f64).min(1.0)
}

/// Envoy's priority load: tier `i` takes `min(health_i, what the nearer tiers left)`, the
/// loads scaled up when the tiers' health sums below 1; `u` in [0, 1) picks one. Health is
/// counted only until the load is placed (usually the first tier alone).
fn spill(layout: &Layout, eps: &impl Endpoints, u: f64) -> usize {
    let mut total = 0.0;
    for r in &layout.ranges {
        total += health(layout, r, eps);
        if total >= 1.0 {
            break;
        }
    }
    if total <= 0.0 {
        return 0;
    }
    let x = u * total.min(1.0);
    let mut placed = 0.0;
    for (j, r) in layout.ranges.iter().enumerate() {
        placed += health(layout, r, eps).min(1.0 - placed);
        if x < placed {
            return j;
        }
    }
    0
}

fn pick_weighted(
    layout: &Layout,
    lb: LoadBalancer,
    eps: &impl Endpoints,
    draw: Draw,
    rng: &mut Rng,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    // Ranges found without an eligible endpoint, as bits (at most 64 ranges are weighed; the
    // compiler caps `distribute` at 16 groups).
    let mut dead: u64 = 0;
    let ranges = layout.ranges.iter().take(64);
    for _ in 0..layout.ranges.len().min(64) {
        let total: u64 = ranges
            .clone()
            .enumerate()
            .filter(|(j, _)| dead & (1 << j) == 0)
            .map(|(_, r)| u64::from(r.weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut x = rng.next() % total;
        let (j, r) = ranges
            .clone()
            .enumerate()
            .filter(|(j, _)| dead & (1 << j) == 0)
            .find(|(_, r)| {
                let w = u64::from(r.weight);
                if x < w {
                    true
                } else {
                    x -= w;
                    false
                }
            })?;
        match pick_in(layout, r, lb, eps, draw, rng, ok) {
            Some(i) => return Some(i),
            None => dead |= 1 << j,
        }
    }
    None
}

/// Most hash-table slots walked from a key's slot before probing the range's endpoints.
pub const MAX_WALK: usize = 256;

/// The first eligible endpoint of the range at or after position `from` (wrapping).
fn probe(layout: &Layout, r: &Range, from: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let k = r.end - r.start;
    (0..k)
        .map(|s| layout.order.get(r.start + (from + s) % k).copied())
        .find_map(|i| i.filter(|i| ok(*i)))
}

fn pick_in(
    layout: &Layout,
    r: &Range,
    lb: LoadBalancer,
    eps: &impl Endpoints,
    draw: Draw,
    rng: &mut Rng,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let k = r.end - r.start;
    if k == 0 {
        return None;
    }
    if let (Some(key), Some(t)) = (draw.hash, &r.table) {
        // Walk the table from the key's slot: an ineligible endpoint's keys go to the next
        // endpoint on the ring (Envoy), and only its keys move.
        // Bounded: past MAX_WALK slots (a table mostly of ineligible endpoints, up to
        // MAX_TABLE slots) the range's endpoints are probed once from a key-derived start,
        // so the key still maps to one endpoint while the eligible set holds.
        let slot = t.slot(key);
        let found = (0..t.len().min(MAX_WALK))
            .map(|s| layout.order.get(r.start + t.at(slot + s)).copied())
            .find_map(|i| i.filter(|i| ok(*i)));
        let from = usize::try_from(key % k as u64).unwrap_or(0);
        return found.or_else(|| probe(layout, r, from, ok));
    }
    // Warmup: a warming endpoint is kept with probability `warmth`, else the next is tried
    // (bounded by the range), which gives it about that share of a warm one's traffic.
    let warm_ok = |i: usize, u: f64| eps.warmth(i) >= 1.0 || u < eps.warmth(i);
    match lb {
        LoadBalancer::RoundRobin | LoadBalancer::Random => {
            let from = if lb == LoadBalancer::RoundRobin {
                draw.turn % k
            } else {
                rng.below(k)
            };
            let first = probe(layout, r, from, ok)?;
            for s in 0..k {
                let i = probe(layout, r, from + s, ok)?;
                if warm_ok(i, rng.unit()) {
                    return Some(i);
                }
            }
            Some(first)
        }
        LoadBalancer::LeastRequest | LoadBalancer::PeakEwma => {
            // Power of two choices; cost divided by warmth (Envoy weighs least-request by the
            // slow-start-scaled weight).
            // Envoy's least request draws with replacement; linkerd2-proxy's P2C draws two
            // distinct endpoints, so a slow one is only chosen when it is the cheaper.
            let pa = rng.below(k);
            let pb = if lb == LoadBalancer::PeakEwma && k > 1 {
                (pa + 1 + rng.below(k - 1)) % k
            } else {
                rng.below(k)
            };
            let a = probe(layout, r, pa, ok)?;
            let b = probe(layout, r, pb, ok).unwrap_or(a);
            let cost = |i: usize| (eps.cost(i) + 1.0) / eps.warmth(i).max(1e-3);
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

#[cfg(test)]
#[path = "walk_tests.rs"]
mod walk_tests;
