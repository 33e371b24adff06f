//! The balancing choice itself (sans-IO: the caller keeps the per-endpoint request counts).

use super::kind::LoadBalancer;

/// Chooses one of `n` endpoints. `turn` is a round-robin counter the caller advances, `r1`
/// and `r2` are random numbers, `active(i)` is endpoint `i`'s requests in flight.
pub fn choose(
    lb: LoadBalancer,
    n: usize,
    turn: usize,
    r1: u32,
    r2: u32,
    active: impl Fn(usize) -> usize,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    Some(match lb {
        LoadBalancer::RoundRobin => turn % n,
        LoadBalancer::Random => r1 as usize % n,
        LoadBalancer::LeastRequest | LoadBalancer::PeakEwma => {
            // Envoy: power of two choices.
            let a = r1 as usize % n;
            let b = r2 as usize % n;
            if active(b) < active(a) { b } else { a }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let active = [5usize, 0, 5];
        let picks: Vec<usize> = (0..3u32)
            .map(|r| choose(LoadBalancer::LeastRequest, 3, 0, r, 1, |i| active[i]).unwrap())
            .collect();
        assert_eq!(picks, [1, 1, 1]);
        assert_eq!(choose(LoadBalancer::RoundRobin, 3, 4, 0, 0, |_| 0), Some(1));
        assert_eq!(choose(LoadBalancer::Random, 0, 0, 0, 0, |_| 0), None);
    }
}
