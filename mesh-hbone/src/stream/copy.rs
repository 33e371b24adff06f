//! The byte pump between a tunnel and a plain stream, [`copy_bidirectional`], the hot path:
//! plain → tunnel reads straight into a connection-owned `BytesMut` that is frozen and handed to
//! h2 without copying, and whose allocation is reclaimed once h2 has written it out; tunnel →
//! plain writes h2's received `Bytes` as they are. An idle tunnel holds no read buffer: after a
//! read that did not fill it the buffer is dropped, and the next one is allocated when the
//! plain side is readable again ([`PlainRead`]). The buffer starts at 1 KiB and doubles up to
//! 256 KiB (as Istio's ztunnel) while reads keep filling it, so bulk transfers make few, large
//! reads and few, large DATA frames. A buffer replaced while h2 still holds the previous one is
//! a fresh allocation: with jemalloc (the binaries' allocator) that is cheap; glibc serves
//! 256 KiB from fresh pages (measured: ~7% of proxy CPU in page faults with 256 KiB buffers, so
//! a glibc build is faster with 64 KiB). Half-close is carried both ways: EOF on the plain side
//! ends the HTTP/2 stream (END_STREAM), and the end of the HTTP/2 stream shuts down the plain
//! side's write half. How the tunnel's end is read and signalled: see the parent module.

use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ready::PlainRead;
use super::tunnel::{H2Stream, Stop, graceful, graceful_end, h2_to_io, reset_io, stopped};

const INITIAL_BUF: usize = 1024;
const MAX_BUF: usize = 256 * 1024;
/// How long a tunnel whose plain peer went away after sending everything is kept open, its
/// incoming bytes discarded, so that what that peer sent leaves h2's queue before the stream
/// ends (resetting it would discard the queue).
const DRAIN: Duration = Duration::from_secs(1);
/// How long plain bytes are read and discarded after the tunnel's peer stopped them, once the
/// other direction is done: closing a socket with unread bytes resets it, which can destroy
/// the end of what was just written to it.
const LINGER: Duration = Duration::from_secs(1);

/// Bytes moved by [`copy_bidirectional`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes read from the plain side and sent into the tunnel.
    pub plain_to_tunnel: u64,
    /// Bytes received from the tunnel and written to the plain side.
    pub tunnel_to_plain: u64,
}

/// Running byte counts of a tunnel, updated as bytes flow (not only at close).
pub trait ByteCounter: Send + Sync {
    /// `n` bytes went from the plain side into the tunnel.
    fn plain_to_tunnel(&self, n: u64);
    /// `n` bytes came out of the tunnel to the plain side.
    fn tunnel_to_plain(&self, n: u64);
}

impl ByteCounter for () {
    fn plain_to_tunnel(&self, _n: u64) {}
    fn tunnel_to_plain(&self, _n: u64) {}
}

/// Copies bytes both ways between a plain stream, given as its read and write halves (e.g.
/// `TcpStream::split`, which needs no lock), and `tunnel`, until both directions have ended,
/// carrying half-close across. Returns the byte counts, or the first error, after which the
/// tunnel has been reset (`CONNECT_ERROR`) and the caller must reset the plain connection
/// (`SO_LINGER` 0, then close) so that its peer sees the failure, not a clean end. The tunnel
/// is also reset if the copy is cancelled (dropped) before it ends.
///
/// A graceful reset by the tunnel's peer (`NO_ERROR`, `CANCEL`) is no error: bytes received
/// before it are written out and the plain side half-closed, and what the plain side still
/// sends is read and discarded. A plain peer that goes away after sending everything (its
/// EOF, then a failed write to it) is no error either: the tunnel is kept until its peer ends
/// it (at most a second), so that what was queued is flushed, not reset away.
pub async fn copy_bidirectional<R, W>(
    r: &mut R,
    w: &mut W,
    mut tunnel: H2Stream,
    counter: &dyn ByteCounter,
) -> Result<CopyStats, io::Error>
where
    R: PlainRead,
    W: AsyncWrite + Unpin,
{
    tunnel.reset_on_drop = true;
    let pending = std::mem::take(&mut tunnel.read_buf);
    let shared = Shared {
        plain_done: AtomicBool::new(false),
        stopped_at: AtomicU64::new(u64::MAX),
        stopped: tokio::sync::Notify::new(),
    };
    let (up_total, down_result) = {
        let t = &mut tunnel;
        let flags = &shared;
        let mut up = pin!(plain_to_tunnel(
            r,
            &mut t.send,
            counter,
            flags,
            t.stall_timeout
        ));
        let mut down = pin!(tunnel_to_plain(
            &mut t.recv,
            pending,
            t.recv_eof,
            w,
            counter,
            &shared.plain_done
        ));
        let (mut up_result, mut down_result) = (None, None);
        // Both directions run to their end; the first error ends the copy (the tunnel is
        // then reset when dropped).
        while down_result.is_none() {
            tokio::select! {
                r = &mut up, if up_result.is_none() => up_result = Some(r?),
                r = &mut down => down_result = Some(r?),
            }
        }
        let up_total = match up_result {
            Some(Up::Sent(n) | Up::Stopped(n)) => n,
            // Half-closed by the tunnel's peer: the plain side may send on for as long as it
            // likes, unless the tunnel's peer stopped its bytes (now, or later): they are then
            // discarded, for a little time, so that closing does not reset the plain side.
            None => {
                let linger = async {
                    shared.stopped.notified().await;
                    tokio::time::sleep(LINGER).await;
                };
                tokio::select! {
                    r = &mut up => match r? {
                        Up::Sent(n) | Up::Stopped(n) => n,
                    },
                    () = linger => shared.stopped_at.load(Ordering::Relaxed),
                }
            }
        };
        (up_total, down_result)
    };
    let down_total = match down_result {
        Some(Down::Done(n)) => n,
        Some(Down::PlainGone(n, e)) => {
            // The plain peer closed after sending everything: discard the tunnel's bytes
            // until its peer ends it, so that our END_STREAM and the bytes before it, still
            // queued in h2, are flushed rather than reset away.
            match tokio::time::timeout(DRAIN, discard(&mut tunnel.recv)).await {
                Ok(true) => n,
                Ok(false) | Err(_) => return Err(e),
            }
        }
        None => 0,
    };
    // Ended cleanly (END_STREAM sent, or stopped by the peer): no reset when dropped, which
    // would discard our END_STREAM if still queued.
    tunnel.reset_on_drop = false;
    tunnel.eos_sent = true;
    Ok(CopyStats {
        plain_to_tunnel: up_total,
        tunnel_to_plain: down_total,
    })
}

/// State the two directions of [`copy_bidirectional`] share.
struct Shared {
    /// Set once the plain side's EOF went into the tunnel as END_STREAM.
    plain_done: AtomicBool,
    /// The bytes sent before the tunnel's peer stopped them; `u64::MAX` while it has not.
    stopped_at: AtomicU64,
    /// Notified when the tunnel's peer stopped them.
    stopped: tokio::sync::Notify,
}

/// How the plain → tunnel direction ended.
enum Up {
    /// EOF, sent on as END_STREAM; the bytes sent.
    Sent(u64),
    /// The tunnel's peer stopped it without error; the bytes sent before. Plain bytes read
    /// after that were discarded until the plain side's EOF.
    Stopped(u64),
}

/// How the tunnel → plain direction ended.
enum Down {
    /// END_STREAM (or a graceful reset), passed on as a half-close; the bytes written.
    Done(u64),
    /// Writing to the plain side failed after its EOF: its peer went away; the bytes
    /// written before.
    PlainGone(u64, io::Error),
}

async fn plain_to_tunnel<R: PlainRead>(
    r: &mut R,
    send: &mut SendStream<Bytes>,
    counter: &dyn ByteCounter,
    shared: &Shared,
    stall_timeout: Option<Duration>,
) -> io::Result<Up> {
    let mut buf = BytesMut::new();
    let mut size = INITIAL_BUF;
    let mut total = 0u64;
    // After a read that did not fill the buffer the plain side has nothing more for now: the
    // buffer is dropped and the next read waits for readiness first, so an idle tunnel holds
    // no read buffer. A full read keeps the bulk path reading at once.
    let mut idle = true;
    loop {
        let read = async {
            if idle {
                buf = BytesMut::new();
                std::future::poll_fn(|cx| r.poll_read_ready(cx)).await?;
            }
            buf.reserve(size);
            r.read_buf(&mut buf).await
        };
        let n = tokio::select! {
            biased;
            r = read => r?,
            // The peer reset the stream while we wait for plain bytes: stop reading.
            reason = std::future::poll_fn(|cx| send.poll_reset(cx)) => {
                return match reason {
                    Ok(reason) if graceful(reason) => discard_plain(r, total, shared).await,
                    Ok(reason) => Err(reset_io(reason)),
                    Err(e) => Err(h2_to_io(e)),
                };
            }
        };
        if n == 0 {
            if send.send_data(Bytes::new(), true).is_err() {
                return stop(send, r, total, shared).await;
            }
            shared.plain_done.store(true, Ordering::Relaxed);
            return Ok(Up::Sent(total));
        }
        idle = n < size;
        if n >= size && size < MAX_BUF {
            size *= 2;
        }
        total += n as u64;
        counter.plain_to_tunnel(n as u64);
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let cap = std::future::poll_fn(|cx| send.poll_capacity(cx));
            // A peer that keeps its window closed is cut; the timer is armed only when
            // capacity is not there at once.
            let cap = match stall_timeout {
                Some(t) => tokio::time::timeout(t, cap).await.map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "peer's window stayed closed")
                })?,
                None => cap.await,
            };
            match cap {
                Some(Ok(0)) => continue,
                Some(Ok(cap)) => {
                    let part = chunk.split_to(cap.min(chunk.len()));
                    if send.send_data(part, false).is_err() {
                        return stop(send, r, total, shared).await;
                    }
                }
                Some(Err(_)) | None => return stop(send, r, total, shared).await,
            }
        }
    }
}

/// After a failed send: a graceful reset by the peer stops this direction (the rest of the
/// plain bytes are discarded), anything else is the error.
async fn stop<R: AsyncRead + Unpin>(
    send: &mut SendStream<Bytes>,
    r: &mut R,
    total: u64,
    shared: &Shared,
) -> io::Result<Up> {
    match stopped(send) {
        Stop::Graceful => discard_plain(r, total, shared).await,
        Stop::Failed(e) => Err(e),
    }
}

/// Reads and discards the plain side until its EOF (or error): its peer may still be sending
/// (a request body the server does not want), and must neither block nor be reset.
async fn discard_plain<R: AsyncRead + Unpin>(
    r: &mut R,
    total: u64,
    shared: &Shared,
) -> io::Result<Up> {
    shared.stopped_at.store(total, Ordering::Relaxed);
    shared.stopped.notify_one();
    // On the heap: an array here would be part of every tunnel's future, for its whole life.
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    Ok(Up::Stopped(total))
}

/// Discards the tunnel's bytes until its peer ends the stream: `true` if it ended without
/// error.
async fn discard(recv: &mut RecvStream) -> bool {
    loop {
        match recv.data().await {
            Some(Ok(chunk)) => {
                let _ = recv.flow_control().release_capacity(chunk.len());
            }
            Some(Err(e)) => return graceful_end(&e),
            None => return true,
        }
    }
}

async fn tunnel_to_plain<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    pending: Bytes,
    eof: bool,
    w: &mut W,
    counter: &dyn ByteCounter,
    plain_done: &AtomicBool,
) -> io::Result<Down> {
    // A failed write to a plain side that already sent its EOF: its peer closed; otherwise
    // an error.
    let gone = |total: u64, e: io::Error| {
        if plain_done.load(Ordering::Relaxed) {
            Ok(Down::PlainGone(total, e))
        } else {
            Err(e)
        }
    };
    let mut total = 0u64;
    if !pending.is_empty() {
        let n = pending.len();
        if let Err(e) = w.write_all(&pending).await {
            return gone(total, e);
        }
        let _ = recv.flow_control().release_capacity(n);
        total += n as u64;
        counter.tunnel_to_plain(n as u64);
    }
    if !eof {
        while let Some(chunk) = recv.data().await {
            let chunk = match chunk {
                Ok(c) => c,
                // Reset without error after its data: the end of the stream (Istio's reading).
                Err(e) if graceful_end(&e) => break,
                Err(e) => return Err(h2_to_io(e)),
            };
            let n = chunk.len();
            if let Err(e) = w.write_all(&chunk).await {
                return gone(total, e);
            }
            let _ = recv.flow_control().release_capacity(n);
            total += n as u64;
            counter.tunnel_to_plain(n as u64);
        }
    }
    // Half-close: the tunnel's sender finished, so finish our write side of the plain stream.
    // The plain peer may already have closed completely; the transfer is still complete.
    match w.shutdown().await {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => gone(total, e),
        _ => Ok(Down::Done(total)),
    }
}
