//! Fuzzing the SOCKS5 parsers (`parse_greeting`, `parse_request`) and the handshake that
//! drives them, over arbitrary bytes and over valid greetings + requests with mutations.
//!
//! Properties: no panic, every call within the time bound, and
//! - a verdict is final: once a prefix of the input parses or fails, every longer input
//!   gives the same answer (the handshake decides on whatever prefix it has read);
//! - a parsed message is exactly as long as it says (`5 NMETHODS METHODS…`; the request's
//!   address type and name length), and each strict prefix of it asks for more bytes;
//! - the async handshake, fed the bytes in random chunks, ends as the pure parsers say: the
//!   same target with the following bytes kept, or the same error (`Eof` if incomplete).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/mutate.rs"]
mod mutate;

use std::net::{IpAddr, SocketAddr};

use mesh_dataplane::socks5::{Socks5Error, Target, handshake, parse_greeting, parse_request};
use proptest::prelude::*;

const DICT: &[&[u8]] = &[
    b"\x05",
    b"\x05\x01\x00",
    b"\x05\x01\x00\x01",
    b"\x05\x01\x00\x03",
    b"\x05\x01\x00\x04",
    b"\x03\xff",
    b"\x00\x50",
    b"127.0.0.1",
    b"::1",
    b"[::1]",
    b"localhost",
];

/// A greeting offering no-auth among others, then a CONNECT request, then extra bytes.
fn valid() -> impl Strategy<Value = Vec<u8>> {
    let greeting = prop::collection::vec(any::<u8>(), 0..6).prop_map(|mut m| {
        m.push(0);
        let mut g = vec![5, m.len() as u8];
        g.extend(m);
        g
    });
    let addr = prop_oneof![
        any::<IpAddr>().prop_map(|ip| match ip {
            IpAddr::V4(a) => [&[1][..], &a.octets()].concat(),
            IpAddr::V6(a) => [&[4][..], &a.octets()].concat(),
        }),
        "[a-z0-9.-]{1,40}|[0-9.:]{1,20}".prop_map(|h| {
            let mut v = vec![3, h.len() as u8];
            v.extend(h.bytes());
            v
        }),
    ];
    (
        greeting,
        addr,
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(g, a, port, extra)| {
            let mut b = g;
            b.extend([5, 1, 0]);
            b.extend(a);
            b.extend(port.to_be_bytes());
            b.extend(extra);
            b
        })
}

fn inputs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![mutate::bytes(600), mutate::mutated(valid(), DICT)]
}

fn decided<T>(r: &Result<Option<T>, Socks5Error>) -> bool {
    !matches!(r, Ok(None))
}

/// The greeting's properties on `b`; returns its length when it parsed.
fn check_greeting(b: &[u8]) -> Result<Option<usize>, TestCaseError> {
    let r = mutate::timed("parse_greeting", b.len(), || parse_greeting(b));
    if let Ok(Some(n)) = r {
        prop_assert!(b[0] == 5 && n == 2 + usize::from(b[1]) && n <= b.len());
        prop_assert!(b[2..n].contains(&0));
        for i in 0..n {
            prop_assert_eq!(parse_greeting(&b[..i]), Ok(None), "prefix {}", i);
        }
    }
    // Verdicts are final: the first decided prefix gives the answer for all of `b`.
    // Any greeting is decided within 2 + 255 bytes.
    if let Some(i) = (0..=b.len().min(300)).find(|&i| decided(&parse_greeting(&b[..i]))) {
        prop_assert_eq!(
            &parse_greeting(&b[..i]),
            &r,
            "prefix {} decided otherwise",
            i
        );
    } else {
        prop_assert_eq!(&r, &Ok(None));
    }
    Ok(r.ok().flatten())
}

/// The request's properties on `b`.
fn check_request(b: &[u8]) -> Result<(), TestCaseError> {
    let r = mutate::timed("parse_request", b.len(), || parse_request(b));
    if let Ok(Some((t, n))) = &r {
        let n = *n;
        prop_assert!(n <= b.len() && b[..3] == [5, 1, 0]);
        let want = match b[3] {
            1 => 10,
            4 => 22,
            3 => 7 + usize::from(b[4]),
            t => return Err(TestCaseError::fail(format!("parsed address type {t}"))),
        };
        prop_assert_eq!(n, want);
        let port = u16::from_be_bytes([b[n - 2], b[n - 1]]);
        match t {
            Target::Addr(a) => prop_assert_eq!(a.port(), port),
            Target::Host(h, p) => {
                prop_assert_eq!(*p, port);
                prop_assert!(!h.is_empty() && h.parse::<IpAddr>().is_err());
            }
        }
        for i in 0..n {
            prop_assert_eq!(parse_request(&b[..i]), Ok(None), "prefix {}", i);
        }
    }
    // Any request is decided within 7 + 255 bytes.
    if let Some(i) = (0..=b.len().min(300)).find(|&i| decided(&parse_request(&b[..i]))) {
        prop_assert_eq!(
            &parse_request(&b[..i]),
            &r,
            "prefix {} decided otherwise",
            i
        );
    } else {
        prop_assert_eq!(&r, &Ok(None));
    }
    Ok(())
}

/// What the handshake must return for the whole of `b` sent then closed: the target and the
/// bytes after the request (the handshake may have read only some of them).
fn expected(b: &[u8]) -> Result<(Target, &[u8]), Socks5Error> {
    let g = parse_greeting(b)?.ok_or(Socks5Error::Eof)?;
    let (t, n) = parse_request(&b[g..])?.ok_or(Socks5Error::Eof)?;
    Ok((t, &b[g + n..]))
}

/// Runs the handshake over an in-memory stream, the client writing `b` in `chunks`.
fn run_handshake(b: &[u8], chunks: &[usize]) -> Result<(Target, Vec<u8>), Socks5Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut server) = tokio::io::duplex(64);
        let server = async move { handshake(&mut server).await };
        let client = async {
            let mut rest = b;
            for c in chunks.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (now, later) = rest.split_at((*c).min(rest.len()));
                if client.write_all(now).await.is_err() {
                    break;
                }
                rest = later;
            }
            let _ = client.shutdown().await;
            // Drain the replies so the server never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        let (r, ()) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(server, client)
        })
        .await
        .expect("the handshake hung");
        r
    })
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn greeting_and_request(b in inputs()) {
        let g = check_greeting(&b)?;
        check_request(&b)?;
        if let Some(g) = g {
            check_request(&b[g..])?;
        }
    }

    #[test]
    fn handshake_ends_as_the_parsers_say(
        b in inputs(),
        chunks in prop::collection::vec(1usize..40, 1..4),
    ) {
        let got = mutate::timed("handshake", b.len(), || run_handshake(&b, &chunks));
        match (expected(&b), got) {
            (Ok((t, rest)), Ok((gt, grest))) => {
                prop_assert_eq!(gt, t);
                prop_assert!(rest.starts_with(&grest), "kept bytes are not what followed");
            }
            (Err(e), Err(ge)) => prop_assert_eq!(ge, e),
            // The parsers succeed but the handshake does not: only when the client pipelined
            // so much that the handshake's buffer cap was reached first.
            (Ok(_), Err(Socks5Error::Io(m))) if m.contains("too long") => {}
            (want, got) => prop_assert!(false, "expected {want:?}, handshake gave {got:?}"),
        }
    }

    #[test]
    fn literal_addresses_sent_as_names_are_addresses(ip in any::<IpAddr>(), port in any::<u16>()) {
        let name = ip.to_string();
        let mut b = vec![5, 1, 0, 3, name.len() as u8];
        b.extend(name.bytes());
        b.extend(port.to_be_bytes());
        let (t, n) = parse_request(&b).unwrap().unwrap();
        prop_assert_eq!(t, Target::Addr(SocketAddr::new(ip.to_canonical(), port)));
        prop_assert_eq!(n, b.len());
    }
}
