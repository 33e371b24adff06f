//! Attacker (review finding 2): one client sends 10 000 requests, each with a distinct
//! 8 KiB value of the header a per-value local rate limit descriptor is made of, under the
//! largest `max_dynamic_descriptors` accepted (100 000). The heap the policy keeps is counted
//! in bytes with a counting allocator (live bytes, not entries): it must stay a small fixed
//! cost per bucket, not the values (before the fix: each value kept twice, ~160 MB). Its own
//! test binary: the allocator is the process's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
// Test-only: a counting global allocator needs `unsafe impl GlobalAlloc`; it only delegates
// to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use http::{HeaderMap, HeaderValue};
use mesh_l7::ratelimit::{
    Context, LocalOutcome, RateLimitPolicy, RateLimitRules, RequestView, VhostFacts,
};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds GlobalAlloc's
// contract; the counter has no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc` with `l` (alloc above).
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Envoy's local rate limit with a descriptor per `x-user` value (value omitted: one bucket
/// per value, Envoy `local_ratelimit` docs, "descriptors"), at most 100 000 buckets.
const PER_USER: &str = r#"{"configPatches": [
  {"applyTo": "HTTP_FILTER", "patch": {"operation": "INSERT_BEFORE", "value": {
    "name": "envoy.filters.http.local_ratelimit", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "stat_prefix": "per_user",
    "token_bucket": {"max_tokens": 1000000, "tokens_per_fill": 1000000, "fill_interval": "1s"},
    "filter_enabled": {"default_value": {"numerator": 100}},
    "filter_enforced": {"default_value": {"numerator": 100}},
    "max_dynamic_descriptors": 100000,
    "descriptors": [{"entries": [{"key": "user"}], "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}}]}}}},
  {"applyTo": "VIRTUAL_HOST", "patch": {"operation": "MERGE", "value": {"rate_limits": [
    {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}]}}}
]}"#;

#[test]
fn distinct_big_header_values_keep_the_heap_bounded() {
    let spec = serde_json::from_str(PER_USER).unwrap();
    let rules = RateLimitRules::compile(&spec).unwrap();
    let t0 = tokio::time::Instant::now();
    let p = RateLimitPolicy::build([&rules], Context::Gateway, t0).unwrap();
    let vh = VhostFacts {
        host: None,
        port: 80,
    };
    let mut value = vec![b'u'; 8 * 1024];
    let mut decide = |i: u32| {
        value[..10].copy_from_slice(format!("{i:010}").as_bytes());
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_bytes(&value).unwrap());
        let r = RequestView {
            method: "GET",
            path: "/",
            authority: "web",
            headers: &h,
            client: None,
        };
        let before = LIVE.load(Ordering::Relaxed);
        let v = p.decide(vh, None, &r, t0, &mut || 0);
        let refused = matches!(v.local, LocalOutcome::Refuse { .. });
        drop(v);
        (refused, LIVE.load(Ordering::Relaxed) - before)
    };
    let mut kept = 0i64;
    for i in 0..10_000 {
        let (refused, grew) = decide(i);
        assert!(!refused, "each new value gets its own bucket ({i})");
        kept += grew;
    }
    println!("heap kept by 10 000 buckets of 8 KiB values: {kept} bytes");
    // A bucket costs its slot and index entry (~150 bytes, up to twice that with the
    // growth slack of a Vec and a hash table);
    // the values' 80 MB are not kept.
    assert!(kept < 10_000 * 512, "{kept} bytes kept");
    // The same value again: its bucket (1 token, spent) refuses; the key was not lost.
    assert!(decide(42).0);
}
