#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn compiled(json: &str) -> Result<RetryBudgetPolicy, Vec<FieldError>> {
    let spec: RetryBudgetSpec = serde_json::from_str(json).unwrap();
    let mut errs = Vec::new();
    compile(&spec, "spec.trafficPolicy.retryBudget", &mut errs).ok_or(errs)
}

#[test]
fn defaults_are_twenty_percent_and_three() {
    // Istio DestinationRule TrafficPolicy.RetryBudget: percent defaults to 20% (1.30 release
    // note: "correctly 20%, not 0.2%"), minRetryConcurrency to 3 (Envoy RetryBudget docs).
    let p = compiled("{}").unwrap();
    assert_eq!(
        p,
        RetryBudgetPolicy {
            percent: 20.0,
            min_retry_concurrency: 3
        }
    );
    // Envoy RetryBudgetImpl::max(): max(percent x active / 100, min).
    assert_eq!(p.max_retries(0), 3);
    assert_eq!(p.max_retries(100), 20);
    assert_eq!(p.max_retries(19), 3);
    assert!(p.allows(100, 19));
    assert!(!p.allows(100, 20));
}

#[test]
fn bad_values_are_rejected_by_name() {
    let e = compiled(r#"{"percent": 150, "budgetInterval": "1s"}"#).unwrap_err();
    let f: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        f,
        [
            "spec.trafficPolicy.retryBudget.budgetInterval",
            "spec.trafficPolicy.retryBudget.percent"
        ]
    );
    let p = compiled(r#"{"percent": 0, "minRetryConcurrency": 0}"#).unwrap();
    assert!(!p.allows(1000, 0));
}

#[test]
fn counters_never_exceed_the_budget_and_guards_give_back() {
    let p = RetryBudgetPolicy {
        percent: 50.0,
        min_retry_concurrency: 1,
    };
    let c = Arc::new(BudgetCounters::default());
    let reqs: Vec<_> = (0..4).map(|_| c.request()).collect();
    let r1 = c.retry(&p).unwrap();
    let r2 = c.retry(&p).unwrap();
    assert!(c.retry(&p).is_none());
    assert_eq!(c.active(), (4, 2));
    drop(r1);
    let r3 = c.retry(&p).unwrap();
    drop((r2, r3, reqs));
    assert_eq!(c.active(), (0, 0));
}

#[test]
fn the_registry_is_per_destination_and_bounded() {
    let r = BudgetRegistry::default();
    let a = r.get("a.svc", None);
    let a1 = r.get("a.svc", Some("v1"));
    assert!(Arc::ptr_eq(&a, &r.get("a.svc", None)));
    assert!(!Arc::ptr_eq(&a, &a1));
    // Attacker: a flood of distinct hosts cannot grow the registry past its bound.
    let held: Vec<_> = (0..MAX_BUDGETS + 10)
        .map(|i| r.get(&format!("h{i}"), None))
        .collect();
    assert!(r.len() <= MAX_BUDGETS);
    drop(held);
    // Unused entries are dropped to make room.
    let _fresh = r.get("fresh", None);
    assert!(r.len() <= MAX_BUDGETS);
}

proptest! {
    /// Whatever the order of requests, retries and releases: active retries never exceed
    /// the budget computed at the time each was taken, and every counter returns to zero.
    #[test]
    fn budget_holds(ops in prop::collection::vec(0u8..4, 0..200), percent in 0.0f64..100.0, min in 0u32..5) {
        let p = RetryBudgetPolicy { percent, min_retry_concurrency: min };
        let c = Arc::new(BudgetCounters::default());
        let mut reqs = Vec::new();
        let mut retries = Vec::new();
        for op in ops {
            match op {
                0 => reqs.push(c.request()),
                1 => {
                    let (r, _) = c.active();
                    let before = c.active().1;
                    match c.retry(&p) {
                        Some(g) => { prop_assert!(before < p.max_retries(r)); retries.push(g) }
                        None => prop_assert!(before >= p.max_retries(r)),
                    }
                }
                2 => { reqs.pop(); }
                _ => { retries.pop(); }
            }
        }
        drop(reqs);
        drop(retries);
        prop_assert_eq!(c.active(), (0, 0));
    }
}

#[test]
fn destination_rules_set_budgets_for_the_host_and_its_subsets() {
    // Istio 1.30 release notes: retry budgets at top-level and subset trafficPolicy scope
    // survive when a subset declares its own traffic policy; a subset without one keeps
    // the host's.
    let spec: crate::istio::DestinationRuleSpec = serde_json::from_str(
        r#"{"host": "web", "trafficPolicy": {"retryBudget": {"percent": 10}},
            "subsets": [{"name": "v1", "labels": {"v": "1"}},
                        {"name": "v2", "labels": {"v": "2"},
                         "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"},
                                           "retryBudget": {"minRetryConcurrency": 7}}}]}"#,
    )
    .unwrap();
    let p = crate::DestinationPolicy::compile(&spec).unwrap();
    let host = RetryBudgetPolicy {
        percent: 10.0,
        min_retry_concurrency: 3,
    };
    assert_eq!(p.retry_budget, Some(host));
    assert_eq!(p.subsets[0].retry_budget, Some(host));
    assert_eq!(
        p.subsets[1].retry_budget,
        Some(RetryBudgetPolicy {
            percent: 20.0,
            min_retry_concurrency: 7
        })
    );
    let bad: crate::istio::DestinationRuleSpec = serde_json::from_str(
        r#"{"host": "web", "subsets": [{"name": "v1", "trafficPolicy": {"retryBudget": {"percent": -1}}}]}"#,
    )
    .unwrap();
    let e = crate::DestinationPolicy::compile(&bad).unwrap_err();
    assert_eq!(
        e[0].field,
        "spec.subsets[0].trafficPolicy.retryBudget.percent"
    );
}

#[test]
fn lookups_of_known_destinations_take_no_lock() {
    // Finding: every request to a budgeted destination took the registry's global mutex.
    // With the writers' lock held (a new destination being added), a known destination's
    // lookup still completes: the per-request path is lock-free.
    let r = Arc::new(BudgetRegistry::default());
    let known = r.get("web", Some("v1"));
    let held = r.write.lock().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let r2 = r.clone();
    std::thread::spawn(move || {
        let c = r2.get("web", Some("v1"));
        let _ = tx.send(c);
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("lookup blocked on the registry's lock");
    assert!(Arc::ptr_eq(&got, &known));
    drop(held);
    // Counters survive later additions (copy-on-write keeps the same Arc).
    let _other = r.get("api", None);
    assert!(Arc::ptr_eq(&r.get("web", Some("v1")), &known));
    assert_eq!(r.len(), 2);
}
