//! An upstream connection's I/O that holds its `connectionPool` slot: the slot is given back
//! only when the I/O itself is dropped. hyper hands a connection's I/O to the upgraded
//! (WebSocket) pair after a 101 and its connection task ends then: a slot held by that task
//! would be given back while the pair still uses the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io`, with `held` dropped when it is.
pub(crate) struct Held<IO, P> {
    io: IO,
    _held: P,
}

impl<IO, P> Held<IO, P> {
    /// `io` holding `held` for as long as it lives.
    pub(crate) fn new(io: IO, held: P) -> Self {
        Held { io, _held: held }
    }
}

impl<IO: AsyncRead + Unpin, P: Unpin> AsyncRead for Held<IO, P> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin, P: Unpin> AsyncWrite for Held<IO, P> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_slot_lives_as_long_as_the_io() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let slot = Arc::new(());
        let (a, mut b) = tokio::io::duplex(64);
        let mut held = Held::new(a, slot.clone());
        held.write_all(b"x").await.unwrap();
        let mut got = [0u8; 1];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!((&got, Arc::strong_count(&slot)), (b"x", 2));
        drop(held);
        assert_eq!(Arc::strong_count(&slot), 1);
    }
}
