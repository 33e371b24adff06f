//! Rate limiting, sans-IO: Envoy's token bucket ([`TokenBucket`]) and a bounded set of
//! buckets keyed by a client's descriptor value ([`BucketMap`]). Time is an input (`now`);
//! nothing here reads a clock, sleeps or locks.
//!
//! Envoy semantics (`envoy.config.core.v3.TokenBucket`, the local rate limit filters): a
//! bucket starts full with `max_tokens`; every whole `fill_interval` adds `tokens_per_fill`,
//! never above `max_tokens`; a request (or connection) takes one token or is refused. So over
//! any time span `T` at most `max_tokens + floor(T / fill_interval) * tokens_per_fill` are
//! admitted (the property the tests check).
//!
//! A [`BucketMap`] holds at most its capacity of buckets and evicts the least recently used
//! one to make room (Envoy's `max_dynamic_descriptors` cache): many distinct clients cannot
//! grow memory without bound; an evicted client starts again with a full bucket. A bucket is
//! keyed by a fixed-size [`BucketKey`] (a keyed 128-bit hash of the descriptor values), never
//! by the values themselves: a client sending 8 KiB header values costs the map the same few
//! dozen bytes per bucket as one sending an address.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::Duration;

use tokio::time::Instant;

/// The shortest `fill_interval` Envoy accepts (`local_rate_limit`: "must be >= 50ms").
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// A token bucket's settings (Envoy `TokenBucket`), checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Capacity, and the tokens it starts with (> 0).
    pub max_tokens: u32,
    /// Tokens added per interval (> 0).
    pub tokens_per_fill: u32,
    /// The interval (>= [`MIN_FILL_INTERVAL`]).
    pub fill_interval: Duration,
}

/// What a take decided, with the numbers Envoy's `x-ratelimit-*` headers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether a token was taken (the request may go on).
    pub allowed: bool,
    /// `max_tokens` (`x-ratelimit-limit`).
    pub limit: u32,
    /// Tokens left after this take (`x-ratelimit-remaining`).
    pub remaining: u32,
    /// Time until the next fill (`x-ratelimit-reset`, in whole seconds rounded up).
    pub reset: Duration,
}

impl Decision {
    /// `x-ratelimit-reset` as Envoy writes it: whole seconds until the next fill, rounded up.
    pub fn reset_secs(&self) -> u64 {
        let s = self.reset.as_secs();
        if self.reset.subsec_nanos() > 0 {
            s + 1
        } else {
            s
        }
    }
}

/// One token bucket (Envoy's discrete fills).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    cfg: BucketConfig,
    tokens: u32,
    /// When the last whole interval began.
    last_fill: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(cfg: BucketConfig, now: Instant) -> TokenBucket {
        TokenBucket {
            cfg,
            tokens: cfg.max_tokens,
            last_fill: now,
        }
    }

    /// Its settings.
    pub fn config(&self) -> BucketConfig {
        self.cfg
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_fill);
        let interval = self.cfg.fill_interval.max(MIN_FILL_INTERVAL);
        let periods = elapsed.as_nanos() / interval.as_nanos();
        if periods == 0 {
            return;
        }
        let add = periods.saturating_mul(u128::from(self.cfg.tokens_per_fill));
        let tokens = u128::from(self.tokens).saturating_add(add);
        self.tokens = u32::try_from(tokens.min(u128::from(self.cfg.max_tokens)))
            .unwrap_or(self.cfg.max_tokens);
        // Whole intervals only: the partial one keeps counting toward the next fill.
        let whole = u32::try_from(periods).map_or(elapsed, |p| interval.saturating_mul(p));
        self.last_fill += whole.min(elapsed);
    }

    /// Takes a token at `now` if there is one.
    pub fn take(&mut self, now: Instant) -> Decision {
        self.refill(now);
        let allowed = self.tokens > 0;
        if allowed {
            self.tokens -= 1;
        }
        self.decision(allowed, now)
    }

    /// What a take would decide at `now`, without taking.
    pub fn peek(&mut self, now: Instant) -> Decision {
        self.refill(now);
        self.decision(self.tokens > 0, now)
    }

    /// Gives back a token taken at `now` (another bucket refused the same request).
    pub fn give_back(&mut self) {
        self.tokens = self.tokens.saturating_add(1).min(self.cfg.max_tokens);
    }

    fn decision(&self, allowed: bool, now: Instant) -> Decision {
        let since = now.saturating_duration_since(self.last_fill);
        Decision {
            allowed,
            limit: self.cfg.max_tokens,
            remaining: self.tokens,
            reset: self.cfg.fill_interval.saturating_sub(since),
        }
    }
}

/// A bucket's key: 128 bits of a keyed hash of a descriptor's values.
///
/// The hash is std's [`RandomState`] hasher (SipHash-1-3 today; std keeps the algorithm
/// unspecified but keyed with random keys per process), run twice over the values with two
/// domain-separation prefixes for two independent 64-bit halves. Its keys are drawn per
/// [`BucketMap`] and never leave it, so a client cannot compute which values collide; by
/// chance, two of a map's at most 100 000 keys collide with probability below 2^-94.
pub type BucketKey = u128;

/// Hashes descriptor values into [`BucketKey`]s with a map's secret keys.
#[derive(Debug, Clone, Default)]
struct KeyHasher(RandomState);

impl KeyHasher {
    /// The key of `values` (each length-prefixed, so no two lists of values share an
    /// encoding).
    fn key<'a, I>(&self, values: I) -> BucketKey
    where
        I: IntoIterator<Item = &'a str>,
        I::IntoIter: Clone,
    {
        let values = values.into_iter();
        let half = |domain: u8| {
            let mut h = self.0.build_hasher();
            h.write_u8(domain);
            for v in values.clone() {
                h.write_usize(v.len());
                h.write(v.as_bytes());
            }
            h.finish()
        };
        (u128::from(half(0)) << 64) | u128::from(half(1))
    }
}

/// At most `capacity` buckets keyed by a descriptor value (a client address, a header's
/// value), least recently used evicted first. Lookups and evictions are O(1). Values are
/// hashed to a [`BucketKey`] and not kept: the memory held is bounded by the capacity alone
/// ([`BucketMap::bytes_held`]), whatever the size of the values.
#[derive(Debug)]
pub struct BucketMap {
    cfg: BucketConfig,
    capacity: usize,
    hasher: KeyHasher,
    index: HashMap<BucketKey, usize>,
    slots: Vec<Slot>,
    /// Most recently used slot.
    head: Option<usize>,
    /// Least recently used slot.
    tail: Option<usize>,
}

#[derive(Debug)]
struct Slot {
    key: BucketKey,
    bucket: TokenBucket,
    prev: Option<usize>,
    next: Option<usize>,
}

impl BucketMap {
    /// An empty map of buckets with `cfg`, holding at most `capacity` (at least 1).
    pub fn new(cfg: BucketConfig, capacity: usize) -> BucketMap {
        BucketMap {
            cfg,
            capacity: capacity.max(1),
            hasher: KeyHasher::default(),
            index: HashMap::new(),
            slots: Vec::new(),
            head: None,
            tail: None,
        }
    }

    /// How many buckets it holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The heap bytes it holds (its slots and index, as allocated; the index's per-entry
    /// control byte included): independent of the size of the values it was asked for.
    pub fn bytes_held(&self) -> usize {
        let slots = self.slots.capacity() * std::mem::size_of::<Slot>();
        let entry = std::mem::size_of::<(BucketKey, usize)>() + 1;
        slots + self.index.capacity() * entry
    }

    /// The bucket of a single value (see [`BucketMap::bucket_of`]).
    pub fn bucket(&mut self, value: &str, now: Instant) -> &mut TokenBucket {
        self.bucket_of([value], now)
    }

    /// The bucket of a descriptor's `values` (a new full one if absent, evicting the least
    /// recently used when full), marked most recently used. The values are hashed, not kept.
    pub fn bucket_of<'a, I>(&mut self, values: I, now: Instant) -> &mut TokenBucket
    where
        I: IntoIterator<Item = &'a str>,
        I::IntoIter: Clone,
    {
        let key = self.hasher.key(values);
        let i = match self.index.get(&key) {
            Some(&i) => {
                self.unlink(i);
                i
            }
            None => self.insert(key, now),
        };
        self.push_front(i);
        &mut self.slots[i].bucket
    }

    /// A slot for a new `key`: a fresh one, or the least recently used one reused.
    fn insert(&mut self, key: BucketKey, now: Instant) -> usize {
        let bucket = TokenBucket::new(self.cfg, now);
        if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                key,
                bucket,
                prev: None,
                next: None,
            });
            let i = self.slots.len() - 1;
            self.index.insert(key, i);
            return i;
        }
        // Full: `tail` exists because capacity >= 1 and every slot is linked.
        let i = self.tail.unwrap_or(0);
        self.unlink(i);
        let old = std::mem::replace(&mut self.slots[i].key, key);
        self.index.remove(&old);
        self.slots[i].bucket = bucket;
        self.index.insert(key, i);
        i
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        match prev {
            Some(p) => self.slots[p].next = next,
            None if self.head == Some(i) => self.head = next,
            None => {}
        }
        match next {
            Some(n) => self.slots[n].prev = prev,
            None if self.tail == Some(i) => self.tail = prev,
            None => {}
        }
        self.slots[i].prev = None;
        self.slots[i].next = None;
    }

    fn push_front(&mut self, i: usize) {
        self.slots[i].next = self.head;
        if let Some(h) = self.head {
            self.slots[h].prev = Some(i);
        }
        self.head = Some(i);
        if self.tail.is_none() {
            self.tail = Some(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(max: u32, per: u32, ms: u64) -> BucketConfig {
        BucketConfig {
            max_tokens: max,
            tokens_per_fill: per,
            fill_interval: Duration::from_millis(ms),
        }
    }

    // Envoy's local rate limit docs: max_tokens 4, tokens_per_fill 4, fill_interval 60s (the
    // Istio task "Enabling Rate Limits using Envoy" uses 4 per 60s): 4 pass, the 5th is
    // refused, all 4 come back after 60s, not before.
    #[test]
    fn discrete_fills_as_envoy() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(cfg(4, 4, 60_000), t0);
        let got: Vec<bool> = (0..5).map(|_| b.take(t0).allowed).collect();
        assert_eq!(got, [true, true, true, true, false]);
        let d = b.peek(t0 + Duration::from_millis(59_999));
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining, d.reset_secs()), (4, 0, 1));
        let d = b.take(t0 + Duration::from_secs(60));
        assert_eq!((d.allowed, d.remaining, d.reset_secs()), (true, 3, 60));
        // Never above max_tokens however long it waited.
        let d = b.peek(t0 + Duration::from_secs(3600));
        assert_eq!(d.remaining, 4);
    }

    #[test]
    fn a_partial_interval_counts_toward_the_next_fill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(cfg(1, 1, 1000), t0);
        assert!(b.take(t0).allowed);
        // At 1.5s one fill happened (taken here); the next is at 2.0s, not 2.5s.
        assert!(b.take(t0 + Duration::from_millis(1500)).allowed);
        assert!(!b.take(t0 + Duration::from_millis(1999)).allowed);
        assert!(b.take(t0 + Duration::from_millis(2000)).allowed);
    }

    // Attacker: 200 000 distinct client keys never hold more than `capacity` buckets, and
    // the most recently seen client keeps its (drained) bucket: evicting does not reset an
    // active client.
    #[test]
    fn many_clients_stay_bounded_and_lru_keeps_the_active_one() {
        let t0 = Instant::now();
        let mut m = BucketMap::new(cfg(1, 1, 60_000), 100);
        assert!(m.bucket("victim", t0).take(t0).allowed);
        for i in 0..200_000u32 {
            let _ = m
                .bucket(&format!("10.0.{}.{}", i >> 8, i & 255), t0)
                .take(t0);
            if i % 50 == 0 {
                // The attacker itself stays drained while it is active.
                assert!(!m.bucket("victim", t0).take(t0).allowed, "at {i}");
            }
        }
        assert_eq!(m.len(), 100);
        assert!(m.index.len() == 100);
    }

    // Attacker (review finding 2): 10 000 distinct 8 KiB header values (Envoy caps a header
    // block at 60 KiB by default, `max_request_headers_kb`) under the largest
    // `max_dynamic_descriptors` we accept: the map holds a fixed number of bytes per bucket,
    // not the values (before: each value stored twice, ~160 MB here).
    #[test]
    fn big_values_do_not_grow_the_map() {
        let t0 = Instant::now();
        let mut m = BucketMap::new(cfg(1, 1, 60_000), 100_000);
        let mut value = vec![b'a'; 8 * 1024];
        for i in 0..10_000u32 {
            value[..10].copy_from_slice(format!("{i:010}").as_bytes());
            let v = std::str::from_utf8(&value).unwrap();
            assert!(
                m.bucket(v, t0).take(t0).allowed,
                "a new value, a new bucket"
            );
        }
        assert_eq!(m.len(), 10_000);
        let per_bucket = m.bytes_held() / m.len();
        assert!(per_bucket <= 256, "{per_bucket} bytes per bucket");
        // The same value again finds its (drained) bucket.
        value[..10].copy_from_slice(b"0000000042");
        let v = std::str::from_utf8(&value).unwrap();
        assert!(!m.bucket(v, t0).take(t0).allowed);
    }

    // Multi-entry descriptors: values are length-prefixed, so moving a byte from one value to
    // the next is another client (the old `\x1f` join relied on header values lacking it).
    #[test]
    fn value_lists_do_not_alias() {
        let t0 = Instant::now();
        let mut m = BucketMap::new(cfg(1, 1, 60_000), 10);
        assert!(m.bucket_of(["ab", "c"], t0).take(t0).allowed);
        assert!(m.bucket_of(["a", "bc"], t0).take(t0).allowed);
        assert!(m.bucket_of(["abc"], t0).take(t0).allowed);
        assert!(!m.bucket_of(["ab", "c"], t0).take(t0).allowed);
        // Another map has other secret keys: the same value hashes differently.
        let other = BucketMap::new(cfg(1, 1, 60_000), 10);
        assert_ne!(m.hasher.key(["abc"]), other.hasher.key(["abc"]));
    }

    proptest! {
        // Never more than max_tokens + elapsed * rate admitted, whatever the arrival times.
        #[test]
        fn never_more_than_capacity_plus_rate(
            max in 1u32..20, per in 1u32..10, ms in 50u64..2000,
            gaps in proptest::collection::vec(0u64..3000, 1..300),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(cfg(max, per, ms), t0);
            let mut now = t0;
            let mut admitted = 0u64;
            for g in gaps {
                now += Duration::from_millis(g);
                if b.take(now).allowed { admitted += 1; }
                let elapsed = now.duration_since(t0).as_millis() as u64;
                let bound = u64::from(max) + elapsed / ms * u64::from(per);
                prop_assert!(admitted <= bound, "{admitted} > {bound}");
                let d = b.peek(now);
                prop_assert!(d.remaining <= max);
                prop_assert!(d.reset <= Duration::from_millis(ms));
            }
        }

        // The map's index and list agree and never exceed the capacity.
        #[test]
        fn map_stays_consistent(cap in 1usize..8, keys in proptest::collection::vec(0u8..20, 0..200)) {
            let t0 = Instant::now();
            let mut m = BucketMap::new(cfg(2, 1, 1000), cap);
            for k in keys {
                let _ = m.bucket(&k.to_string(), t0).take(t0);
                prop_assert!(m.len() <= cap);
                prop_assert_eq!(m.index.len(), m.len());
                let mut n = 0;
                let mut cur = m.head;
                while let Some(i) = cur { n += 1; cur = m.slots[i].next; prop_assert!(n <= cap); }
                prop_assert_eq!(n, m.len());
                let k = m.hasher.key([k.to_string().as_str()]);
                prop_assert_eq!(m.head.map(|h| m.slots[h].key), Some(k));
            }
        }
    }
}
