//! A response body capped in bytes: every response from the API server is read through it, so
//! a huge list or an endless watch stream (one never-ending line, or millions of events) costs
//! at most the cap before the request fails. A watch that reaches it ends with an error and
//! the watcher resumes from its last resourceVersion; a list that does is retried with backoff
//! while the last good objects keep serving.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A boxed error, as kube's client takes them.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body went past its cap.
#[derive(Debug, thiserror::Error)]
#[error("the API server's response is larger than {0} bytes (--kube-max-response-bytes)")]
pub(crate) struct TooLarge(pub(crate) usize);

/// `inner`, failing once more than `cap` bytes of data have come through.
pub(crate) struct Capped<B> {
    inner: B,
    cap: usize,
    left: usize,
    failed: bool,
}

impl<B> Capped<B> {
    /// Caps `inner` at `cap` bytes.
    pub(crate) fn new(inner: B, cap: usize) -> Self {
        Capped {
            inner,
            cap,
            left: cap,
            failed: false,
        }
    }
}

impl<B> Body for Capped<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                let n = frame.data_ref().map_or(0, Bytes::len);
                if n > this.left {
                    this.failed = true;
                    return Poll::Ready(Some(Err(Box::new(TooLarge(this.cap)))));
                }
                this.left -= n;
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use http_body_util::{BodyExt as _, Full, StreamBody};

    use super::*;

    #[tokio::test]
    async fn passes_up_to_the_cap_then_fails() {
        let ok = Capped::new(Full::new(Bytes::from_static(b"12345")), 5);
        assert_eq!(ok.collect().await.unwrap().to_bytes(), "12345");
        let big = Capped::new(Full::new(Bytes::from_static(b"123456")), 5);
        let e = big.collect().await.err().unwrap();
        assert!(e.to_string().contains("larger than 5 bytes"), "{e}");
    }

    #[tokio::test]
    async fn an_endless_stream_ends_at_the_cap() {
        // Attack: a watch that never ends, one line that never ends.
        let endless = futures_util::stream::repeat_with(|| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[b'x'; 1024])))
        });
        let mut body = Capped::new(StreamBody::new(endless), 64 * 1024);
        let mut seen = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => seen += f.into_data().map_or(0, |d| d.len()),
                Err(e) => {
                    assert!(e.is::<TooLarge>());
                    break;
                }
            }
        }
        assert_eq!(seen, 64 * 1024);
        assert!(body.frame().await.is_none());
    }
}
