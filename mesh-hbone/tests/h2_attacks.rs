//! HTTP/2 attacks on the HBONE server, written as the raw frames an attacker sends (as Envoy's
//! `http2_flood_integration_test.cc`): each is closed or refused within its limit, and 100 good
//! connections opened alongside all succeed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/raw_h2.rs"]
mod raw_h2;
#[path = "support/server.rs"]
mod server;

use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_hbone::{DEFAULT_MAX_HEADER_LIST_SIZE, Error, FloodKind, H2Settings};
use raw_h2::*;

const WAIT: Duration = Duration::from_secs(5);

async fn attacker(s: &server::Server) -> Attacker {
    Attacker::connect(s.addr, s.client.clone(), &s.bundle, &s.server_id, true).await
}

fn flood_kind(r: &Option<Result<(), Error>>) -> Option<(FloodKind, u64)> {
    match r {
        Some(Err(Error::Flood { kind, frames })) => Some((*kind, *frames)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_closed_within_500_streams() {
    // Every attack stream is accepted and its handler started (an upstream connect of 50 ms)
    // before the attacker resets it: the worst case, which h2's pending-accept limit misses.
    let s = server::start(H2Settings::default(), Duration::from_millis(50)).await;
    let mut a = attacker(&s).await;
    let attack = async {
        let mut streams = 0u32;
        while streams < 1000 && !a.closed() {
            let id = 2 * streams + 1;
            let mut f = frame(HEADERS, END_HEADERS, id, &hpack::connect(server::SINK));
            if a.send(&f).await.is_err() {
                break;
            }
            streams += 1;
            let accepted = streams as usize;
            for _ in 0..200 {
                if s.sunk.load(Ordering::SeqCst) >= accepted || a.closed() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            f = rst_stream(id, CANCEL);
            if a.send(&f).await.is_err() {
                break;
            }
        }
        let open = a.is_open(WAIT).await;
        (streams, open)
    };
    let ((streams, open), good) = tokio::join!(attack, s.good_connections(100));
    assert!(!open, "still open after {streams} rapid resets");
    let outcome = s.outcome(a.local, WAIT).await;
    eprintln!(
        "rapid reset: closed after {streams} streams, {} handlers started, outcome {outcome:?}",
        s.sunk.load(Ordering::SeqCst)
    );
    assert!(streams <= 500, "closed only after {streams} streams");
    assert_eq!(
        flood_kind(&outcome).map(|f| f.0),
        Some(FloodKind::RapidReset)
    );
    assert_eq!(good, 100, "good connections alongside the attack");
}

/// A header block whose one literal claims 1 MiB, continued in `chunk`-byte CONTINUATIONs:
/// block bytes sent until the server closed.
async fn continuation_flood(s: &server::Server, chunk: usize) -> usize {
    let mut a = attacker(s).await;
    let mut block = hpack::connect(server::SINK);
    block.push(0x00);
    hpack::string(&mut block, b"x-flood");
    hpack::int(&mut block, 7, 0, 1 << 20);
    let mut sent = block.len();
    a.send(&frame(HEADERS, 0, 1, &block)).await.unwrap();
    let filler = vec![b'a'; chunk];
    while sent < (1 << 20) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if a.closed() || a.send(&frame(CONTINUATION, 0, 1, &filler)).await.is_err() {
            break;
        }
        sent += chunk;
    }
    assert!(
        a.wait_for(WAIT, Seen::closed).await,
        "still open after a {sent}-byte header block"
    );
    let outcome = s.outcome(a.local, WAIT).await;
    // The server reports the frames it saw, the one that broke the limit included: our SETTINGS
    // and its ACK, the HEADERS, then CONTINUATIONs. Without that count, what we sent.
    let block = match flood_kind(&outcome) {
        Some((_, frames)) => block.len() + (frames as usize - 3) * chunk,
        None => sent,
    };
    eprintln!(
        "CONTINUATION flood ({chunk}-byte frames): {sent} block bytes sent, closed at {block}, \
         {outcome:?}"
    );
    block
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_closed_before_twice_the_header_cap() {
    let s = server::start(H2Settings::default(), Duration::ZERO).await;
    let cap = DEFAULT_MAX_HEADER_LIST_SIZE as usize;
    let attack = async {
        let small = continuation_flood(&s, 4096).await;
        let large = continuation_flood(&s, 8192).await;
        (small, large)
    };
    let ((small, large), good) = tokio::join!(attack, s.good_connections(100));
    assert!(small < 2 * cap, "4 KiB frames: {small} bytes buffered");
    assert!(large < 2 * cap, "8 KiB frames: {large} bytes buffered");
    assert_eq!(
        s.sunk.load(Ordering::SeqCst),
        0,
        "no flood request was served"
    );
    assert_eq!(good, 100, "good connections alongside the attack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bomb_is_refused_by_decoded_size_cap() {
    // One 4 KB header enters the dynamic table, then 3500 one-byte references to it: a 14 KB
    // block that decodes to 14 MB of headers (under h2's 16 MiB default).
    let s = server::start(H2Settings::default(), Duration::from_secs(30)).await;
    let mut block = hpack::connect(server::SINK);
    hpack::insert(&mut block, b"x-bomb", &[b'b'; 4000]);
    for _ in 0..3500 {
        hpack::indexed(&mut block, 62);
    }
    assert!(block.len() < DEFAULT_MAX_HEADER_LIST_SIZE as usize);
    let attack = async {
        let mut a = attacker(&s).await;
        let mut refused = 0;
        for i in 0..20u32 {
            let id = 2 * i + 1;
            if a.send(&frame(HEADERS, END_HEADERS, id, &block))
                .await
                .is_err()
            {
                break;
            }
            a.wait_for(WAIT, |seen| {
                seen.closed() || seen.resets.iter().any(|r| r.0 == id)
            })
            .await;
            if a.closed() {
                break;
            }
            refused += 1;
        }
        (a.closed(), refused, a.seen().goaway)
    };
    let ((closed, refused, goaway), good) = tokio::join!(attack, s.good_connections(100));
    eprintln!("HPACK bomb: closed {closed}, goaway {goaway:?}, {refused} streams refused first");
    assert_eq!(
        s.sunk.load(Ordering::SeqCst),
        0,
        "a bomb reached the handler (its headers held for the tunnel's life)"
    );
    assert!(closed, "the bomber's connection is closed");
    assert_eq!(goaway.map(|g| g.1), Some(ENHANCE_YOUR_CALM));
    assert_eq!(good, 100, "good connections alongside the attack");
}

/// Opens stream 1 to the echo app and waits for its 200.
async fn open_tunnel(s: &server::Server, a: &mut Attacker) {
    let f = frame(
        HEADERS,
        END_HEADERS,
        1,
        &hpack::connect(&s.echo.to_string()),
    );
    a.send(&f).await.unwrap();
    assert!(a.wait_for(WAIT, |seen| seen.responses.contains(&1)).await);
}

/// Sends `frame_at(i)` up to 5000 times, in batches of 10: frames sent until the server closed
/// (`None`: still open after 5000).
async fn flood(a: &mut Attacker, frame_at: impl Fn(u32) -> Vec<u8>) -> Option<u32> {
    let mut sent = 0u32;
    while sent < 5000 {
        let mut batch = Vec::new();
        for i in sent..sent + 10 {
            batch.extend(frame_at(i));
        }
        if a.send(&batch).await.is_err() {
            break;
        }
        sent += 10;
        tokio::time::sleep(Duration::from_millis(1)).await;
        if a.closed() {
            break;
        }
    }
    if a.is_open(WAIT).await {
        None
    } else {
        Some(sent)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_frame_floods_are_closed_within_1000_frames() {
    let s = server::start(H2Settings::default(), Duration::ZERO).await;
    let attack = async {
        let mut results = Vec::new();
        for variant in [
            "empty DATA",
            "empty HEADERS on new streams",
            "empty HEADERS on an open stream",
            "empty CONTINUATION",
            "PRIORITY",
            "unknown frame type",
        ] {
            let mut a = attacker(&s).await;
            let closed_after = match variant {
                "empty DATA" => {
                    open_tunnel(&s, &mut a).await;
                    flood(&mut a, |_| frame(DATA, 0, 1, &[])).await
                }
                "empty HEADERS on new streams" => {
                    flood(&mut a, |i| frame(HEADERS, END_HEADERS, 2 * i + 1, &[])).await
                }
                "empty HEADERS on an open stream" => {
                    open_tunnel(&s, &mut a).await;
                    flood(&mut a, |_| frame(HEADERS, END_HEADERS, 1, &[])).await
                }
                "empty CONTINUATION" => {
                    let f = frame(HEADERS, 0, 1, &hpack::connect(server::SINK));
                    a.send(&f).await.unwrap();
                    flood(&mut a, |_| frame(CONTINUATION, 0, 1, &[])).await
                }
                "PRIORITY" => {
                    open_tunnel(&s, &mut a).await;
                    flood(&mut a, |_| frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 15])).await
                }
                _ => flood(&mut a, |_| frame(0x20, 0, 0, &[])).await,
            };
            let outcome = s.outcome(a.local, WAIT).await;
            eprintln!("{variant}: closed after {closed_after:?} frames, {outcome:?}");
            results.push((variant, closed_after));
        }
        results
    };
    let (results, good) = tokio::join!(attack, s.good_connections(100));
    for (variant, closed_after) in results {
        let n = closed_after.unwrap_or_else(|| panic!("{variant}: open after 5000 frames"));
        assert!(n <= 1000, "{variant}: closed only after {n} frames");
    }
    assert_eq!(good, 100, "good connections alongside the attack");
}

fn short_timers() -> H2Settings {
    H2Settings {
        keepalive_interval: Duration::from_millis(300),
        keepalive_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(500),
        ..H2Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_with_unread_socket_are_closed() {
    let s = server::start(short_timers(), Duration::ZERO).await;
    for (name, f) in [
        ("PING", ping([1; 8])),
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0])),
    ] {
        let mut a =
            Attacker::connect(s.addr, s.client.clone(), &s.bundle, &s.server_id, false).await;
        // Keep a tunnel open so that only the keepalive, not the idle timer, can close it.
        let open = frame(
            HEADERS,
            END_HEADERS,
            1,
            &hpack::connect(&s.echo.to_string()),
        );
        a.send(&open).await.unwrap();
        // Each frame asks for an answer that the attacker never reads: the server must stop
        // reading (bounded memory), and then close the connection.
        let batch: Vec<u8> = std::iter::repeat_n(f, 1000).flatten().collect();
        let mut sent = 0;
        while sent < 2_000_000 && a.try_send(&batch, Duration::from_millis(200)).await {
            sent += 1000;
        }
        eprintln!("{name} flood: the server stopped reading after {sent} frames");
        assert!(
            sent < 2_000_000,
            "{name}: the server kept answering an unread socket"
        );
        let outcome = s.outcome(a.local, Duration::from_secs(5)).await;
        eprintln!("{name} flood: outcome {outcome:?}");
        assert!(
            matches!(outcome, Some(Err(Error::PingTimeout(_)))),
            "{name}: {outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_without_streams_is_closed() {
    let s = server::start(short_timers(), Duration::ZERO).await;
    let tls = raw_h2::tls(s.addr, s.client.clone(), &s.bundle, &s.server_id)
        .await
        .unwrap();
    let local = tls.get_ref().0.local_addr().unwrap();
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    // A tunnel kept busy past the idle timeout keeps its connection.
    send = send.ready().await.unwrap();
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::CONNECT;
    *req.uri_mut() = http::Uri::builder()
        .authority(s.echo.to_string())
        .build()
        .unwrap();
    let (resp, mut body_tx) = send.send_request(req, false).unwrap();
    let mut body = resp.await.unwrap().into_body();
    for _ in 0..10 {
        body_tx
            .send_data(bytes::Bytes::from_static(b"tick"), false)
            .unwrap();
        let got = body.data().await.unwrap().unwrap();
        let _ = body.flow_control().release_capacity(got.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!conn.is_finished(), "closed while a tunnel was open");
    body_tx.send_data(bytes::Bytes::new(), true).unwrap();
    while body.data().await.is_some() {}
    drop((body, body_tx));
    // Now idle (`send` is kept: h2's client would close a connection nobody can use): GOAWAY
    // and close after the idle timeout.
    let closed = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(closed.is_ok(), "idle connection still open after 3 s");
    drop(send);
    let outcome = s.outcome(local, WAIT).await;
    assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_stream_is_reset_after_idle_timeout() {
    let s = server::start(short_timers(), Duration::ZERO).await;
    let tls = raw_h2::tls(s.addr, s.client.clone(), &s.bundle, &s.server_id)
        .await
        .unwrap();
    // Our receive window is zero: the server may send nothing on the stream.
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::CONNECT;
    *req.uri_mut() = http::Uri::builder()
        .authority(s.talker.to_string())
        .build()
        .unwrap();
    let (resp, _body_tx) = send.send_request(req, false).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let started = tokio::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), body.data()).await;
    eprintln!(
        "zero window: stream ended after {:?}: {end:?}",
        started.elapsed()
    );
    let Ok(Some(Err(e))) = end else {
        panic!("the stalled stream was not reset within 5 s: {end:?}");
    };
    assert!(e.is_reset(), "{e}");
    assert!(
        !conn.is_finished(),
        "only the stream is reset, not the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_connections_alone_succeed() {
    let s = server::start(H2Settings::default(), Duration::ZERO).await;
    assert_eq!(s.good_connections(100).await, 100);
}
