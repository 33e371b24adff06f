//! The driver: connects to the agent's socket, says hello, turns each message into a
//! [`PodEvent`] through the sans-IO [`Session`], awaits the proxy's answer (bounded) and sends
//! the ack; reconnects with backoff when the connection ends, as Istio's ztunnel does
//! (istio/ztunnel `src/inpod/workloadmanager.rs`: 10 ms doubling to 15 s).

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_telemetry::readiness::{Pending, Readiness};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::error::{Refusal, ZdsError};
use super::event::PodEvent;
use super::session::{self, Backoff, Request, Session};
use super::wire::{self, Conn};

/// The bounds of a ZDS connection; [`Limits::default`] is what [`super::serve`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// How long the proxy may take to take and answer one event before the agent gets an
    /// error ack. Istio's agent waits 5 s for each ack (`readWriteDeadline`) and then treats
    /// the connection as broken, so the default, 4 s, answers before that.
    pub reply_timeout: Duration,
    /// The first reconnect delay.
    pub backoff_start: Duration,
    /// The longest reconnect delay (Istio: 15 s).
    pub backoff_max: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            reply_timeout: Duration::from_secs(4),
            backoff_start: Duration::from_millis(10),
            backoff_max: Duration::from_secs(15),
        }
    }
}

impl Limits {
    /// The defaults with another reply timeout (tests).
    pub fn with_reply_timeout(self, reply_timeout: Duration) -> Limits {
        Limits {
            reply_timeout,
            ..self
        }
    }
}

/// How one connection ended.
enum End {
    /// The agent closed it (or it broke) after a complete snapshot: reconnect promptly.
    Synced,
    /// It ended before a snapshot, or we closed it over a protocol error: back off.
    Early,
}

/// Connects to the CNI agent at `path` (Istio's `INPOD_UDS`, default
/// `/var/run/ztunnel/ztunnel.sock`) and hands each pod it sends to `events`, until `cancel`.
/// Every connection starts with [`PodEvent::Connected`]; each other event carries a reply the
/// consumer must answer within [`Limits::reply_timeout`]. Losing the agent is not an error:
/// the connection is retried with backoff. Only a peer running as root or as this process's
/// user is accepted (`SO_PEERCRED`): it hands us namespaces to enter.
///
/// # Errors
/// [`ZdsError::Path`] when `path` cannot be a Unix socket address; [`ZdsError::ConsumerGone`]
/// when the receiver of `events` was dropped.
pub async fn serve(
    path: &Path,
    events: mpsc::Sender<PodEvent>,
    cancel: CancellationToken,
) -> Result<(), ZdsError> {
    serve_with(path, events, cancel, Limits::default()).await
}

/// [`serve`] with other [`Limits`].
///
/// # Errors
/// As [`serve`].
pub async fn serve_with(
    path: &Path,
    events: mpsc::Sender<PodEvent>,
    cancel: CancellationToken,
    limits: Limits,
) -> Result<(), ZdsError> {
    run(path, events, cancel, limits, Ready::new(None)).await
}

/// [`serve_with`] that also holds the proxy not ready (`/healthz/ready` lists
/// [`READINESS_TASK`]) until the agent's snapshot has been applied, and again while the agent
/// is away, as Istio's ztunnel does in-pod ("we are only ready when we are connected",
/// `src/inpod/workloadmanager.rs`).
///
/// # Errors
/// As [`serve`] (the returned future's output).
pub fn serve_ready(
    path: PathBuf,
    events: mpsc::Sender<PodEvent>,
    cancel: CancellationToken,
    limits: Limits,
    readiness: Readiness,
) -> impl Future<Output = Result<(), ZdsError>> + Send + 'static {
    // Registered now, not at the first poll: the proxy is not ready from the call on.
    let ready = Ready::new(Some(readiness));
    async move { run(&path, events, cancel, limits, ready).await }
}

/// The readiness task [`serve_ready`] holds pending.
pub const READINESS_TASK: &str = "zds: CNI agent snapshot";

/// Not ready until a snapshot is applied; not ready again when the connection ends.
struct Ready {
    readiness: Option<Readiness>,
    pending: Option<Pending>,
}

impl Ready {
    fn new(readiness: Option<Readiness>) -> Ready {
        let mut r = Ready {
            readiness,
            pending: None,
        };
        r.not_ready();
        r
    }
    fn not_ready(&mut self) {
        if self.pending.is_none() {
            self.pending = self.readiness.as_ref().map(|r| r.register(READINESS_TASK));
        }
    }
    fn ready(&mut self) {
        self.pending = None;
    }
}

async fn run(
    path: &Path,
    events: mpsc::Sender<PodEvent>,
    cancel: CancellationToken,
    limits: Limits,
    mut ready: Ready,
) -> Result<(), ZdsError> {
    wire::check_path(path).map_err(|source| ZdsError::Path {
        path: path.to_owned(),
        source,
    })?;
    let mut backoff = Backoff::new(limits.backoff_start, limits.backoff_max);
    loop {
        let attempt = async {
            match connect(path).await {
                Ok(conn) => session(conn, &events, limits, &mut ready).await.map(Some),
                Err(e) => {
                    debug!(path = %path.display(), error = %e, "zds: cannot reach the CNI agent");
                    Ok(None)
                }
            }
        };
        let end = tokio::select! {
            // Cancel first: at shutdown the consumer goes away too, and that is no error.
            biased;
            () = cancel.cancelled() => return Ok(()),
            end = attempt.instrument(info_span!("zds", path = %path.display())) => end?,
        };
        ready.not_ready();
        let delay = backoff.after(matches!(end, Some(End::Synced)));
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Dials and checks who is on the other end.
async fn connect(path: &Path) -> std::io::Result<Conn> {
    let conn = wire::dial(path).await?;
    let peer = conn.peer_uid()?;
    let me = nix::unistd::geteuid().as_raw();
    if !session::peer_allowed(peer, me) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("agent runs as uid {peer}, neither root nor ours ({me})"),
        ));
    }
    Ok(conn)
}

/// One connection, from the hello to its end.
async fn session(
    mut conn: Conn,
    events: &mpsc::Sender<PodEvent>,
    limits: Limits,
    ready: &mut Ready,
) -> Result<End, ZdsError> {
    if let Err(e) = conn.send(&session::hello()).await {
        warn!(error = %e, "zds: hello to the CNI agent failed");
        return Ok(End::Early);
    }
    info!("zds: connected to the CNI agent");
    // Bounded like every exchange: a proxy that cannot take the event costs this connection
    // (the agent would give up on its first ack anyway), not the task.
    match tokio::time::timeout(limits.reply_timeout, events.send(PodEvent::Connected)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(ZdsError::ConsumerGone),
        Err(_) => {
            warn!("zds: the proxy takes no pod events; closing the connection");
            return Ok(End::Early);
        }
    }
    let mut state = Session::new();
    loop {
        let packet = match conn.recv().await {
            Ok(Some(p)) => p,
            Ok(None) => {
                info!("zds: the CNI agent closed the connection");
                return Ok(end_of(&state));
            }
            Err(e) => {
                warn!(error = %e, "zds: reading from the CNI agent failed");
                return Ok(end_of(&state));
            }
        };
        let step = state.on_message(conn.data(packet.len), packet.truncated, packet.fds);
        let (answer, close) = match step {
            Ok(req) => {
                let snapshot = matches!(req, Request::SnapshotSent);
                let answer = forward(req, events, limits.reply_timeout).await;
                if snapshot && answer.is_ok() {
                    ready.ready();
                }
                (answer, false)
            }
            Err(refusal) => {
                warn!(error = %refusal, "zds: message refused");
                let close = refusal.closes();
                (Err(refusal.to_string()), close)
            }
        };
        if let Err(e) = conn.send(&session::ack(&answer)).await {
            warn!(error = %e, "zds: ack to the CNI agent failed");
            return Ok(end_of(&state));
        }
        if close {
            return Ok(End::Early);
        }
    }
}

fn end_of(state: &Session) -> End {
    if state.synced() {
        End::Synced
    } else {
        End::Early
    }
}

/// Hands one request to the proxy and waits (bounded) for its answer.
async fn forward(
    req: Request,
    events: &mpsc::Sender<PodEvent>,
    timeout: Duration,
) -> Result<(), String> {
    let kind = req.kind();
    debug!(kind, "zds: request");
    let (tx, rx) = oneshot::channel();
    let exchange = async {
        events
            .send(req.into_event(tx))
            .await
            .map_err(|_| Refusal::Gone { kind })?;
        rx.await.map_err(|_| Refusal::Gone { kind })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(refusal)) => Err(refusal.to_string()),
        Err(_) => Err(Refusal::Timeout {
            kind,
            after: timeout,
        }
        .to_string()),
    }
}
