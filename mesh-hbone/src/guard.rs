//! A guard on the HTTP/2 frames a peer sends, between TLS and h2: it reads only the 9-byte
//! frame headers as bytes pass (no copy, no allocation but a small ring of recent stream ids)
//! and counts what h2 leaves unbounded or bounds too late:
//!
//! - the bytes of one header block (HEADERS + CONTINUATION): a CONTINUATION flood is stopped at
//!   the header list cap, before h2 buffers it (h2 allows up to 1.25 × cap / frame size frames
//!   of any size);
//! - frames that carry nothing (empty DATA, HEADERS, CONTINUATION, PRIORITY, unknown types),
//!   consecutively, as Envoy's `max_consecutive_inbound_frames_with_empty_payload`;
//! - rapid reset (CVE-2023-44487): streams the peer resets within a second of opening them,
//!   as Envoy's premature-reset check. h2 counts only streams reset before they were accepted;
//!   an HBONE server accepts at once and starts an upstream connect, so that misses the attack.
//!
//! The parser ([`Parser`]) is sans-IO. When it trips, the reader stops handing bytes to h2
//! (they are dropped) and the [`Tripwire`] tells the connection's owner, which sends GOAWAY
//! `ENHANCE_YOUR_CALM` and closes.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{FloodKind, H2Settings};

const PREFACE_LEN: usize = 24;
/// A reset this soon after its stream opened counts as premature (Envoy: 1 s).
const PREMATURE: Duration = Duration::from_secs(1);
/// Streams remembered for the premature-reset check. Resets follow their HEADERS closely in
/// an attack; 256 × 16 bytes bounds the memory whatever the stream rate.
const RECENT_STREAMS: usize = 256;
/// Slack over the header list cap for a header block's padding and priority fields.
const BLOCK_SLACK: usize = 1024;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const PUSH_PROMISE: u8 = 5;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// We accept streams: the peer starts with the connection preface and opens streams.
    Server,
    /// We open streams; the peer's resets are answers, not attacks.
    Client,
}

/// The limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_block: usize,
    pub(crate) max_empty: u32,
    /// 0: no rapid-reset check.
    pub(crate) max_premature: u32,
}

impl Limits {
    pub(crate) fn new(s: &H2Settings, role: Role) -> Self {
        Limits {
            max_block: s.max_header_list_size as usize + BLOCK_SLACK,
            max_empty: s.max_empty_frames,
            max_premature: match role {
                Role::Server => s.max_premature_resets,
                Role::Client => 0,
            },
        }
    }
}

/// The sans-IO frame-header parser and counters.
#[derive(Debug)]
pub(crate) struct Parser {
    limits: Limits,
    preface_left: usize,
    head: [u8; 9],
    head_len: usize,
    payload_left: usize,
    /// Frames seen so far.
    pub(crate) frames: u64,
    block: usize,
    empty: u32,
    opened: u64,
    last_opened: u32,
    recent: VecDeque<(u32, Instant)>,
    premature: u64,
}

impl Parser {
    pub(crate) fn new(limits: Limits, role: Role) -> Self {
        Parser {
            limits,
            preface_left: if role == Role::Server { PREFACE_LEN } else { 0 },
            head: [0; 9],
            head_len: 0,
            payload_left: 0,
            frames: 0,
            block: 0,
            empty: 0,
            opened: 0,
            last_opened: 0,
            recent: VecDeque::new(),
            premature: 0,
        }
    }

    /// Takes the next bytes the peer sent; `now` is read only for stream opens and resets.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        now: impl Fn() -> Instant,
    ) -> Result<(), FloodKind> {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len == 9 {
                    self.head_len = 0;
                    let h = self.head;
                    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    self.payload_left = len;
                    self.frame(len, h[3], h[4], id, &now)?;
                }
            }
        }
        Ok(())
    }

    fn frame(
        &mut self,
        len: usize,
        kind: u8,
        flags: u8,
        id: u32,
        now: &impl Fn() -> Instant,
    ) -> Result<(), FloodKind> {
        self.frames += 1;
        let carries_nothing = match kind {
            DATA => len == 0 && flags & END_STREAM == 0,
            HEADERS | PUSH_PROMISE | CONTINUATION => len == 0,
            PRIORITY => true,
            k if k > CONTINUATION => true,
            _ => false,
        };
        if carries_nothing {
            self.empty += 1;
            if self.empty > self.limits.max_empty {
                return Err(FloodKind::EmptyFrames);
            }
        } else if matches!(kind, DATA | HEADERS) {
            self.empty = 0;
        }
        match kind {
            HEADERS | PUSH_PROMISE => {
                self.block = len;
                if kind == HEADERS && self.limits.max_premature > 0 && id > self.last_opened {
                    self.opened_stream(id, now());
                }
            }
            CONTINUATION => self.block = self.block.saturating_add(len),
            RST_STREAM if self.limits.max_premature > 0 => return self.reset(id, now()),
            _ => {}
        }
        if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
            if self.block > self.limits.max_block {
                return Err(FloodKind::HeaderBlock);
            }
            if flags & END_HEADERS != 0 {
                self.block = 0;
            }
        }
        Ok(())
    }

    fn opened_stream(&mut self, id: u32, now: Instant) {
        self.opened += 1;
        self.last_opened = id;
        if self.recent.len() == RECENT_STREAMS {
            self.recent.pop_front();
        }
        self.recent.push_back((id, now));
    }

    fn reset(&mut self, id: u32, now: Instant) -> Result<(), FloodKind> {
        // Stream ids only grow, so the ring is sorted.
        if let Ok(i) = self.recent.binary_search_by_key(&id, |e| e.0) {
            let opened_at = self.recent[i].1;
            self.recent.remove(i);
            if now.saturating_duration_since(opened_at) < PREMATURE {
                self.premature += 1;
            }
        }
        if self.premature >= u64::from(self.limits.max_premature)
            && self.premature * 2 > self.opened
        {
            return Err(FloodKind::RapidReset);
        }
        Ok(())
    }
}

/// Shared between a [`FrameGuard`] and the connection's owner.
#[derive(Debug, Default)]
pub(crate) struct Tripwire {
    token: CancellationToken,
    what: OnceLock<(FloodKind, u64)>,
}

impl Tripwire {
    /// Resolves once the guard tripped. Cancellation safe.
    pub(crate) async fn tripped(&self) {
        self.token.cancelled().await;
    }

    /// The limit broken and the frames seen until then.
    pub(crate) fn what(&self) -> Option<(FloodKind, u64)> {
        self.what.get().copied()
    }

    fn trip(&self, kind: FloodKind, frames: u64) {
        let _ = self.what.set((kind, frames));
        self.token.cancel();
    }
}

/// The transport under h2, with the guard on its read side; writes pass through.
#[derive(Debug)]
pub(crate) struct FrameGuard<IO> {
    io: IO,
    parser: Parser,
    trip: Arc<Tripwire>,
}

impl<IO> FrameGuard<IO> {
    pub(crate) fn new(io: IO, settings: &H2Settings, role: Role) -> (Self, Arc<Tripwire>) {
        let trip = Arc::new(Tripwire::default());
        let guard = FrameGuard {
            io,
            parser: Parser::new(Limits::new(settings, role), role),
            trip: trip.clone(),
        };
        (guard, trip)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FrameGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.trip.what().is_some() {
            // Nothing more reaches h2; the owner, woken by the tripwire, closes the connection.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Err(kind) = this.parser.feed(&buf.filled()[before..], Instant::now) {
            buf.set_filled(before);
            this.trip.trip(kind, this.parser.frames);
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FrameGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: u8, flags: u8, id: u32, len: usize) -> Vec<u8> {
        let mut f = (len as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(id.to_be_bytes());
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    fn server() -> Parser {
        Parser::new(
            Limits::new(&H2Settings::default(), Role::Server),
            Role::Server,
        )
    }

    fn preface() -> Vec<u8> {
        vec![b'P'; PREFACE_LEN]
    }

    #[test]
    fn header_block_over_the_cap_trips_on_the_frame_header() {
        let mut p = server();
        let t = Instant::now();
        p.feed(&preface(), || t).unwrap();
        p.feed(&frame(HEADERS, 0, 1, 8000), || t).unwrap();
        p.feed(&frame(CONTINUATION, 0, 1, 8000), || t).unwrap();
        // Only the header of the frame that goes over: its payload is never needed.
        let over = frame(CONTINUATION, 0, 1, 8000);
        assert_eq!(p.feed(&over[..9], || t), Err(FloodKind::HeaderBlock));
    }

    #[test]
    fn empty_frames_trip_unless_data_comes_between() {
        let mut p = server();
        let t = Instant::now();
        p.feed(&preface(), || t).unwrap();
        for _ in 0..100 {
            p.feed(&frame(DATA, 0, 1, 0), || t).unwrap();
        }
        p.feed(&frame(DATA, 0, 1, 10), || t).unwrap();
        for _ in 0..100 {
            p.feed(&frame(PRIORITY, 0, 1, 5), || t).unwrap();
        }
        assert_eq!(
            p.feed(&frame(0x20, 0, 0, 0), || t),
            Err(FloodKind::EmptyFrames)
        );
        // The end of a stream is not empty.
        let mut p = server();
        p.feed(&preface(), || t).unwrap();
        for _ in 0..1000 {
            p.feed(&frame(DATA, END_STREAM, 1, 0), || t).unwrap();
        }
    }

    #[test]
    fn premature_resets_trip_but_late_or_rare_ones_do_not() {
        let t = Instant::now();
        let mut p = server();
        p.feed(&preface(), || t).unwrap();
        let mut tripped = None;
        for i in 0..1000u32 {
            let id = 2 * i + 1;
            p.feed(&frame(HEADERS, END_HEADERS, id, 20), || t).unwrap();
            if p.feed(&frame(RST_STREAM, 0, id, 4), || t).is_err() {
                tripped = Some(i + 1);
                break;
            }
        }
        assert_eq!(tripped, Some(100));
        // Resets after a second are not premature.
        let mut p = server();
        p.feed(&preface(), || t).unwrap();
        let later = t + Duration::from_secs(2);
        for i in 0..1000u32 {
            let id = 2 * i + 1;
            p.feed(&frame(HEADERS, END_HEADERS, id, 20), || t).unwrap();
            p.feed(&frame(RST_STREAM, 0, id, 4), || later).unwrap();
        }
        // A third of the streams reset at once: under half.
        let mut p = server();
        p.feed(&preface(), || t).unwrap();
        for i in 0..3000u32 {
            let id = 2 * i + 1;
            p.feed(&frame(HEADERS, END_HEADERS, id, 20), || t).unwrap();
            if i % 3 == 0 {
                p.feed(&frame(RST_STREAM, 0, id, 4), || t).unwrap();
            }
        }
        // A client's peer resetting its streams is no attack.
        let mut p = Parser::new(
            Limits::new(&H2Settings::default(), Role::Client),
            Role::Client,
        );
        for i in 0..1000u32 {
            p.feed(&frame(HEADERS, END_HEADERS, 2 * i + 1, 20), || t)
                .unwrap();
            p.feed(&frame(RST_STREAM, 0, 2 * i + 1, 4), || t).unwrap();
        }
    }

    proptest! {
        /// Where the byte stream is cut does not change what the parser decides.
        #[test]
        fn chunking_does_not_matter(
            frames in prop::collection::vec((0u8..12, 0u8..8, 0usize..3000), 0..200),
            cuts in prop::collection::vec(1usize..500, 1..50),
        ) {
            let t = Instant::now();
            let mut bytes = preface();
            for (i, (kind, flags, len)) in frames.iter().enumerate() {
                bytes.extend(frame(*kind, *flags, 2 * i as u32 + 1, *len));
            }
            let mut whole = server();
            let a = whole.feed(&bytes, || t);
            let mut parts = server();
            let mut rest = &bytes[..];
            let mut b = Ok(());
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() && b.is_ok() {
                let n = (*cut.next().unwrap_or(&1)).min(rest.len());
                b = parts.feed(&rest[..n], || t);
                rest = &rest[n..];
            }
            prop_assert_eq!(a, b);
            prop_assert_eq!(whole.frames, parts.frames);
        }

        /// Legitimate traffic (requests under the cap, data, window updates) never trips.
        #[test]
        fn legitimate_traffic_never_trips(
            streams in prop::collection::vec((1usize..4000, prop::collection::vec(1usize..20000, 0..5)), 1..300),
        ) {
            let t = Instant::now();
            let mut p = server();
            p.feed(&preface(), || t).unwrap();
            for (i, (hdr, data)) in streams.iter().enumerate() {
                let id = 2 * i as u32 + 1;
                prop_assert!(p.feed(&frame(HEADERS, END_HEADERS, id, *hdr), || t).is_ok());
                for d in data {
                    prop_assert!(p.feed(&frame(DATA, 0, id, *d), || t).is_ok());
                    prop_assert!(p.feed(&frame(8, 0, id, 4), || t).is_ok());
                }
                prop_assert!(p.feed(&frame(DATA, END_STREAM, id, 0), || t).is_ok());
            }
        }
    }
}
