//! Peak EWMA (linkerd2-proxy's and tower's latency-aware balancer): each endpoint's latency
//! estimate jumps to a slower sample at once (the peak) and decays toward faster ones; the cost
//! of an endpoint is its estimate times its requests in flight plus one. Chosen by power of two
//! choices: the cheaper of two random endpoints.
//!
//! Sans-IO: callers pass `now` (as a duration on their clock) and samples.

use std::time::Duration;

/// The decay window (linkerd2-proxy's default: 10 s).
pub const DECAY: Duration = Duration::from_secs(10);

/// The estimate of an endpoint never measured (linkerd2-proxy's default RTT: 30 ms).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// One endpoint's estimate.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    /// Latency estimate, nanoseconds.
    estimate: f64,
    /// When it was last updated.
    stamp: Duration,
}

impl PeakEwma {
    /// A fresh estimate at `now`.
    pub fn new(now: Duration) -> PeakEwma {
        PeakEwma {
            estimate: DEFAULT_RTT.as_nanos() as f64,
            stamp: now,
        }
    }

    /// Records a response latency observed at `now`.
    pub fn observe(&mut self, now: Duration, rtt: Duration) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.estimate {
            // The peak: slowness is believed at once.
            self.estimate = rtt;
        } else {
            let w = self.weight(now);
            self.estimate = self.estimate * w + rtt * (1.0 - w);
        }
        self.stamp = self.stamp.max(now);
    }

    fn weight(&self, now: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.stamp).as_nanos() as f64;
        (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    /// The cost of sending one more request at `now` with `pending` in flight. The estimate
    /// decays while idle (as tower's `PeakEwma`), so an endpoint once slow is tried again.
    pub fn cost(&self, now: Duration, pending: usize) -> f64 {
        self.estimate * self.weight(now) * (pending as f64 + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    // linkerd2-proxy / tower `PeakEwma`: a slower sample replaces the estimate; faster ones
    // pull it down gradually; pending requests multiply the cost.
    #[test]
    fn peaks_then_decays() {
        let mut e = PeakEwma::new(Duration::ZERO);
        e.observe(MS, 200 * MS);
        assert_eq!(e.cost(MS, 0), (200 * MS).as_nanos() as f64);
        e.observe(MS * 1001, MS);
        let c = e.cost(MS * 1001, 0);
        assert!(
            c < (200 * MS).as_nanos() as f64 && c > (100 * MS).as_nanos() as f64,
            "{c}"
        );
        assert!(e.cost(MS * 1001, 3) > 3.9 * c);
    }

    proptest::proptest! {
        #[test]
        fn estimate_stays_within_samples(samples in proptest::collection::vec((0u64..1000, 1u64..10_000), 1..50)) {
            let mut e = PeakEwma::new(Duration::ZERO);
            let mut now = Duration::ZERO;
            let mut max = DEFAULT_RTT.as_nanos() as f64;
            for (dt, rtt) in samples {
                now += Duration::from_millis(dt);
                e.observe(now, Duration::from_micros(rtt));
                max = max.max(Duration::from_micros(rtt).as_nanos() as f64);
                proptest::prop_assert!(e.cost(now, 0) <= max + 1.0);
            }
        }
    }
}
