//! Shared by the property-based fuzz targets on the stable toolchain (`*/tests/fuzz_*.rs`
//! and the `fuzz` submodules of private parsers), each of which includes this file with
//! `#[path = "…/fuzz/mutate.rs"] mod mutate;`, so no crate depends on another for it.
//!
//! - [`config`]: 64 cases per property under `cargo test`; `PROPTEST_CASES` wins when set
//!   (`scripts/fuzz.sh` sets it large). `ProptestConfig::with_cases` alone would override
//!   the environment, since proptest reads the variables in `Config::default()`.
//! - [`bytes`]: arbitrary bytes, biased to bytes that are syntax somewhere (`%`, `/`, `"`, …).
//! - [`mutated`] / [`near`]: near-valid inputs, a valid seed with 1–7 mutations (bit flips,
//!   overwrites, insertions of random bytes or dictionary tokens, deletions, truncation, and
//!   a chunk repeated up to [`MAX_LEN`] bytes, which is what finds super-linear parsers).
//! - [`timed`]: every call must finish within [`time_bound`] (50 ms in release, 1 s in debug,
//!   `FUZZ_MAX_MS` overrides): parsers must be linear in their input.

// Wall-clock time of synchronous parser calls is what is measured: no tokio runtime or
// paused clock is involved, so `std::time::Instant` is the right clock here. Each target
// uses only some of the helpers.
#![allow(dead_code, clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;

/// Cases per property under plain `cargo test`.
pub(crate) const CASES: u32 = 64;

/// Largest input a mutation grows (a repeated chunk stops there).
pub(crate) const MAX_LEN: usize = 64 * 1024;

/// The proptest config of every fuzz target: [`CASES`], or `PROPTEST_CASES` when set.
pub(crate) fn config() -> ProptestConfig {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        // `Config::default()` has already applied PROPTEST_CASES (and the other variables).
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(CASES)
    }
}

/// The longest a single parser call may take: `FUZZ_MAX_MS`, else 50 ms in release and 1 s
/// in debug builds (unoptimized serde and YAML code is ~20x slower).
pub(crate) fn time_bound() -> Duration {
    std::env::var("FUZZ_MAX_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(if cfg!(debug_assertions) {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(50)
        })
}

/// Runs `f` and asserts that it took at most [`time_bound`]. A slow call is repeated twice and
/// the fastest run counts: a thread descheduled on a busy machine is not a failure, a parser
/// that is slow every time is.
#[track_caller]
pub(crate) fn timed<T>(what: &str, input_len: usize, mut f: impl FnMut() -> T) -> T {
    let bound = time_bound();
    let start = Instant::now();
    let out = f();
    let mut best = start.elapsed();
    for _ in 0..2 {
        if best <= bound {
            break;
        }
        let start = Instant::now();
        let _ = f();
        best = best.min(start.elapsed());
    }
    assert!(
        best <= bound,
        "{what}: {best:?} for {input_len} input bytes (bound {bound:?}): not linear?"
    );
    out
}

/// Bytes that are syntax in one of our formats, or break UTF-8, or end lines.
const INTERESTING: &[u8] = b"\0\x01\x7f\x80\xc3\xff \t\r\n\"'\\/%.,;:=-_#?&*[]{}()<>@!|~+";

/// Tokens every target may insert: escapes, separators, broken and exotic UTF-8.
const COMMON: &[&[u8]] = &[
    b"%00",
    b"%",
    b"%2F",
    b"%5c",
    b"%zz",
    b"..",
    b"//",
    b"\r\n",
    b"\"\"",
    b"\xef\xbb\xbf",
    b"\xc3\xa9",
    b"\xf4\x8f\xbf\xbf",
    b"\xe2\x82",
    b"0",
    b"-1",
    b"18446744073709551616",
];

/// A byte: any, or one of [`INTERESTING`].
pub(crate) fn byte() -> impl Strategy<Value = u8> + Clone {
    prop_oneof![any::<u8>(), prop::sample::select(INTERESTING)]
}

/// Up to `max` arbitrary bytes.
pub(crate) fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> + Clone {
    prop::collection::vec(byte(), 0..max)
}

/// One change to an input. Positions are [`Index`]es, resolved against the input's length
/// when applied.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    /// Flip one bit.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Delete up to this many bytes.
    Delete(Index, usize),
    /// Cut the input here.
    Truncate(Index),
    /// Copy a chunk (`from`, up to `len` bytes) `times` times at `to`, up to [`MAX_LEN`].
    Repeat {
        /// Chunk start.
        from: Index,
        /// Chunk length.
        len: usize,
        /// Copies.
        times: usize,
        /// Where the copies go.
        to: Index,
    },
}

/// A mutation inserting random bytes, [`COMMON`] tokens or tokens of `dict` (non-empty).
pub(crate) fn mutation(dict: &'static [&'static [u8]]) -> impl Strategy<Value = Mutation> {
    let insert = prop_oneof![
        1 => prop::collection::vec(byte(), 1..8),
        1 => prop::sample::select(COMMON).prop_map(<[u8]>::to_vec),
        2 => prop::sample::select(dict).prop_map(<[u8]>::to_vec),
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), byte()).prop_map(|(i, b)| Mutation::Set(i, b)),
        4 => (any::<Index>(), insert).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..64, 1usize..4096, any::<Index>())
            .prop_map(|(from, len, times, to)| Mutation::Repeat { from, len, times, to }),
    ]
}

/// Applies `ms` to `b` in order.
pub(crate) fn apply(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = b.len();
        match m {
            Mutation::Flip(i, bit) if n > 0 => b[i.index(n)] ^= 1 << (bit % 8),
            Mutation::Set(i, v) if n > 0 => b[i.index(n)] = *v,
            Mutation::Insert(i, ins) => {
                let at = i.index(n + 1);
                b.splice(at..at, ins.iter().copied());
            }
            Mutation::Delete(i, len) if n > 0 => {
                let at = i.index(n);
                b.drain(at..(at + len).min(n));
            }
            Mutation::Truncate(i) => b.truncate(i.index(n + 1)),
            Mutation::Repeat {
                from,
                len,
                times,
                to,
            } if n > 0 => {
                let at = from.index(n);
                let chunk = b[at..(at + len).min(n)].to_vec();
                let times = (*times).min(MAX_LEN.saturating_sub(n) / chunk.len());
                let to = to.index(n + 1);
                b.splice(to..to, chunk.repeat(times));
            }
            _ => {}
        }
    }
    b
}

/// A seed from `seed` changed by 1–7 mutations (tokens from `dict`, non-empty).
pub(crate) fn mutated(
    seed: impl Strategy<Value = Vec<u8>>,
    dict: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    (seed, prop::collection::vec(mutation(dict), 1..8)).prop_map(|(s, ms)| apply(s, &ms))
}

/// One of `seeds` (non-empty) changed by 1–7 mutations.
pub(crate) fn near(
    seeds: Vec<Vec<u8>>,
    dict: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    mutated(prop::sample::select(seeds), dict)
}

/// `b` as text (invalid UTF-8 replaced), for parsers that take `&str`.
pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
