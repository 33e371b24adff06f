//! [`PlainRead`]: the read half of a plain stream that can say when it is readable, so that
//! the byte pump holds no read buffer while a tunnel is idle (issue 18: memory per idle
//! tunnel).

use std::io;
use std::task::{Context, Poll};

use tokio::io::AsyncRead;
use tokio::net::{TcpStream, UnixStream};

/// The plain side's read half for [`copy_bidirectional`](super::copy_bidirectional).
///
/// The pump waits for [`poll_read_ready`](PlainRead::poll_read_ready) before it allocates a
/// read buffer, and drops the buffer again after a read that did not fill it: an idle tunnel
/// then keeps no buffer at all. TCP (and Unix) streams and their halves wait for the socket's
/// read readiness (the same waker slot their reads use: no extra registration); a stream that
/// cannot tell may answer ready at once, and the pump then holds its buffer while it waits,
/// as a plain `AsyncRead` copy would. A spurious readiness is harmless: the read that follows
/// simply waits.
pub trait PlainRead: AsyncRead + Unpin {
    /// Ready once a read may make progress (data, EOF or an error), perhaps spuriously.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl PlainRead for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl PlainRead for tokio::net::tcp::ReadHalf<'_> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsRef::<TcpStream>::as_ref(self).poll_read_ready(cx)
    }
}

impl PlainRead for tokio::net::tcp::OwnedReadHalf {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsRef::<TcpStream>::as_ref(self).poll_read_ready(cx)
    }
}

impl PlainRead for UnixStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        UnixStream::poll_read_ready(self, cx)
    }
}

impl PlainRead for tokio::net::unix::OwnedReadHalf {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsRef::<UnixStream>::as_ref(self).poll_read_ready(cx)
    }
}

/// An in-memory stream cannot tell: ready at once (the pump holds its buffer while waiting).
impl PlainRead for tokio::io::DuplexStream {
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
