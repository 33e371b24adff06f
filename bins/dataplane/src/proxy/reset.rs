//! Abortive close of plain connections: when proxying ends in an error (a tunnel reset or cut,
//! the proxy's own failure, a policy close, a forced shutdown), the plain peer gets a TCP
//! reset, never a FIN that would pass a truncated stream off as complete (RFC 9113 §8.5: a
//! proxy sends a TCP RST when it detects an error with the stream or the HTTP/2 connection).
//! [`ResetOnDrop`] resets unless the connection was marked clean or shut down cleanly.

use std::borrow::BorrowMut;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP connection (owned, or borrowed from its owner) reset when dropped (`SO_LINGER` 0;
/// the close then sends RST), unless [`ResetOnDrop::clean`] was called or its write side was
/// shut down cleanly (as hyper does at the end of a connection that went well; on an error it
/// drops the connection without).
pub(crate) struct ResetOnDrop<S: BorrowMut<TcpStream> = TcpStream> {
    tcp: S,
    reset: bool,
}

impl<S: BorrowMut<TcpStream>> ResetOnDrop<S> {
    pub(crate) fn new(tcp: S) -> ResetOnDrop<S> {
        ResetOnDrop { tcp, reset: true }
    }

    /// The connection ended well: close it normally (FIN).
    pub(crate) fn clean(&mut self) {
        self.reset = false;
    }
}

impl<S: BorrowMut<TcpStream>> std::ops::Deref for ResetOnDrop<S> {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        self.tcp.borrow()
    }
}

impl<S: BorrowMut<TcpStream>> std::ops::DerefMut for ResetOnDrop<S> {
    fn deref_mut(&mut self) -> &mut TcpStream {
        self.tcp.borrow_mut()
    }
}

impl<S: BorrowMut<TcpStream>> Drop for ResetOnDrop<S> {
    fn drop(&mut self) {
        if self.reset {
            // Zero linger never blocks: the close sends RST and discards unsent bytes.
            let _ = self.tcp.borrow().set_zero_linger();
        }
    }
}

impl<S: BorrowMut<TcpStream> + Unpin> AsyncRead for ResetOnDrop<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut **self).poll_read(cx, buf)
    }
}

impl<S: BorrowMut<TcpStream> + Unpin> AsyncWrite for ResetOnDrop<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut **self).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut **self).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        (**self).is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut **self).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = std::task::ready!(Pin::new(&mut **self).poll_shutdown(cx));
        if r.is_ok() {
            self.reset = false;
        }
        Poll::Ready(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn dropped_without_a_clean_end_resets() {
        let (mut c, s) = pair().await;
        let mut s = ResetOnDrop::new(s);
        s.write_all(b"partial").await.unwrap();
        drop(s);
        let mut got = Vec::new();
        let e = c.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn shut_down_or_marked_clean_closes_with_fin() {
        for shutdown in [true, false] {
            let (mut c, s) = pair().await;
            let mut s = ResetOnDrop::new(s);
            s.write_all(b"all").await.unwrap();
            if shutdown {
                s.shutdown().await.unwrap();
            } else {
                s.clean();
            }
            drop(s);
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"all");
        }
    }
}
