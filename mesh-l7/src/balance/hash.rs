//! `loadBalancer.consistentHash`: the request's hash key (header, cookie, source IP, query
//! parameter) and the two tables that map a key to an endpoint (Envoy's ring hash and Maglev).
//!
//! Invariants: hashing a key never allocates (the bytes are read in place); tables are built at
//! config time with bounded sizes ([`MAX_TABLE`]); a lookup returns a position in the
//! endpoint list the table was built over, and `next` walks the table so an ejected endpoint's
//! keys move to their successor only.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderMap;

/// The largest ring or Maglev table accepted (Envoy caps the ring at 8M entries; we keep
/// tables small enough to build per endpoint set on every config).
pub const MAX_TABLE: u64 = 1 << 20;

/// Envoy's default `minimumRingSize` and Maglev table size.
pub const DEFAULT_RING: u64 = 1024;
/// Envoy's default Maglev table size (a prime).
pub const DEFAULT_MAGLEV: u64 = 65537;

/// What the hash key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    /// A request header (`httpHeaderName`, lower case).
    Header(http::HeaderName),
    /// A cookie (`httpCookie`); when absent and `ttl` is set the proxy makes one up and sets it
    /// on the response, as Envoy.
    Cookie {
        /// Cookie name.
        name: String,
        /// Its `Path` attribute when generated.
        path: Option<String>,
        /// Its lifetime when generated (`None`: never generated).
        ttl: Option<Duration>,
    },
    /// The client's IP address (`useSourceIp`).
    SourceIp,
    /// A query parameter (`httpQueryParameterName`).
    Query(String),
}

/// The table kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A ring of `size` points (`ringHash.minimumRingSize`, legacy `minimumRingSize`).
    Ring(u64),
    /// A Maglev lookup table of a prime `size` (`maglev.tableSize`).
    Maglev(u64),
}

/// A compiled `consistentHash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    /// Key source.
    pub source: HashSource,
    /// Table.
    pub table: TableKind,
}

/// 64-bit FNV-1a with a final avalanche (splitmix64): stable across processes and builds, so
/// two proxies agree on where a key goes.
pub fn hash_bytes(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the request gives for hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A key's hash.
    Hash(u64),
    /// A cookie to generate: its value (hashed as the key) goes on the response.
    NewCookie(u64),
    /// Nothing to hash: balance as without `consistentHash` (Envoy falls back to random).
    None,
}

impl HashSource {
    /// The request's key. `fresh` is a random number used only to make up a cookie.
    pub fn key(&self, headers: &HeaderMap, query: Option<&str>, src: IpAddr, fresh: u64) -> Key {
        match self {
            HashSource::Header(name) => {
                // Envoy hashes every value of a repeated header (joined); we hash them in turn.
                let mut it = headers.get_all(name).iter().peekable();
                if it.peek().is_none() {
                    return Key::None;
                }
                let mut h = 0u64;
                for v in it {
                    h = mix(h ^ hash_bytes(&[v.as_bytes()]));
                }
                Key::Hash(h)
            }
            HashSource::Cookie { name, ttl, .. } => match cookie(headers, name) {
                Some(v) => Key::Hash(hash_bytes(&[v])),
                None if ttl.is_some() => Key::NewCookie(fresh),
                None => Key::None,
            },
            HashSource::SourceIp => Key::Hash(match src {
                IpAddr::V4(a) => hash_bytes(&[&a.octets()]),
                IpAddr::V6(a) => hash_bytes(&[&a.octets()]),
            }),
            HashSource::Query(p) => query
                .and_then(|q| query_param(q, p))
                .map_or(Key::None, |v| Key::Hash(hash_bytes(&[v]))),
        }
    }

    /// The `Set-Cookie` value for a generated cookie `value` (as [`Key::NewCookie`]), and the
    /// hash the request is balanced by. Envoy quotes the value and marks it `HttpOnly`.
    pub fn new_cookie(&self, value: u64) -> Option<(http::HeaderValue, u64)> {
        let HashSource::Cookie {
            name,
            path,
            ttl: Some(ttl),
        } = self
        else {
            return None;
        };
        let v = format!("{value:016x}");
        let mut s = format!("{name}=\"{v}\"; Max-Age={}", ttl.as_secs());
        if let Some(p) = path {
            s.push_str("; Path=");
            s.push_str(p);
        }
        s.push_str("; HttpOnly");
        let hv = http::HeaderValue::from_str(&s).ok()?;
        Some((hv, hash_bytes(&[v.as_bytes()])))
    }
}

/// The value of cookie `name` in the `cookie` headers, unquoted, read in place.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for h in headers.get_all(http::header::COOKIE) {
        for pair in h.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (k, v) = (pair.get(..eq)?, pair.get(eq + 1..)?);
            if k == name.as_bytes() {
                let v = v
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v);
                return Some(v);
            }
        }
    }
    None
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v.as_bytes())
    })
}

/// A built table over `n` endpoints.
#[derive(Debug, Clone)]
pub enum Table {
    /// Ring points, sorted by hash, with the endpoint position each maps to.
    Ring(Vec<(u64, u32)>),
    /// The Maglev lookup table.
    Maglev(Vec<u32>),
}

impl Table {
    /// Builds a table over endpoints known by stable `ids` (e.g. their hashed addresses), so
    /// that an endpoint keeps its points when others come and go.
    pub fn build(kind: TableKind, ids: &[u64]) -> Option<Table> {
        if ids.is_empty() {
            return None;
        }
        Some(match kind {
            TableKind::Ring(size) => {
                let size = size.clamp(1, MAX_TABLE);
                // Points per endpoint: Envoy's ceil(size / n), rounded up to a power of two
                // so that one endpoint more or less rarely changes everyone's points (else
                // keys of endpoints that stayed would move too).
                let per = size
                    .div_ceil(ids.len() as u64)
                    .max(1)
                    .next_power_of_two()
                    .min(MAX_TABLE);
                let mut ring = Vec::with_capacity(usize::try_from(per).unwrap_or(0) * ids.len());
                for (i, id) in ids.iter().enumerate() {
                    let i = u32::try_from(i).unwrap_or(u32::MAX);
                    for r in 0..per {
                        ring.push((mix(id ^ mix(r.wrapping_add(1))), i));
                    }
                }
                ring.sort_unstable();
                Table::Ring(ring)
            }
            TableKind::Maglev(size) => Table::Maglev(maglev(ids, size.clamp(1, MAX_TABLE))),
        })
    }

    /// The table slot of a key.
    pub fn slot(&self, key: u64) -> usize {
        match self {
            Table::Ring(r) => {
                let i = r.partition_point(|(h, _)| *h < key);
                if i == r.len() { 0 } else { i }
            }
            Table::Maglev(t) => usize::try_from(key % (t.len().max(1) as u64)).unwrap_or(0),
        }
    }

    /// The endpoint at a slot (wrapping).
    pub fn at(&self, slot: usize) -> usize {
        match self {
            Table::Ring(r) => r.get(slot % r.len().max(1)).map_or(0, |(_, i)| *i as usize),
            Table::Maglev(t) => t.get(slot % t.len().max(1)).map_or(0, |i| *i as usize),
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        match self {
            Table::Ring(r) => r.len(),
            Table::Maglev(t) => t.len(),
        }
    }

    /// Whether the table has no slots (never, for a built table).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Maglev (Eisenbud et al., NSDI 2016, as Envoy's `maglev_lb.cc`): each endpoint fills the
/// table along its own permutation, in turn.
fn maglev(ids: &[u64], m: u64) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX;
    let size = usize::try_from(m).unwrap_or(0);
    let mut table = vec![EMPTY; size];
    let perms: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| (mix(*id) % m, mix(id ^ 0x5bd1_e995) % (m - 1).max(1) + 1))
        .collect();
    let mut next = vec![0u64; ids.len()];
    let mut filled = 0usize;
    'outer: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let Some(n) = next.get_mut(i) else {
                break 'outer;
            };
            let mut c = (offset + *n * skip) % m;
            // Bounded: at most m probes per slot claimed (a permutation visits every slot
            // when m is prime).
            let mut probes = 0;
            while table.get(c as usize).is_some_and(|s| *s != EMPTY) && probes < m {
                *n += 1;
                c = (offset + *n * skip) % m;
                probes += 1;
            }
            if let Some(s) = table.get_mut(c as usize) {
                *s = u32::try_from(i).unwrap_or(0);
            }
            *n += 1;
            filled += 1;
            if filled >= size {
                break 'outer;
            }
        }
    }
    table
}

/// Whether `n` is prime (Maglev's table size must be).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}
