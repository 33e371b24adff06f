//! WebSocket pass-through (HTTP/1.1 `Upgrade: websocket`, RFC 6455, and HTTP/2 extended
//! `CONNECT` with `:protocol websocket`, RFC 8441): the upgrade request goes
//! through the whole stack like any request (authorization, routing, faults), its `Upgrade`
//! and `Connection` headers kept aside by the hygiene check ([`WebSocket`]) and put back only
//! on the request sent upstream; when the upstream answers `101 Switching Protocols` (`200` to
//! an extended `CONNECT`), the two upgraded connections (streams) are joined and bytes copied both ways with fixed buffers, counted.
//! Only `websocket` is honoured, as Istio's default `upgrade_configs`: any other upgrade
//! (`h2c` above all: a client speaking HTTP/2 straight to the app would bypass the per-request
//! checks) is stripped as a hop-by-hop header, and a 101 the client did not ask for is 502.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use mesh_l7::layer::local;
use mesh_l7::resilience::pool::Permit;
use mesh_telemetry::metrics::ResponseFlags;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, debug, debug_span};

use super::RespBody;

pub(crate) mod held;
pub(crate) mod websocket;

use self::websocket::{UpgradeMetrics, WebSocket};

/// Copy buffer per direction of an upgraded connection.
const BUF: usize = 16 * 1024;
/// An upgraded connection with no byte either way for a whole period this long is closed
/// (Envoy's default `stream_idle_timeout`, 5 minutes, which applies to upgraded streams too):
/// an idle client cannot hold the two connections forever.
const IDLE: Duration = Duration::from_secs(300);

/// The client side of an upgrade on its way upstream, whether it is HTTP/2's, and what the
/// upgraded pair holds while it is open: a slot of the proxy's cap on upgraded pairs and the
/// destination's `connectionPool` request slot (its connection slot is held by the
/// connection's I/O, [`held::Held`]).
pub(super) struct Pending {
    down: OnUpgrade,
    h2: bool,
    slot: OwnedSemaphorePermit,
    request: Option<Permit>,
}

/// Before a request goes upstream (after its hop-by-hop headers were stripped): a WebSocket
/// upgrade (a `GET` to the stack, [`websocket::mark`]) gets the upstream's form back, an
/// extended `CONNECT` with `:protocol websocket` to an HTTP/2 upstream (`h2`), else
/// `Connection: upgrade` and `Upgrade: websocket`; the client side of the upgrade is taken
/// out of it, with the `connectionPool` `request` slot (taken: held until the upgraded pair
/// closes). When the proxy already has its cap of upgraded pairs open, 503 `UO` instead.
pub(super) fn prepare<B>(
    req: &mut Request<B>,
    h2: bool,
    m: &UpgradeMetrics,
    request: &mut Option<Permit>,
) -> Result<Option<Pending>, OverCap> {
    if req.extensions().get::<WebSocket>().is_none() {
        return Ok(None);
    }
    let Some(down) = req.extensions_mut().remove::<OnUpgrade>() else {
        return Ok(None);
    };
    let Ok(slot) = m.slots.clone().try_acquire_owned() else {
        m.over_cap.inc();
        return Err(OverCap);
    };
    let request = request.take();
    if h2 {
        // RFC 8441 section 4: an extended CONNECT with `:protocol websocket`.
        *req.method_mut() = Method::CONNECT;
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
    } else {
        *req.version_mut() = Version::HTTP_11;
        let h = req.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    Ok(Some(Pending {
        down,
        h2,
        slot,
        request,
    }))
}

/// A WebSocket upgrade refused: the proxy has its cap of open upgraded pairs.
#[derive(Debug, thiserror::Error)]
#[error("too many upgraded connections")]
pub(super) struct OverCap;

impl OverCap {
    /// The answer to the client: 503 `UO` (an overflow, as a full connection pool).
    pub(super) fn response(self) -> Response<RespBody> {
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many upgraded connections\n",
            ResponseFlags::UpstreamOverflow,
        )
    }
}

/// After the upstream's response head: a 101 to a WebSocket upgrade joins the client and the
/// upstream connections (a task copies until either side closes); a 101 nobody asked for is
/// answered 502. Any other response leaves the client's connection plain HTTP.
pub(super) fn finish(
    m: &UpgradeMetrics,
    down: Option<Pending>,
    mut resp: Response<RespBody>,
) -> Response<RespBody> {
    let h2 = down.as_ref().is_some_and(|d| d.h2);
    let switched = match resp.status() {
        StatusCode::SWITCHING_PROTOCOLS => true,
        s => h2 && s.is_success(),
    };
    if !switched || !resp.body().is_upstream() {
        return resp;
    }
    let Some(Pending {
        down,
        slot,
        request,
        ..
    }) = down
    else {
        m.unasked.inc();
        return local(
            StatusCode::BAD_GATEWAY,
            "upstream switched protocols unasked\n",
            ResponseFlags::UpstreamConnectionTermination,
        );
    };
    let up = hyper::upgrade::on(&mut resp);
    // The copy outlives the request: it ends when either side closes (both connections are
    // the client's own and its upstream's; nothing else is shared).
    // The pair holds its cap slot and pool slots until it closes.
    let held = (slot, request);
    tokio::spawn(join(m.clone(), down, up, held).instrument(debug_span!("websocket")));
    resp
}

/// Joins the upgraded client and upstream connections once both are ready; `_held` (the
/// pair's slots) is given back when it ends.
async fn join<H>(m: UpgradeMetrics, down: OnUpgrade, up: OnUpgrade, _held: H) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(x) => x,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    m.joined.inc();
    match copy(TokioIo::new(down), TokioIo::new(up), &m, IDLE).await {
        Ok(Some((to_up, to_down))) => debug!(to_up, to_down, "upgraded connection closed"),
        Ok(None) => debug!("upgraded connection idle: closed"),
        Err(e) => debug!(error = %e, "upgraded connection ended with error"),
    }
}

/// Copies both ways between `down` (the client) and `up`, counting bytes as they pass, until
/// either side closes (the byte counts) or nothing moved for a whole `idle` period (`None`).
async fn copy<D, U>(
    down: D,
    up: U,
    m: &UpgradeMetrics,
    idle: Duration,
) -> std::io::Result<Option<(u64, u64)>>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let active = AtomicBool::new(false);
    let mut down = CountedIo(down, m.bytes_up.clone(), &active);
    let mut up = CountedIo(up, m.bytes_down.clone(), &active);
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF, BUF) => r.map(Some),
        () = idle_for(&active, idle) => Ok(None),
    }
}

/// Returns once a whole `period` passed without `active` being set.
async fn idle_for(active: &AtomicBool, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        if !active.swap(false, Ordering::Relaxed) {
            return;
        }
    }
}

/// An upgraded connection whose reads are counted and mark the pair active.
struct CountedIo<'a, T>(T, Counter, &'a AtomicBool);

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.1.inc_by(n);
            self.2.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::websocket::{MAX_UPGRADED, is_websocket};
    use super::*;

    fn req(method: &str, upgrade: &[&str], connection: &str) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/ws");
        for u in upgrade {
            b = b.header(header::UPGRADE, *u);
        }
        b.header(header::CONNECTION, connection).body(()).unwrap()
    }

    #[test]
    fn only_a_plain_websocket_upgrade_is_honoured() {
        // RFC 6455 4.1: GET, `Upgrade: websocket`, `Connection` including `Upgrade`.
        assert!(is_websocket(&req("GET", &["websocket"], "Upgrade")));
        assert!(is_websocket(&req(
            "GET",
            &["WebSocket"],
            "keep-alive, upgrade"
        )));
        // h2c smuggling (RFC 7540 3.2 upgrade through a proxy) is never honoured.
        assert!(!is_websocket(&req(
            "GET",
            &["h2c"],
            "Upgrade, HTTP2-Settings"
        )));
        assert!(!is_websocket(&req("GET", &["h2c, websocket"], "Upgrade")));
        assert!(!is_websocket(&req("GET", &["websocket", "h2c"], "Upgrade")));
        assert!(!is_websocket(&req("POST", &["websocket"], "Upgrade")));
        assert!(!is_websocket(&req("GET", &["websocket"], "close")));
    }

    /// An HTTP/2 extended CONNECT for WebSocket (RFC 8441 section 4), upgradeable.
    fn extended_connect() -> Request<()> {
        let mut r = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri("http://web.ns.svc/ws/chat")
            .body(())
            .unwrap();
        r.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let none = hyper::upgrade::on(Request::new(()));
        r.extensions_mut().insert(none);
        r
    }

    #[test]
    fn the_stack_sees_one_form_and_the_upstream_its_own() {
        // Attacker: a rule on `GET` must not be skipped by asking over HTTP/2. Envoy presents
        // an extended CONNECT to its filters as an HTTP/1-style GET + Upgrade and converts back
        // per upstream protocol (envoy docs: "HTTP upgrades", "Tunneling WebSockets over
        // HTTP/2"; source/common/http/header_utility.cc transformUpgradeRequestFromH2).
        let mut r = extended_connect();
        assert!(is_websocket(&r));
        websocket::mark(&mut r);
        assert_eq!(r.method(), Method::GET);
        assert!(r.extensions().get::<hyper::ext::Protocol>().is_none());
        assert!(r.extensions().get::<WebSocket>().is_some());
        // Not taken for another extended CONNECT once marked.
        assert!(!websocket::is_other_extended_connect(&r));
        // To an HTTP/2 upstream: an extended CONNECT again.
        let m = UpgradeMetrics::default();
        let pending = prepare(&mut r, true, &m, &mut None).ok().flatten();
        assert!(pending.is_some_and(|p| p.h2));
        assert_eq!(r.method(), Method::CONNECT);
        let p = r.extensions().get::<hyper::ext::Protocol>();
        assert_eq!(p.map(|p| p.as_str()), Some("websocket"));
        // To an HTTP/1.1 upstream: GET with `Upgrade: websocket`.
        let mut r = extended_connect();
        websocket::mark(&mut r);
        let pending = prepare(&mut r, false, &m, &mut None).ok().flatten();
        assert!(pending.is_some_and(|p| !p.h2));
        assert_eq!((r.method(), r.version()), (&Method::GET, Version::HTTP_11));
        assert!(r.extensions().get::<hyper::ext::Protocol>().is_none());
        assert_eq!(r.headers()[header::UPGRADE], "websocket");
        assert_eq!(r.headers()[header::CONNECTION], "upgrade");
        // A plain request is left alone (no slot of the cap taken).
        let mut plain = Request::new(());
        assert!(matches!(
            prepare(&mut plain, false, &m, &mut None),
            Ok(None)
        ));
        assert_eq!(m.slots.available_permits(), MAX_UPGRADED);
    }

    #[test]
    fn one_client_cannot_open_more_pairs_than_the_cap() {
        // Attacker: upgrades opened and never closed; each pair past the cap is 503 `UO`
        // before anything is sent upstream, and a slot comes back when a pair ends.
        let m = UpgradeMetrics::with_cap(2);
        let open = |m: &UpgradeMetrics| {
            let mut r = extended_connect();
            websocket::mark(&mut r);
            prepare(&mut r, true, m, &mut None)
        };
        let a = open(&m).ok().flatten().unwrap();
        let _b = open(&m).ok().flatten().unwrap();
        let refused = open(&m).err().unwrap().response();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(m.over_cap.get(), 1);
        drop(a);
        assert!(open(&m).ok().flatten().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn upgraded_bytes_are_counted_and_idle_pairs_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let m = UpgradeMetrics::default();
        let (mut client, down) = tokio::io::duplex(1024);
        let (up, mut app) = tokio::io::duplex(1024);
        let m2 = m.clone();
        let task = tokio::spawn(async move { copy(down, up, &m2, Duration::from_secs(10)).await });
        // Traffic every 5 s keeps the pair open past the idle period.
        let t0 = tokio::time::Instant::now();
        for _ in 0..6 {
            client.write_all(b"ping").await.unwrap();
            let mut b = [0; 4];
            app.read_exact(&mut b).await.unwrap();
            app.write_all(b"pong!").await.unwrap();
            let mut b = [0; 5];
            client.read_exact(&mut b).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert!(!task.is_finished());
        // Then silence: closed within two periods, the client sees the end.
        let idle = task.await.unwrap().unwrap();
        assert_eq!(idle, None);
        assert!(t0.elapsed() <= Duration::from_secs(30 + 20));
        let mut b = [0; 1];
        assert_eq!(client.read(&mut b).await.unwrap(), 0);
        assert_eq!((m.bytes_up.get(), m.bytes_down.get()), (24, 30));
    }
}
