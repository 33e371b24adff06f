//! Fuzzing protocol sniffing (`classify`, private to `sniff`) over arbitrary first bytes and
//! over request lines, the HTTP/2 preface and a TLS client hello with mutations.
//!
//! Properties: no panic, each call within the time bound, and
//! - a verdict is final: once a prefix is classified, every longer input gets the same
//!   verdict (`sniff` and `peek` stop at the first verdict);
//! - "undecided" only while fewer bytes than the HTTP/2 preface were seen, so the readers,
//!   which stop there, always reach a verdict;
//! - `Http1` only for a known method followed by a space; `Http2` only for the full preface.

use proptest::prelude::*;

use super::{H2_PREFACE, METHODS, Sniffed, classify};

// The sniff and hygiene fuzz modules each include it: a test-only helper, twice is fine.
#[allow(clippy::duplicate_mod)]
#[path = "../../../../fuzz/mutate.rs"]
mod mutate;

const DICT: &[&[u8]] = &[
    b" ",
    b"GET",
    b"PRI",
    b"PRI * HTTP/2.0",
    b"\r\n\r\nSM\r\n\r\n",
    b"HTTP/1.1",
    b"\x16\x03\x01",
    b"CONNECT",
    b"get",
];

fn seeds() -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = METHODS
        .iter()
        .map(|m| [*m, b" /x HTTP/1.1\r\n".as_slice()].concat())
        .collect();
    s.push(H2_PREFACE.to_vec());
    s.push(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec());
    s
}

fn check(b: &[u8]) -> Result<(), TestCaseError> {
    let v = mutate::timed("classify", b.len(), || classify(b));
    match v {
        None => prop_assert!(
            b.len() < H2_PREFACE.len(),
            "undecided after {} bytes",
            b.len()
        ),
        Some(Sniffed::Http2) => prop_assert!(b.starts_with(H2_PREFACE)),
        Some(Sniffed::Http1) => {
            let sp = b.iter().position(|c| *c == b' ');
            prop_assert!(sp.is_some_and(|i| METHODS.contains(&&b[..i])), "{:?}", b);
        }
        Some(Sniffed::Tcp) => {}
    }
    // A prefix as long as the preface is always decided (checked above).
    let decided = (0..=b.len().min(H2_PREFACE.len())).find(|&i| classify(&b[..i]).is_some());
    if let Some(i) = decided {
        prop_assert_eq!(
            classify(&b[..i]),
            v,
            "prefix {} decided otherwise for {:?}",
            i,
            b
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn arbitrary_first_bytes(b in mutate::bytes(64)) {
        check(&b)?;
    }

    #[test]
    fn near_valid_first_bytes(b in mutate::near(seeds(), DICT)) {
        check(&b)?;
    }

    #[test]
    fn methods_are_http1(m in prop::sample::select(METHODS), rest in mutate::bytes(40)) {
        let b = [m, b" ".as_slice(), &rest].concat();
        prop_assert_eq!(classify(&b), Some(Sniffed::Http1));
        check(&b)?;
    }
}
