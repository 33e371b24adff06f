use std::collections::VecDeque;
use std::convert::Infallible;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use proptest::prelude::*;

use super::*;

/// A body of given frames, then its end.
#[derive(Debug)]
struct Frames(VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn frames(chunks: &[&'static str]) -> Frames {
    Frames(
        chunks
            .iter()
            .map(|c| Frame::data(Bytes::from(*c)))
            .collect(),
    )
}

async fn all<B>(b: B) -> (Bytes, Option<HeaderMap>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let c = b.collect().await.unwrap();
    let t = c.trailers().cloned();
    (c.to_bytes(), t)
}

#[tokio::test]
async fn the_first_read_streams_and_a_replay_gives_the_same_bytes() {
    let body = ReplayBody::new(frames(&["ab", "cd", "e"]), 16);
    let replay = body.replay().unwrap();
    assert_eq!(all(body).await.0, "abcde");
    assert_eq!(all(replay).await.0, "abcde");
}

#[tokio::test]
async fn a_replay_of_a_partly_read_body_reads_the_kept_chunks_then_the_rest() {
    let mut body = ReplayBody::new(frames(&["ab", "cd", "e"]), 16);
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "ab");
    let replay = body.replay().unwrap();
    drop(body);
    assert_eq!(all(replay).await.0, "abcde");
}

#[tokio::test]
async fn trailers_are_replayed() {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    let inner = Frames(VecDeque::from([
        Frame::data(Bytes::from("x")),
        Frame::trailers(t.clone()),
    ]));
    let body = ReplayBody::new(inner, 16);
    let replay = body.replay().unwrap();
    assert_eq!(all(body).await, (Bytes::from("x"), Some(t.clone())));
    assert_eq!(all(replay).await, (Bytes::from("x"), Some(t)));
}

#[tokio::test]
async fn a_body_past_the_cap_is_streamed_whole_but_frees_what_it_kept_and_cannot_be_replayed() {
    let mut body = ReplayBody::new(frames(&["aaaa", "bbbb", "cccc"]), 8);
    let early = body.replay().unwrap();
    body.frame().await.unwrap().unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(body.kept_bytes(), 8);
    body.frame().await.unwrap().unwrap();
    // Attacker's view: the third chunk went past the cap; nothing is held any more.
    assert_eq!(body.kept_bytes(), 0);
    assert!(!body.is_replayable());
    assert!(body.replay().is_none());
    // A replay made before the cap was reached cannot yield a truncated body: it fails.
    let mut early = early;
    assert!(matches!(
        early.frame().await,
        Some(Err(ReplayError::Capped))
    ));
}

#[tokio::test]
async fn a_body_announcing_more_than_the_cap_is_never_kept() {
    let inner = http_body_util::Full::new(Bytes::from(vec![0u8; 100]));
    let body = ReplayBody::new(inner, 99);
    assert!(body.replay().is_none());
    assert_eq!(all(body).await.0.len(), 100);
}

#[tokio::test]
async fn full_and_pass_bodies() {
    let full = ReplayBody::<Frames>::full(Bytes::from("hello"));
    let again = full.replay().unwrap();
    assert_eq!(full.size_hint().exact(), Some(5));
    assert_eq!(all(full).await.0, "hello");
    assert_eq!(all(again).await.0, "hello");
    let pass = ReplayBody::pass(frames(&["a"]));
    assert!(pass.replay().is_none());
    assert_eq!(all(pass).await.0, "a");
    let empty = ReplayBody::new(frames(&[]), 8);
    assert!(empty.is_end_stream());
    assert_eq!(all(empty.replay().unwrap()).await.0, "");
}

fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12)
}

proptest! {
    /// Whatever the chunks and the cap: the first read yields the body unchanged, the proxy
    /// never keeps more than the cap, and a replay (when one can still be made) yields the
    /// same bytes.
    #[test]
    fn replays_are_exact_and_kept_bytes_bounded(chunks in chunks(), cap in 0usize..200, read_first in 0usize..14) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let whole: Vec<u8> = chunks.concat();
            let inner = Frames(chunks.iter().map(|c| Frame::data(Bytes::from(c.clone()))).collect());
            let mut body = ReplayBody::new(inner, cap);
            let mut got = Vec::new();
            for _ in 0..read_first {
                match body.frame().await {
                    Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap()),
                    _ => break,
                }
                prop_assert!(body.kept_bytes() <= cap);
            }
            let replay = body.replay();
            let rest = all(body).await.0;
            got.extend_from_slice(&rest);
            prop_assert_eq!(&got, &whole);
            if let Some(r) = replay {
                let again = r.collect().await;
                match again {
                    Ok(c) => prop_assert_eq!(c.to_bytes().to_vec(), whole.clone()),
                    Err(ReplayError::Capped) => prop_assert!(whole.len() > cap),
                    Err(ReplayError::Inner(e)) => match e {},
                }
            }
            Ok(())
        })?;
    }
}
