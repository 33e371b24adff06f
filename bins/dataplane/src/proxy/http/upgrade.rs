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

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use mesh_l7::layer::local;
use mesh_telemetry::metrics::ResponseFlags;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{Instrument, debug, debug_span};

use super::RespBody;

pub(crate) mod websocket;

use self::websocket::{UpgradeMetrics, WebSocket};

/// Copy buffer per direction of an upgraded connection.
const BUF: usize = 16 * 1024;
/// An upgraded connection with no byte either way for a whole period this long is closed
/// (Envoy's default `stream_idle_timeout`, 5 minutes, which applies to upgraded streams too):
/// an idle client cannot hold the two connections forever.
const IDLE: Duration = Duration::from_secs(300);

/// The client side of an upgrade on its way upstream, and whether it is HTTP/2's.
pub(super) struct Pending {
    down: OnUpgrade,
    h2: bool,
}

/// Before a request goes upstream (after its hop-by-hop headers were stripped): a WebSocket
/// upgrade gets `Connection: upgrade` and `Upgrade: websocket` back, and the client side of
/// the upgrade is taken out of it.
pub(super) fn prepare<B>(req: &mut Request<B>) -> Option<Pending> {
    req.extensions().get::<WebSocket>()?;
    let down = req.extensions_mut().remove::<OnUpgrade>()?;
    if req.version() == Version::HTTP_2 {
        // RFC 8441: the extended CONNECT goes on as is (its `:protocol` extension kept).
        return Some(Pending { down, h2: true });
    }
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Some(Pending { down, h2: false })
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
    let Some(Pending { down, .. }) = down else {
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
    tokio::spawn(join(m.clone(), down, up).instrument(debug_span!("websocket")));
    resp
}

/// Joins the upgraded client and upstream connections once both are ready.
async fn join(m: UpgradeMetrics, down: OnUpgrade, up: OnUpgrade) {
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
    use super::websocket::is_websocket;
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
