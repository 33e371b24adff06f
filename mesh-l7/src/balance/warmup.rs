//! Warmup (Envoy's slow start, Istio's `warmupDurationSecs` / `warmup`): an endpoint that joined
//! recently gets a share of traffic growing with its age.
//!
//! Envoy: `factor = max(min_weight_percent, (age / window) ^ (1 / aggression))`, for ages below
//! the window; 1 afterwards. Endpoints present when the balancer started are not warming.

use std::time::Duration;

/// A compiled warmup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    /// The window.
    pub duration: Duration,
    /// The smallest share, 0..=1 (`minimumPercent`, default 10%).
    pub minimum: f64,
    /// The curve (`aggression`, default 1.0: linear).
    pub aggression: f64,
}

impl Warmup {
    /// Istio's defaults for a window.
    pub fn new(duration: Duration) -> Warmup {
        Warmup {
            duration,
            minimum: 0.1,
            aggression: 1.0,
        }
    }

    /// The share (0..=1) an endpoint of this `age` gets relative to a warm one.
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.duration || self.duration.is_zero() {
            return 1.0;
        }
        // Envoy counts at least 1 ms of age.
        let t = age.max(Duration::from_millis(1)).as_secs_f64() / self.duration.as_secs_f64();
        t.powf(1.0 / self.aggression).max(self.minimum).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Envoy slow start (api/envoy/config/cluster/v3/cluster.proto SlowStartConfig): linear
    // with aggression 1, never below min_weight_percent, full weight after the window.
    #[test]
    fn ramps_from_the_minimum_to_full() {
        let w = Warmup::new(Duration::from_secs(100));
        assert_eq!(w.factor(Duration::ZERO), 0.1);
        assert!((w.factor(Duration::from_secs(50)) - 0.5).abs() < 1e-9);
        assert_eq!(w.factor(Duration::from_secs(100)), 1.0);
        let steep = Warmup {
            aggression: 2.0,
            ..w
        };
        assert!((steep.factor(Duration::from_secs(25)) - 0.5).abs() < 1e-9);
    }

    proptest::proptest! {
        #[test]
        fn factor_is_monotone_and_bounded(a in 0u64..200_000, b in 0u64..200_000, agg in 1u32..50) {
            let w = Warmup { duration: Duration::from_secs(100), minimum: 0.1, aggression: f64::from(agg) / 10.0 };
            let (lo, hi) = (a.min(b), a.max(b));
            let (fl, fh) = (w.factor(Duration::from_millis(lo)), w.factor(Duration::from_millis(hi)));
            proptest::prop_assert!(fl <= fh);
            proptest::prop_assert!((0.1..=1.0).contains(&fl));
        }
    }
}
