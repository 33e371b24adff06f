//! Retry budgets (`DestinationRule` `trafficPolicy.retryBudget`, Istio 1.27): retries to a
//! destination are capped by a share of its active requests, so retries cannot amplify an
//! outage. Envoy's semantics (`CircuitBreakers.Thresholds.RetryBudget`, `RetryBudgetImpl`):
//! at most `max(minRetryConcurrency, percent × active requests / 100)` retries may be active
//! at once (a retry is active from its decision until its try is decided), `percent`
//! defaults to 20 and `minRetryConcurrency` to 3.
//!
//! The decision ([`RetryBudgetPolicy::allows`]) is a pure function; the counters
//! ([`BudgetCounters`]) are atomics shared by every stream of the proxy, handed out per
//! destination (host and subset) by a bounded [`BudgetRegistry`], whose lookups take no lock
//! (a copy-on-write map: only a destination's first request takes the writers' lock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use serde::Deserialize;

use mesh_authz::istio::FieldError;

/// `trafficPolicy.retryBudget`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudgetSpec {
    /// Active retries as a percentage of active requests (default 20).
    #[serde(default)]
    pub percent: Option<f64>,
    /// Active retries always allowed (default 3).
    #[serde(default)]
    pub min_retry_concurrency: Option<u32>,
    /// Not in Istio 1.27 (a later API addition): rejected by name.
    #[serde(default)]
    pub budget_interval: Option<serde::de::IgnoredAny>,
}

/// A compiled retry budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetPolicy {
    /// Percentage of active requests (0..=100).
    pub percent: f64,
    /// The floor on allowed active retries.
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudgetPolicy {
    /// Envoy's and Istio's defaults: 20%, at least 3.
    fn default() -> Self {
        RetryBudgetPolicy {
            percent: 20.0,
            min_retry_concurrency: 3,
        }
    }
}

impl RetryBudgetPolicy {
    /// The most retries that may be active with `active_requests` requests in flight.
    pub fn max_retries(&self, active_requests: u64) -> u64 {
        // Truncated as Envoy's `static_cast<uint64_t>`; the product is finite and ≥ 0.
        let share = (self.percent * active_requests as f64 / 100.0).floor();
        let share = if share.is_finite() && share > 0.0 {
            share as u64
        } else {
            0
        };
        share.max(u64::from(self.min_retry_concurrency))
    }

    /// Whether one more retry may start with `active_requests` requests and
    /// `active_retries` retries in flight.
    pub fn allows(&self, active_requests: u64, active_retries: u64) -> bool {
        active_retries < self.max_retries(active_requests)
    }
}

/// Compiles `retryBudget` at `f` (`spec.trafficPolicy.retryBudget`).
pub fn compile(
    spec: &RetryBudgetSpec,
    f: &str,
    errs: &mut Vec<FieldError>,
) -> Option<RetryBudgetPolicy> {
    let before = errs.len();
    if spec.budget_interval.is_some() {
        errs.push(FieldError {
            field: format!("{f}.budgetInterval"),
            reason: "not supported (not in Istio 1.27's retryBudget)".into(),
        });
    }
    let mut p = RetryBudgetPolicy::default();
    if let Some(v) = spec.percent {
        if (0.0..=100.0).contains(&v) {
            p.percent = v;
        } else {
            errs.push(FieldError {
                field: format!("{f}.percent"),
                reason: format!("{v}: must be in 0..=100"),
            });
        }
    }
    if let Some(m) = spec.min_retry_concurrency {
        p.min_retry_concurrency = m;
    }
    (errs.len() == before).then_some(p)
}

/// The active requests and retries of one destination, shared by all streams.
#[derive(Debug, Default)]
pub struct BudgetCounters {
    requests: AtomicU64,
    retries: AtomicU64,
}

impl BudgetCounters {
    /// Active (requests, retries).
    pub fn active(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }

    /// Counts a request (a try) as active until the guard drops.
    pub fn request(self: &Arc<Self>) -> ActiveGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            counters: self.clone(),
            retry: false,
        }
    }

    /// Takes a retry from the budget if `policy` allows one now; it stays active until the
    /// guard drops. Never exceeds the budget, even under races (compare-and-swap).
    pub fn retry(self: &Arc<Self>, policy: &RetryBudgetPolicy) -> Option<ActiveGuard> {
        let mut cur = self.retries.load(Ordering::Relaxed);
        loop {
            if !policy.allows(self.requests.load(Ordering::Relaxed), cur) {
                return None;
            }
            match self.retries.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(ActiveGuard {
                        counters: self.clone(),
                        retry: true,
                    });
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// An active request or retry, counted until dropped.
#[derive(Debug)]
pub struct ActiveGuard {
    counters: Arc<BudgetCounters>,
    retry: bool,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let c = if self.retry {
            &self.counters.retries
        } else {
            &self.counters.requests
        };
        c.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The most destinations a [`BudgetRegistry`] tracks on their own; past it (after dropping
/// unused ones), further destinations share one overflow budget.
pub const MAX_BUDGETS: usize = 4096;

/// A host's counters by subset (`None`: the host's own).
type Subsets = Vec<(Option<String>, Arc<BudgetCounters>)>;

/// Counters per destination (host, subset), shared by every stream of the proxy. Bounded:
/// at most [`MAX_BUDGETS`] destinations. Lookups read a snapshot of the map without a lock
/// (a request's hot path); adding a destination copies the map under the writers' lock,
/// which only a destination's first request (or one past the bound) takes.
#[derive(Debug, Default)]
pub struct BudgetRegistry {
    map: ArcSwap<HashMap<String, Subsets>>,
    write: Mutex<()>,
    overflow: Arc<BudgetCounters>,
}

/// `host`'s `subset` in `map`.
fn find(
    map: &HashMap<String, Subsets>,
    host: &str,
    subset: Option<&str>,
) -> Option<Arc<BudgetCounters>> {
    let list = map.get(host)?;
    list.iter()
        .find(|(s, _)| s.as_deref() == subset)
        .map(|(_, c)| c.clone())
}

impl BudgetRegistry {
    /// The counters of `host`'s `subset` (lock-free once the destination is known; allocates
    /// only the first time a destination is seen).
    pub fn get(&self, host: &str, subset: Option<&str>) -> Arc<BudgetCounters> {
        if let Some(c) = find(&self.map.load(), host, subset) {
            return c;
        }
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        // Another writer may have added it meanwhile.
        if let Some(c) = find(&self.map.load(), host, subset) {
            return c;
        }
        let mut map = HashMap::clone(&self.map.load());
        let c = self.insert(&mut map, host, subset);
        self.map.store(Arc::new(map));
        c
    }

    /// Adds `host`'s `subset` to `map` (a copy), dropping unused entries past the bound.
    fn insert(
        &self,
        map: &mut HashMap<String, Subsets>,
        host: &str,
        subset: Option<&str>,
    ) -> Arc<BudgetCounters> {
        let len: usize = map.values().map(Vec::len).sum();
        if len >= MAX_BUDGETS {
            // Entries no request holds can go: their counters are all zero.
            map.retain(|_, l| {
                // Held by the map in use and this copy: two references when unused.
                l.retain(|(_, c)| Arc::strong_count(c) > 2);
                !l.is_empty()
            });
            if map.values().map(Vec::len).sum::<usize>() >= MAX_BUDGETS {
                return self.overflow.clone();
            }
        }
        let c = Arc::new(BudgetCounters::default());
        map.entry(host.to_owned())
            .or_default()
            .push((subset.map(str::to_owned), c.clone()));
        c
    }

    /// Destinations tracked.
    pub fn len(&self) -> usize {
        self.map.load().values().map(Vec::len).sum()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
