//! Protocol detection (Istio's sniffing): the first bytes of a stream decide whether it is
//! HTTP/1.1, HTTP/2 with prior knowledge, or anything else (a TLS client hello, an opaque or
//! server-first protocol), carried as TCP. A client that sends nothing for
//! [`SNIFF_TIMEOUT`] is a server-first protocol (a database or mail greeting) and is carried
//! as TCP too, so such protocols work with no configuration.

/// What the first bytes of a stream look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniffed {
    /// An HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 connection preface (prior knowledge).
    Http2,
    /// Anything else (a TLS client hello, a binary protocol, or nothing yet: server-first).
    Tcp,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];

/// Classifies `b`; `None` while more bytes could change the answer.
pub(super) fn classify(b: &[u8]) -> Option<Sniffed> {
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Sniffed::Http2);
    }
    match b.iter().position(|c| *c == b' ') {
        Some(i) => Some(if METHODS.contains(&&b[..i]) {
            Sniffed::Http1
        } else {
            Sniffed::Tcp
        }),
        None if METHODS.iter().any(|m| m.starts_with(b)) => None,
        None => Some(Sniffed::Tcp),
    }
}

/// How long to wait for a client's first bytes: a server-first protocol (a database or mail
/// greeting) sends nothing until the server speaks, and is carried as TCP after this.
pub(super) const SNIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// Reads the first bytes of a stream (at most the HTTP/2 preface's length) until the protocol
/// is clear, the client stops or the timeout passes; returns the verdict and the bytes read.
pub(super) async fn sniff(s: &mut mesh_hbone::H2Stream) -> (Sniffed, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = vec![0u8; H2_PREFACE.len()];
    let mut n = 0;
    while n < buf.len() {
        match tokio::time::timeout_at(deadline, s.read(&mut buf[n..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => n += k,
        }
        if let Some(v) = classify(&buf[..n]) {
            buf.truncate(n);
            return (v, buf);
        }
    }
    buf.truncate(n);
    (
        classify(&buf).filter(|_| n > 0).unwrap_or(Sniffed::Tcp),
        buf,
    )
}

/// A stream whose first bytes were already read: they are replayed before the rest.
pub(super) struct Rewind<S> {
    pub(super) prefix: bytes::Bytes,
    pub(super) inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sniffs a TCP connection without consuming its bytes (`peek`): they stay in the socket for
/// whichever path takes it.
pub(super) async fn peek(tcp: &tokio::net::TcpStream) -> Sniffed {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut last = 0;
    loop {
        match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                if let Some(v) = classify(&buf[..n]) {
                    return v;
                }
                if n == buf.len() {
                    break;
                }
                if n == last {
                    // Same partial bytes as before: wait a little for more.
                    if tokio::time::timeout_at(
                        deadline,
                        tokio::time::sleep(std::time::Duration::from_millis(2)),
                    )
                    .await
                    .is_err()
                    {
                        break;
                    }
                }
                last = n;
            }
        }
    }
    Sniffed::Tcp
}

#[cfg(test)]
#[path = "sniff_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http1));
        assert_eq!(classify(b"DELETE /x"), Some(Sniffed::Http1));
        assert_eq!(classify(b"GE"), None, "could still be GET");
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n"),
            None,
            "preface not complete"
        );
        assert_eq!(classify(H2_PREFACE), Some(Sniffed::Http2));
        assert_eq!(
            classify(b"\x16\x03\x01"),
            Some(Sniffed::Tcp),
            "TLS client hello"
        );
        assert_eq!(classify(b"HELO mail"), Some(Sniffed::Tcp));
        assert_eq!(classify(b"GETX /"), Some(Sniffed::Tcp));
    }

    #[tokio::test]
    async fn peek_leaves_the_bytes_and_times_out_on_silence() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|_| unreachable!());
        let addr = l.local_addr().unwrap_or_else(|_| unreachable!());
        let mut c = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|_| unreachable!());
        let (mut s, _) = l.accept().await.unwrap_or_else(|_| unreachable!());
        // Silence: a server-first protocol.
        assert_eq!(peek(&s).await, Sniffed::Tcp);
        // A request sent in two pieces is still recognised, and left for the reader.
        c.write_all(b"GE").await.unwrap_or_else(|_| unreachable!());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            c.write_all(b"T / HTTP/1.1\r\n")
                .await
                .unwrap_or_else(|_| unreachable!());
            c
        });
        assert_eq!(peek(&s).await, Sniffed::Http1);
        let _c = writer.await.unwrap_or_else(|_| unreachable!());
        let mut got = [0u8; 5];
        s.read_exact(&mut got)
            .await
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(&got, b"GET /");
    }
}
