//! A service's weighted set of waypoints (workload API `Service.weighted_waypoints`, Istio
//! 1.31): each new connection goes through one waypoint chosen in proportion to its weight,
//! and stays on it for its whole life (the choice is made once, when the connection is routed).
//!
//! Istio's semantics (istio/ztunnel `src/state.rs`, `sample_weighted_waypoint`): an empty set
//! means the single `waypoint` is used; a weight of 0 describes a waypoint that gets no new
//! connections; a set whose weights are all 0 is not samplable and the single `waypoint` is
//! used instead. A named waypoint the control plane has not described fails closed (the
//! connection is refused, never sent direct).
//!
//! The table is built once per config (cumulative weights as `u64`: 64 entries of
//! `u32::MAX` cannot overflow) and a choice is a binary search, O(log n). The point in the
//! weight range comes from a per-table counter spread by a Weyl sequence (multiplication by
//! the golden ratio in 64-bit fixed point): consecutive connections are spread evenly over
//! the range, so the realized split matches the weights within a few connections instead of
//! drifting as a random draw can, and no random source is needed on the connection path.
//! Every waypoint a table names (weight 0 included) is one the destination accepts traffic
//! from, so connections pinned to a waypoint whose weight drops to 0 keep working.

use std::sync::atomic::{AtomicU64, Ordering};

/// The most entries a `weighted_waypoints` list may hold (a canary between waypoint
/// revisions needs a handful): a longer list is rejected by name.
pub(crate) const MAX_WEIGHTED_WAYPOINTS: usize = 64;

/// 2^64 / φ, odd: consecutive multiples are spread evenly over the 64-bit range.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A weighted choice among `T`s (a service's weighted waypoints), as a table built at
/// config time.
#[derive(Debug)]
pub struct Weighted<T> {
    /// Every entry named, in the control plane's order (weight 0 included).
    all: Vec<T>,
    /// For each entry with a weight, the end of its share of `[0, total)` and its index in
    /// `all`; ascending.
    ends: Vec<(u64, usize)>,
    total: u64,
    /// Connections routed so far (the Weyl sequence's index).
    next: AtomicU64,
}

/// Why a weighted set cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WeightedError {
    /// More entries than [`MAX_WEIGHTED_WAYPOINTS`].
    #[error("{0} entries (at most {MAX_WEIGHTED_WAYPOINTS})")]
    TooMany(usize),
}

impl<T> Weighted<T> {
    /// The table for `entries` (entry, weight). `Ok(None)` when no entry has a weight
    /// (Istio: not samplable, the single `waypoint` applies).
    pub fn new(entries: Vec<(T, u32)>) -> Result<Option<Weighted<T>>, WeightedError> {
        if entries.len() > MAX_WEIGHTED_WAYPOINTS {
            return Err(WeightedError::TooMany(entries.len()));
        }
        let mut ends = Vec::new();
        let mut total = 0u64;
        for (i, (_, weight)) in entries.iter().enumerate() {
            if *weight > 0 {
                // At most 64 × u32::MAX < 2^38: no overflow.
                total += u64::from(*weight);
                ends.push((total, i));
            }
        }
        if total == 0 {
            return Ok(None);
        }
        Ok(Some(Weighted {
            all: entries.into_iter().map(|(w, _)| w).collect(),
            ends,
            total,
            next: AtomicU64::new(0),
        }))
    }

    /// The waypoint for a new connection (O(log n)); the caller keeps it for the
    /// connection's life.
    pub fn pick(&self) -> &T {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.at(spread(n, self.total))
    }

    /// The waypoint whose share holds `x` (taken modulo the total weight): the sans-IO core
    /// of [`pick`](Self::pick).
    pub fn at(&self, x: u64) -> &T {
        let x = x % self.total;
        // The first entry whose share ends after x; `ends` is ascending and its last end is
        // `total` > x, so the index is in range.
        let i = self.ends.partition_point(|(end, _)| *end <= x);
        let idx = self.ends.get(i).map_or(0, |(_, idx)| *idx);
        // `all` is never empty: `ends` has an entry, which indexes it.
        &self.all[idx]
    }

    /// Every entry named, weight 0 included (for waypoints: those the destination accepts).
    pub fn all(&self) -> &[T] {
        &self.all
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The `n`th point of the Weyl sequence, scaled to `[0, total)`.
fn spread(n: u64, total: u64) -> u64 {
    let frac = n.wrapping_mul(GOLDEN);
    // (frac / 2^64) × total < total.
    ((u128::from(frac) * u128::from(total)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(weights: &[u32]) -> Option<Weighted<usize>> {
        let entries = weights.iter().copied().enumerate().collect();
        Weighted::new(entries).unwrap()
    }

    fn counts(t: &Weighted<usize>, n: usize) -> Vec<usize> {
        let mut c = vec![0; t.all().len()];
        for _ in 0..n {
            c[*t.pick()] += 1;
        }
        c
    }

    // Istio's ztunnel test `test_sample_weighted_waypoint` (src/state.rs): [100, 0] always
    // picks the first, [0, 100] the second, all zero is not samplable (None: the single
    // `waypoint` applies), 75/25 splits 75/25.
    #[test]
    fn istio_cases() {
        let t = table(&[100, 0]).unwrap();
        assert_eq!(counts(&t, 50), [50, 0]);
        let t = table(&[0, 100]).unwrap();
        assert_eq!(counts(&t, 50), [0, 50]);
        assert!(table(&[0, 0]).is_none());
        assert!(table(&[]).is_none());
        let t = table(&[75, 25]).unwrap();
        let c = counts(&t, 1000);
        assert!((745..=755).contains(&c[0]), "{c:?}");
        // The zero-weight waypoint is still one the destination accepts.
        let t = table(&[100, 0]).unwrap();
        assert_eq!(t.all().len(), 2);
    }

    // Attacker: absurd tables are bounded (u64 sums) or rejected by size.
    #[test]
    fn absurd_tables() {
        let t = table(&[u32::MAX; MAX_WEIGHTED_WAYPOINTS]).unwrap();
        assert_eq!(
            t.total(),
            u64::from(u32::MAX) * MAX_WEIGHTED_WAYPOINTS as u64
        );
        let c = counts(&t, 6400);
        assert!(c.iter().all(|n| (95..=105).contains(n)), "{c:?}");
        let t = table(&[u32::MAX, 1]).unwrap();
        assert_eq!(counts(&t, 1000), [1000, 0]);
        let many = (0..10_000).map(|i| (i, 1)).collect();
        assert_eq!(
            Weighted::<usize>::new(many).unwrap_err(),
            WeightedError::TooMany(10_000)
        );
    }

    proptest! {
        // Over a whole number of rounds the realized split is each weight's share, within 1%
        // of the connections (plus one), whatever the weights.
        #[test]
        fn split_follows_weights(weights in proptest::collection::vec(0u32..1000, 1..8)) {
            let Some(t) = table(&weights) else {
                prop_assert!(weights.iter().all(|w| *w == 0));
                return Ok(());
            };
            let n = 2000usize;
            let c = counts(&t, n);
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            for (i, w) in weights.iter().enumerate() {
                let want = n as f64 * f64::from(*w) / total as f64;
                prop_assert!((c[i] as f64 - want).abs() <= n as f64 * 0.01 + 1.0,
                    "{weights:?}: {c:?}");
                if *w == 0 {
                    prop_assert_eq!(c[i], 0);
                }
            }
        }

        // `at` never picks an entry of weight 0 and is total over u64.
        #[test]
        fn at_is_total(weights in proptest::collection::vec(any::<u32>(), 1..70), x in any::<u64>()) {
            match Weighted::new(weights.iter().copied().enumerate().collect()) {
                Err(WeightedError::TooMany(n)) => prop_assert!(n > MAX_WEIGHTED_WAYPOINTS),
                Ok(None) => prop_assert!(weights.iter().all(|w| *w == 0)),
                Ok(Some(t)) => {
                    prop_assert!(weights[*t.at(x)] > 0);
                }
            }
        }
    }
}
