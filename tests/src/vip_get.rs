//! Plain HTTP/1.1 `GET`s from a client workload's address to a service VIP, for tests that
//! watch the mesh converge: one request's outcome, a retry loop until an outcome holds, and
//! readers of the outcome.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connect_from;

/// The status and body of one response, or why there was none.
pub type Outcome = Result<(u16, String), String>;

/// One `GET path` (host `server.ns.svc.cluster.local`) from `client` to `vip`, within 3 s.
pub async fn get(client: IpAddr, vip: SocketAddr, path: &str) -> Outcome {
    let fut = async {
        let mut s = connect_from(client, vip)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: server.ns.svc.cluster.local\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("closed after {:?}", String::from_utf8_lossy(&buf)));
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return Ok((status, body[..len].to_owned()));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Retries [`get`] (every 50 ms, up to 15 s) until `want` holds for its outcome; panics with
/// `what` and the last outcome otherwise.
pub async fn until(
    client: IpAddr,
    vip: SocketAddr,
    path: &str,
    what: &str,
    want: impl Fn(&Outcome) -> bool,
) {
    let mut last = Err(String::new());
    for _ in 0..300 {
        last = get(client, vip, path).await;
        if want(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: never; last outcome {last:?}");
}

/// The app that answered (the first word of a 200's body: `server`, `second`…), if one did.
pub fn app(r: &Outcome) -> Option<&str> {
    match r {
        Ok((200, body)) => body.split(' ').next(),
        _ => None,
    }
}

/// The response's status, if there was a response.
pub fn status(r: &Outcome) -> Option<u16> {
    r.as_ref().ok().map(|(s, _)| *s)
}
