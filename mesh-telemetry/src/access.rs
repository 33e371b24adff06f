//! The access log: one JSON line per connection when it ends.
//!
//! Lines are serialised on the connection's task and handed to a dedicated writer thread over
//! a bounded queue, so a slow disk or a blocked stdout pipe never blocks the data path; when
//! the queue is full the line is dropped and counted (`dropped()`), never waited for.

use prometheus_client::metrics::counter::Counter;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use serde::Serialize;

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Nowhere.
    Off,
}

impl std::str::FromStr for Sink {
    type Err = std::convert::Infallible;
    /// `stdout`, `off`, or a file path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => Sink::Stdout,
            "off" | "none" => Sink::Off,
            p => Sink::File(PathBuf::from(p)),
        })
    }
}

/// Queued lines before new ones are dropped.
const QUEUE: usize = 8192;

/// Writes access-log lines on a background thread. Cloning shares the writer.
#[derive(Debug, Clone)]
pub struct AccessLogger {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: Counter,
}

impl AccessLogger {
    /// Starts the writer thread for `sink` (none for [`Sink::Off`]). Fails if the file
    /// cannot be opened.
    pub fn new(sink: Sink) -> std::io::Result<AccessLogger> {
        let out: Box<dyn Write + Send> = match sink {
            Sink::Off => {
                return Ok(AccessLogger {
                    tx: None,
                    dropped: Counter::default(),
                });
            }
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::LineWriter::new(out);
                while let Ok(line) = rx.recv() {
                    if let Err(e) = out.write_all(&line) {
                        // The sink is gone (closed pipe, full disk): say so once; from now
                        // on lines are dropped and counted.
                        tracing::error!(error = %e, "access log sink failed; further lines are dropped");
                        break;
                    }
                }
            })?;
        Ok(AccessLogger {
            tx: Some(tx),
            dropped: Counter::default(),
        })
    }

    /// A logger that discards everything.
    pub fn off() -> AccessLogger {
        AccessLogger {
            tx: None,
            dropped: Counter::default(),
        }
    }

    /// Whether lines go anywhere (skip building records when not).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `record` as one JSON line. Never blocks.
    pub fn log(&self, record: &impl Serialize) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Lines dropped because the writer fell behind or its sink failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// The dropped-lines counter, to register (e.g. as `mesh_access_log_dropped`).
    pub fn dropped_counter(&self) -> Counter {
        self.dropped.clone()
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Carried to the end (both sides closed).
    Complete,
    /// Refused before any byte was forwarded (policy, peer authentication, bad request).
    Refused,
    /// Failed after it was accepted (upstream error, reset, closed by a policy change).
    Error,
}

/// One access-log record: a connection from open to close, as seen by one proxy. Field names
/// follow Istio's ztunnel access log (`src.addr`, `dst.workload`, `bytes_sent`, …).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionRecord<'a> {
    /// When the connection ended, RFC 3339 UTC.
    pub timestamp: String,
    /// `outbound` (this proxy is the client's) or `inbound` (the server's).
    pub direction: &'a str,
    /// Client address.
    #[serde(rename = "src.addr")]
    pub src_addr: Option<SocketAddr>,
    /// Client workload name.
    #[serde(rename = "src.workload")]
    pub src_workload: Option<&'a str>,
    /// Client workload namespace.
    #[serde(rename = "src.namespace")]
    pub src_namespace: Option<&'a str>,
    /// Client identity (only when authenticated by mTLS).
    #[serde(rename = "src.identity")]
    pub src_identity: Option<&'a str>,
    /// Destination address (workload ip:port).
    #[serde(rename = "dst.addr")]
    pub dst_addr: Option<SocketAddr>,
    /// HBONE address used, if tunnelled.
    #[serde(rename = "dst.hbone_addr")]
    pub dst_hbone_addr: Option<SocketAddr>,
    /// Service host name the client addressed.
    #[serde(rename = "dst.service")]
    pub dst_service: Option<&'a str>,
    /// Destination workload name.
    #[serde(rename = "dst.workload")]
    pub dst_workload: Option<&'a str>,
    /// Destination workload namespace.
    #[serde(rename = "dst.namespace")]
    pub dst_namespace: Option<&'a str>,
    /// Destination identity.
    #[serde(rename = "dst.identity")]
    pub dst_identity: Option<&'a str>,
    /// `mutual_tls` or `unknown` (plaintext), as the metrics label.
    pub security: &'a str,
    /// Bytes this proxy sent towards the other end, as Istio's ztunnel logs them: the
    /// request bytes (client to server) on `outbound`, the response bytes on `inbound`.
    pub bytes_sent: u64,
    /// Bytes this proxy received from the other end: the response bytes on `outbound`, the
    /// request bytes on `inbound`.
    pub bytes_recv: u64,
    /// Time from accept to close, e.g. `"12ms"`.
    pub duration: String,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// Why it was refused or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// One access-log record for an HTTP request handled at L7 (a waypoint).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestRecord<'a> {
    /// When the response ended, RFC 3339 UTC.
    pub timestamp: String,
    /// `waypoint`.
    pub reporter: &'a str,
    /// Client address.
    #[serde(rename = "src.addr")]
    pub src_addr: Option<SocketAddr>,
    /// Client identity.
    #[serde(rename = "src.identity")]
    pub src_identity: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Authority (Host) as received.
    pub authority: &'a str,
    /// Path as received (with the query).
    pub path: &'a str,
    /// Protocol (`HTTP/1.1`).
    pub protocol: &'a str,
    /// Status returned.
    pub status: u16,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// Milliseconds from request head to the end of the response.
    pub duration_ms: u64,
    /// The route that matched, if any.
    pub route: Option<&'a str>,
    /// The endpoint the request went to (`ip:port`), if forwarded.
    pub upstream: Option<SocketAddr>,
    /// The service routed to.
    #[serde(rename = "dst.service")]
    pub dst_service: Option<&'a str>,
    /// Envoy-style response flags (`-`, `UF` upstream failure, `NR` no route, `DR` direct
    /// response).
    pub response_flags: &'a str,
    /// W3C trace id.
    pub trace_id: Option<&'a str>,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// The AUDIT policy that matched, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_policy: Option<&'a str>,
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// `t` as RFC 3339 UTC with milliseconds (times before 1970 print as the epoch).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let now = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z'));
    }

    #[test]
    fn writes_json_lines_to_a_file() {
        let dir = std::env::temp_dir().join(format!("access-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let log = AccessLogger::new(Sink::File(dir.clone())).unwrap();
        let rec = ConnectionRecord {
            timestamp: now_rfc3339(),
            direction: "inbound",
            src_addr: Some("127.0.0.1:5000".parse().unwrap()),
            src_workload: Some("a"),
            src_namespace: Some("ns"),
            src_identity: Some("spiffe://td/ns/ns/sa/a"),
            dst_addr: Some("127.0.0.2:80".parse().unwrap()),
            dst_workload: Some("b"),
            dst_identity: Some("spiffe://td/ns/ns/sa/b"),
            security: "mutual_tls",
            bytes_sent: 5,
            bytes_recv: 7,
            duration: "3ms".into(),
            outcome: Some(Outcome::Refused),
            reason: Some("denied by ns/deny"),
            ..ConnectionRecord::default()
        };
        log.log(&rec);
        drop(log);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&dir).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&dir);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["src.workload"], "a");
        assert_eq!(v["bytes_recv"], 7);
        assert_eq!(v["outcome"], "refused");
        assert_eq!(v["reason"], "denied by ns/deny");
        assert_eq!(v["dst.hbone_addr"], serde_json::Value::Null);
    }
}
