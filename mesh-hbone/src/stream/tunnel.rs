//! The tunnel type, [`H2Stream`]: one HTTP/2 CONNECT stream as an `AsyncRead`/`AsyncWrite`,
//! and the helpers that read how it ended (shared with the byte pump in the sibling `copy`
//! module). How a tunnel ends: see the parent module.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Something kept alive as long as a stream: the pool's per-connection stream slot.
pub(crate) trait Guard: Send + Sync {}
impl<T: Send + Sync> Guard for T {}

/// An established HBONE tunnel. Implements `AsyncRead`/`AsyncWrite` for general use; prefer
/// [`copy_bidirectional`](super::copy_bidirectional) to shuttle bytes to a plain stream without
/// extra copies.
pub struct H2Stream {
    pub(super) send: SendStream<Bytes>,
    pub(super) recv: RecvStream,
    pub(super) read_buf: Bytes,
    write_buf: BytesMut,
    pub(super) recv_eof: bool,
    pub(super) eos_sent: bool,
    /// The peer reset the stream without error: it wants no more bytes; writes are discarded.
    send_stopped: bool,
    /// Reset with `CONNECT_ERROR` when dropped, even after END_STREAM: set while
    /// [`copy_bidirectional`](super::copy_bidirectional) runs, so a copy cut short (cancelled)
    /// looks cut.
    pub(super) reset_on_drop: bool,
    _guard: Option<Box<dyn Guard>>,
    /// See [`H2Stream::with_stall_timeout`].
    pub(super) stall_timeout: Option<Duration>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<Box<dyn Guard>>,
    ) -> Self {
        H2Stream {
            send,
            recv,
            read_buf: Bytes::new(),
            write_buf: BytesMut::new(),
            recv_eof: false,
            eos_sent: false,
            send_stopped: false,
            reset_on_drop: false,
            _guard: guard,
            stall_timeout: None,
        }
    }

    /// Ends the tunnel as failed: resets the stream with `CONNECT_ERROR` (RFC 9113 §8.5), which
    /// the peer passes on as a reset of its plain connection. Bytes still queued are discarded.
    ///
    /// Dropping a tunnel whose END_STREAM was not sent (`shutdown`) does the same. Dropping one
    /// after END_STREAM while its peer still sends leaves the reset to h2: `NO_ERROR` on the
    /// server side, after the queued bytes; `CANCEL` on the client side, which discards bytes
    /// still queued. So read a client-side tunnel to its end before dropping it.
    pub fn abort(&mut self) {
        self.send.send_reset(Reason::CONNECT_ERROR);
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        // Not ended by END_STREAM (or a peer that stopped it): the bytes are incomplete, and
        // h2's implicit reset (CANCEL) would read as a clean end at the peer.
        if self.reset_on_drop || !(self.eos_sent || self.send_stopped) {
            self.abort();
        }
    }
}

/// Whether a reset by the peer ends the stream without error: `NO_ERROR` (RFC 9113 §8.1, sent
/// after a complete response) or `CANCEL`, both a normal end of stream to Istio's ztunnel.
pub(super) fn graceful(reason: Reason) -> bool {
    reason == Reason::NO_ERROR || reason == Reason::CANCEL
}

/// Whether a receive error is the peer's graceful reset ([`graceful`]): the end of its bytes.
pub(super) fn graceful_end(e: &h2::Error) -> bool {
    e.is_reset() && e.is_remote() && e.reason().is_some_and(graceful)
}

/// Why sending into a tunnel is over.
pub(super) enum Stop {
    /// The peer reset the stream without error: it needs no more bytes.
    Graceful,
    /// The peer reset it with an error, or the connection failed.
    Failed(io::Error),
}

pub(super) fn reset_io(reason: Reason) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("tunnel reset by peer: {reason:?}"),
    )
}

/// Why `send` took no more bytes (after a send failed or capacity ended), without waiting.
pub(super) fn stopped(send: &mut SendStream<Bytes>) -> Stop {
    let mut cx = Context::from_waker(Waker::noop());
    match send.poll_reset(&mut cx) {
        Poll::Ready(Ok(r)) if graceful(r) => Stop::Graceful,
        Poll::Ready(Ok(r)) => Stop::Failed(reset_io(r)),
        Poll::Ready(Err(e)) => Stop::Failed(h2_to_io(e)),
        Poll::Pending => Stop::Failed(io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed")),
    }
}

pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("http/2 i/o error"))
    } else {
        io::Error::other(e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.read_buf.is_empty() {
                let n = this.read_buf.len().min(buf.remaining());
                buf.put_slice(&this.read_buf[..n]);
                this.read_buf.advance(n);
                let _ = this.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if this.recv_eof {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(b)) => this.read_buf = b,
                Some(Err(e)) if graceful_end(&e) => this.recv_eof = true,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => this.recv_eof = true,
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        if this.eos_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if this.send_stopped {
            // The peer needs no more bytes (it reset the stream without error): discarded.
            return Poll::Ready(Ok(data.len()));
        }
        this.send.reserve_capacity(data.len());
        let sent = match std::task::ready!(this.send.poll_capacity(cx)) {
            Some(Ok(n)) if n > 0 => {
                let n = n.min(data.len());
                // Copy into the reusable buffer: no allocation once h2 released the last chunk.
                this.write_buf.extend_from_slice(&data[..n]);
                let chunk = this.write_buf.split().freeze();
                this.send.send_data(chunk, false).is_ok().then_some(n)
            }
            Some(Ok(_)) => {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            None | Some(Err(_)) => None,
        };
        match sent {
            Some(n) => Poll::Ready(Ok(n)),
            None => match stopped(&mut this.send) {
                Stop::Graceful => {
                    this.send_stopped = true;
                    Poll::Ready(Ok(data.len()))
                }
                Stop::Failed(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task flushes frames; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.eos_sent && !this.send_stopped {
            // END_STREAM after the queued data; h2 flushes it all (never reset a clean end).
            if this.send.send_data(Bytes::new(), true).is_err() {
                match stopped(&mut this.send) {
                    Stop::Graceful => this.send_stopped = true,
                    Stop::Failed(e) => return Poll::Ready(Err(e)),
                }
            }
            this.eos_sent = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl H2Stream {
    /// Resets the tunnel in [`copy_bidirectional`](super::copy_bidirectional) when the peer
    /// keeps its receive window at zero (or stops reading the connection) for `timeout` while we
    /// have bytes for it.
    pub(crate) fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = Some(timeout);
        self
    }
}
