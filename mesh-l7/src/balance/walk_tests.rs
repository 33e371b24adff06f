//! The hash table walk is bounded: a table of up to `MAX_TABLE` slots whose endpoints are
//! mostly ineligible costs at most `MAX_WALK` slots plus one pass over the range per pass.

use std::cell::Cell;

use proptest::prelude::*;

use super::super::hash::{MAX_TABLE, TableKind};
use super::super::locality::Rank;
use super::*;

/// Endpoints healthy by a mask, counting every health check.
struct Counted {
    healthy: Vec<bool>,
    checks: Cell<usize>,
}

impl Endpoints for Counted {
    fn healthy(&self, i: usize) -> bool {
        self.checks.set(self.checks.get() + 1);
        self.healthy.get(i).copied().unwrap_or(false)
    }
    fn tried(&self, _: usize) -> bool {
        false
    }
    fn cost(&self, _: usize) -> f64 {
        0.0
    }
    fn warmth(&self, _: usize) -> f64 {
        1.0
    }
}

fn layout(n: usize, kind: TableKind) -> Layout {
    let ranks = vec![
        Rank {
            tier: 0,
            group: None
        };
        n
    ];
    let ids: Vec<u64> = (0..n as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    Layout::build(&ranks, None, Some(kind), &ids)
}

fn hashed(key: u64) -> Draw {
    Draw {
        turn: 0,
        seed: key,
        hash: Some(key),
    }
}

/// Attack: every endpoint ejected (an attacker made them fail) and the largest ring
/// (`minimumRingSize` up to MAX_TABLE): a pick used to walk the whole ring on each pass
/// (millions of health checks per request); now at most MAX_WALK + n per pass.
#[test]
fn all_ineligible_walk_is_bounded() {
    let n = 8;
    let l = layout(n, TableKind::Ring(MAX_TABLE));
    let eps = Counted {
        healthy: vec![false; n],
        checks: Cell::new(0),
    };
    for key in 0..20u64 {
        eps.checks.set(0);
        // Panic mode: some endpoint all the same (Envoy: all unhealthy, all candidates).
        assert!(pick(&l, LoadBalancer::Random, &eps, hashed(key)).is_some());
        assert!(
            eps.checks.get() <= 2 * (MAX_WALK + n),
            "{}",
            eps.checks.get()
        );
    }
}

proptest! {
    /// With any eligible endpoint the pick is eligible and the same for the same key, and
    /// the checks stay bounded, whatever the health mask.
    #[test]
    fn bounded_walk_still_finds_an_eligible_endpoint(
        mask in proptest::collection::vec(proptest::bool::weighted(0.1), 1..300),
        key in proptest::num::u64::ANY,
        maglev in proptest::bool::ANY,
    ) {
        let n = mask.len();
        let kind = if maglev { TableKind::Maglev(65_537) } else { TableKind::Ring(4096) };
        let l = layout(n, kind);
        let eps = Counted { healthy: mask.clone(), checks: Cell::new(0) };
        let got = pick(&l, LoadBalancer::Random, &eps, hashed(key));
        prop_assert!(eps.checks.get() <= 2 * (MAX_WALK + n));
        if mask.iter().any(|h| *h) {
            let i = got.unwrap();
            prop_assert!(mask[i]);
            prop_assert_eq!(pick(&l, LoadBalancer::Random, &eps, hashed(key)), Some(i));
        }
    }
}
