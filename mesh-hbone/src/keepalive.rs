//! HTTP/2 keepalive: a PING every interval; a connection that leaves one unanswered for the
//! timeout is dead (its peer vanished, or stopped reading so that not even the PING can be
//! written) and is closed. State lives here, not in a future, so polling it from a `select!`
//! loop that recreates its futures each turn is cancellation safe.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use h2::{Ping, PingPong};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::{Error, H2Settings};

/// The keepalive of one connection.
pub(crate) struct Keepalive {
    ping: Option<PingPong>,
    interval: Duration,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
}

impl Keepalive {
    /// Keepalive over `ping` (h2 hands it out once per connection; `None` disables it).
    pub(crate) fn new(ping: Option<PingPong>, settings: &H2Settings) -> Self {
        Keepalive {
            ping,
            interval: settings.keepalive_interval,
            timeout: settings.keepalive_timeout,
            timer: Box::pin(tokio::time::sleep(settings.keepalive_interval)),
            waiting: false,
        }
    }

    /// Resolves only when a PING went unanswered for the timeout: [`Error::PingTimeout`].
    pub(crate) async fn failed(&mut self) -> Error {
        std::future::poll_fn(|cx| self.poll_failed(cx)).await
    }

    fn poll_failed(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        loop {
            let Some(ping) = self.ping.as_mut() else {
                return Poll::Pending;
            };
            if !self.waiting {
                ready!(self.timer.as_mut().poll(cx));
                if let Err(e) = ping.send_ping(Ping::opaque()) {
                    // The connection is closing: its own future reports why.
                    debug!(error = %e, "keepalive stopped");
                    self.ping = None;
                    continue;
                }
                self.waiting = true;
                self.timer.as_mut().reset(Instant::now() + self.timeout);
                continue;
            }
            match ping.poll_pong(cx) {
                Poll::Ready(Ok(_)) => {
                    self.waiting = false;
                    self.timer.as_mut().reset(Instant::now() + self.interval);
                }
                Poll::Ready(Err(e)) => {
                    debug!(error = %e, "keepalive stopped");
                    self.ping = None;
                }
                Poll::Pending => {
                    ready!(self.timer.as_mut().poll(cx));
                    return Poll::Ready(Error::PingTimeout(self.timeout));
                }
            }
        }
    }
}
