//! [`PlainRead`]: the read half of a plain stream that can say when it is readable, so that
//! the byte pump holds no read buffer while a tunnel is idle (issue 18: memory per idle
//! tunnel).

use std::future::Future;
use std::io;

use tokio::io::AsyncRead;

/// The plain side's read half for [`copy_bidirectional`](super::copy_bidirectional).
///
/// The pump waits for [`readable`](PlainRead::readable) before it allocates a read buffer,
/// and drops the buffer again after a read that did not fill it: an idle tunnel then keeps
/// no buffer at all. TCP (and Unix) stream halves wait for the socket's readiness; a stream
/// that cannot tell may resolve at once, and the pump then holds its buffer while it waits,
/// as a plain `AsyncRead` copy would. A spurious wake-up is harmless: the read that follows
/// simply waits.
pub trait PlainRead: AsyncRead + Unpin {
    /// Resolves once a read may make progress (data, EOF or an error), perhaps spuriously.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl PlainRead for tokio::net::TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::TcpStream::readable(self)
    }
}

impl PlainRead for tokio::net::tcp::ReadHalf<'_> {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::tcp::ReadHalf::readable(self)
    }
}

impl PlainRead for tokio::net::tcp::OwnedReadHalf {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::tcp::OwnedReadHalf::readable(self)
    }
}

impl PlainRead for tokio::net::UnixStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::UnixStream::readable(self)
    }
}

impl PlainRead for tokio::net::unix::OwnedReadHalf {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::unix::OwnedReadHalf::readable(self)
    }
}

/// An in-memory stream cannot tell: ready at once (the pump holds its buffer while waiting).
impl PlainRead for tokio::io::DuplexStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}
