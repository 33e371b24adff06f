//! The transport under TLS: TCP whose read buffer exists only once the handshake is done.
//!
//! rustls pulls ciphertext 4 KiB at a time; a 64 KiB read buffer turns the four-plus reads per
//! 16 KiB record into one syscall on bulk transfers. During the handshake that buffer would be
//! the largest cost of a connection that may never authenticate (5000 unfinished handshakes
//! took a ztunnel from 14 MB to 176 MB), so reads go straight to the socket until
//! [`BufferedTcp::enable_read_buffer`] is called after the handshake. Writes always pass
//! straight through (vectored).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;

/// Size of the read buffer of an established connection.
pub(crate) const TLS_READ_BUFFER: usize = 64 * 1024;

/// TCP under TLS, with a read buffer allocated only after the handshake.
#[derive(Debug)]
pub struct BufferedTcp(Inner);

#[derive(Debug)]
enum Inner {
    Unbuffered(TcpStream),
    Buffered(BufReader<TcpStream>),
    /// Only between the two states above, inside `enable_read_buffer`.
    Switching,
}

impl BufferedTcp {
    /// Wraps `tcp`, unbuffered.
    pub fn new(tcp: TcpStream) -> Self {
        BufferedTcp(Inner::Unbuffered(tcp))
    }

    /// Allocates the read buffer. Nothing is buffered before, so no byte is lost or reordered.
    pub fn enable_read_buffer(&mut self) {
        if let Inner::Unbuffered(_) = self.0
            && let Inner::Unbuffered(tcp) = std::mem::replace(&mut self.0, Inner::Switching)
        {
            self.0 = Inner::Buffered(BufReader::with_capacity(TLS_READ_BUFFER, tcp));
        }
    }

    /// Whether the read buffer is allocated.
    pub fn is_buffered(&self) -> bool {
        matches!(self.0, Inner::Buffered(_))
    }

    /// The TCP stream.
    pub fn get_ref(&self) -> Option<&TcpStream> {
        match &self.0 {
            Inner::Unbuffered(t) => Some(t),
            Inner::Buffered(b) => Some(b.get_ref()),
            Inner::Switching => None,
        }
    }
}

fn switching() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "transport is being replaced")
}

impl AsyncRead for BufferedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Unbuffered(t) => Pin::new(t).poll_read(cx, buf),
            Inner::Buffered(b) => Pin::new(b).poll_read(cx, buf),
            Inner::Switching => Poll::Ready(Err(switching())),
        }
    }
}

impl AsyncWrite for BufferedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Unbuffered(t) => Pin::new(t).poll_write(cx, buf),
            Inner::Buffered(b) => Pin::new(b).poll_write(cx, buf),
            Inner::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Unbuffered(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Inner::Buffered(b) => Pin::new(b).poll_write_vectored(cx, bufs),
            Inner::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Unbuffered(t) => Pin::new(t).poll_flush(cx),
            Inner::Buffered(b) => Pin::new(b).poll_flush(cx),
            Inner::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Unbuffered(t) => Pin::new(t).poll_shutdown(cx),
            Inner::Buffered(b) => Pin::new(b).poll_shutdown(cx),
            Inner::Switching => Poll::Ready(Err(switching())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn switching_to_buffered_keeps_every_byte_in_order() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            s.write_all(&data).await.unwrap();
        });
        let mut t = BufferedTcp::new(TcpStream::connect(addr).await.unwrap());
        assert!(!t.is_buffered());
        let mut first = vec![0u8; 1000];
        t.read_exact(&mut first).await.unwrap();
        t.enable_read_buffer();
        assert!(t.is_buffered());
        let mut rest = Vec::new();
        t.read_to_end(&mut rest).await.unwrap();
        first.extend(rest);
        assert_eq!(first.len(), 200_000);
        assert!(first.iter().enumerate().all(|(i, b)| *b == i as u8));
        writer.await.unwrap();
    }
}
