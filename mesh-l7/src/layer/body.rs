//! The response body of the stack: the upstream's, or one the proxy made itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// A response body: the upstream's (`Upstream`), or a small one the proxy answered with
/// (`Local`: 401, 403, 503, direct responses). An enum, so no response is boxed.
#[derive(Debug)]
pub enum Body<B> {
    /// Made by the proxy; `None` once sent.
    Local(Option<Bytes>),
    /// The upstream's body, streamed.
    Upstream(B),
}

impl<B> From<Bytes> for Body<B> {
    fn from(b: Bytes) -> Self {
        Body::Local(Some(b).filter(|b| !b.is_empty()))
    }
}

impl<B> Body<B> {
    /// Whether the body came from the upstream (not made by the proxy).
    pub fn is_upstream(&self) -> bool {
        matches!(self, Body::Upstream(_))
    }
}

impl<B> http_body::Body for Body<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut() {
            Body::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Upstream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Local(data) => data.is_none(),
            Body::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Upstream(b) => b.size_hint(),
        }
    }
}
