//! Tests of the trace-context layer.

use super::*;
use crate::layer::testing::{FakeIds, echo_headers};
use tower::ServiceExt;

async fn run(req: Request<()>) -> http::HeaderMap {
    let svc = TraceContextLayer::new(FakeIds).layer(echo_headers());
    svc.oneshot(req).await.unwrap().into_body()
}

#[tokio::test]
async fn generates_absent_ids() {
    let h = run(Request::new(())).await;
    assert_eq!(h[X_REQUEST_ID], FakeIds::REQUEST_ID);
    assert_eq!(h[TRACEPARENT], FakeIds::TRACEPARENT);
    assert_eq!(
        trace_id(h[TRACEPARENT].to_str().unwrap()),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
}

#[tokio::test]
async fn keeps_valid_context() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::builder()
        .header("x-request-id", "abc")
        .header("traceparent", tp)
        .header("tracestate", "k=v")
        .body(())
        .unwrap();
    let h = run(req).await;
    assert_eq!(h[X_REQUEST_ID], "abc");
    assert_eq!(h[TRACEPARENT], tp);
    assert_eq!(h["tracestate"], "k=v");
}

/// Attacker: a garbage or all-zero `traceparent` (or one that is not text) never reaches
/// the upstream or the log; a spoofed `x-request-id` is passed on as sent (as Envoy
/// does), one value, never a second one added.
#[tokio::test]
async fn replaces_spoofed_traceparent() {
    for bad in [
        &b"garbage"[..],
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        b"00-\xff\xfe-00f067aa0ba902b7-01",
    ] {
        let req = Request::builder()
            .header("traceparent", HeaderValue::from_bytes(bad).unwrap())
            .header(
                "x-request-id",
                HeaderValue::from_bytes(b"\xffspoof").unwrap(),
            )
            .body(())
            .unwrap();
        let h = run(req).await;
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
        assert_eq!(h[TRACEPARENT], FakeIds::TRACEPARENT, "{bad:?}");
        assert_eq!(h.get_all(X_REQUEST_ID).iter().count(), 1);
        assert_eq!(h[X_REQUEST_ID].as_bytes(), b"\xffspoof");
    }
}
