//! Backends that end their responses the way careless proxies lose data with (headers and body
//! in separate writes, then an immediate close, as Python's stock `http.server` does), paced
//! downloads and uploads for killing a proxy mid-transfer, and how a client saw a stream end.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// `n` bytes of a fixed pattern, so any lost, repeated or shifted byte shows.
pub fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// How one client saw its stream end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every byte arrived, intact, then a clean EOF.
    Complete,
    /// The connection was reset or failed (an error the client can see).
    Error(io::ErrorKind),
    /// A clean EOF after `got` bytes, or wrong bytes: data lost silently.
    Truncated { got: usize },
}

/// Counts of [`Ending`]s.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub complete: usize,
    pub error: usize,
    pub truncated: usize,
}

impl Tally {
    pub fn of(endings: &[Ending]) -> Tally {
        let mut t = Tally::default();
        for e in endings {
            match e {
                Ending::Complete => t.complete += 1,
                Ending::Error(_) => t.error += 1,
                Ending::Truncated { .. } => t.truncated += 1,
            }
        }
        t
    }
}

/// Reads `s` until EOF or error, adding to `progress` as bytes arrive; compares with `want`.
pub async fn read_all<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    want: &[u8],
    progress: &AtomicU64,
) -> Ending {
    let mut got = Vec::with_capacity(want.len());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return Ending::Error(e.kind()),
        }
    }
    if got == want {
        Ending::Complete
    } else {
        Ending::Truncated { got: got.len() }
    }
}

/// An HTTP/1 backend like Python's `http.server`: reads a request head, answers `HTTP/1.0 200`
/// writing the head, then (after a 2 ms pause) the body as a separate write, then closes.
/// The path says how: `/cl/<n>` with `content-length` and a plain close; `/eof/<n>` without
/// (the body ends at the close); `/shut/<n>` with `content-length`, then `shutdown(SHUT_WR)`
/// and reading until the peer closes (socketserver's way).
pub async fn split_writer_http1(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut first = String::new();
                if s.read_line(&mut first).await.unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    let mut line = String::new();
                    match s.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let mut parts = path.trim_start_matches('/').split('/');
                let mode = parts.next().unwrap_or("cl").to_owned();
                let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(100);
                let mut head = "HTTP/1.0 200 OK\r\nserver: SimpleHTTP/0.6 Python/3\r\n".to_owned();
                if mode != "eof" {
                    head.push_str(&format!("content-length: {n}\r\n"));
                }
                head.push_str("\r\n");
                let mut s = s.into_inner();
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(2)).await;
                if s.write_all(&body(n)).await.is_err() {
                    return;
                }
                if mode == "shut" {
                    let _ = s.shutdown().await;
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                }
            });
        }
    });
}

/// One HTTP/1.1 `GET path` with `Connection: close` on a new connection from `src` to `dst`;
/// reads until EOF. `Complete` when the body after the head equals `want`.
pub async fn get_close(src: std::net::IpAddr, dst: SocketAddr, path: &str, want: &[u8]) -> Ending {
    let mut s = match crate::connect_from(src, dst).await {
        Ok(s) => s,
        Err(e) => return Ending::Error(e.kind()),
    };
    let req = format!("GET {path} HTTP/1.1\r\nhost: web.ns.svc\r\nconnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return Ending::Error(e.kind());
    }
    let mut got = Vec::new();
    if let Err(e) = s.read_to_end(&mut got).await {
        return Ending::Error(e.kind());
    }
    let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ending::Truncated { got: got.len() };
    };
    let head = String::from_utf8_lossy(&got[..at]).to_ascii_lowercase();
    let payload = &got[at + 4..];
    // The proxy may re-frame a body without length as chunked.
    let payload = if head.contains("transfer-encoding: chunked") {
        match dechunk(payload) {
            Some(p) => p,
            None => return Ending::Truncated { got: payload.len() },
        }
    } else {
        payload.to_vec()
    };
    if (head.starts_with("http/1.1 200") || head.starts_with("http/1.0 200")) && payload == want {
        return Ending::Complete;
    }
    Ending::Truncated { got: payload.len() }
}

/// A complete chunked body's payload, or `None` if it ends early.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&b[..eol])
            .ok()?
            .split(';')
            .next()?
            .trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// An HTTP/2 backend (prior knowledge) that answers each request's headers at once and its
/// body of `n` bytes (path `/<n>`) after a 2 ms pause, with END_STREAM, then closes the
/// connection at once (GOAWAY, close) without waiting for the client.
pub async fn split_writer_http2(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                let Some(Ok((req, mut respond))) = conn.accept().await else {
                    return;
                };
                let n: usize = req
                    .uri()
                    .path()
                    .trim_start_matches('/')
                    .parse()
                    .unwrap_or(100);
                let resp = http::Response::builder().status(200).body(()).unwrap();
                let Ok(mut send) = respond.send_response(resp, false) else {
                    return;
                };
                // Headers go out while the body waits.
                let _ = tokio::time::timeout(Duration::from_millis(2), conn.accept()).await;
                send.reserve_capacity(n);
                let mut data = bytes::Bytes::from(body(n));
                let drive = async {
                    while !data.is_empty() {
                        let cap = std::future::poll_fn(|cx| send.poll_capacity(cx)).await;
                        let Some(Ok(cap)) = cap else { return };
                        let part = data.split_to(cap.min(data.len()));
                        if send.send_data(part, data.is_empty()).is_err() {
                            return;
                        }
                    }
                };
                // The connection must be polled for capacity and writes.
                tokio::select! {
                    () = drive => {}
                    _ = conn.accept() => {}
                }
                conn.graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Some(Ok(_)) = conn.accept().await {}
                })
                .await;
            });
        }
    });
}

/// One HTTP/2 `GET /<n>` on a new prior-knowledge connection from `src` to `dst`.
pub async fn get_h2(src: std::net::IpAddr, dst: SocketAddr, n: usize) -> Ending {
    let tcp = match crate::connect_from(src, dst).await {
        Ok(s) => s,
        Err(e) => return Ending::Error(e.kind()),
    };
    let (h2c, conn) = match h2::client::handshake(tcp).await {
        Ok(x) => x,
        Err(e) => return Ending::Error(h2_kind(&e)),
    };
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let mut h2c = h2c.ready().await?;
        let req = http::Request::get(format!("http://web.ns.svc/{n}"))
            .body(())
            .unwrap();
        let (resp, _) = h2c.send_request(req, true)?;
        let resp = resp.await?;
        let mut b = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = b.data().await {
            let chunk = chunk?;
            let _ = b.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        Ok::<_, h2::Error>(got)
    }
    .await;
    driver.abort();
    match result {
        Ok(got) if got == body(n) => Ending::Complete,
        Ok(got) => Ending::Truncated { got: got.len() },
        Err(e) => Ending::Error(h2_kind(&e)),
    }
}

fn h2_kind(e: &h2::Error) -> io::ErrorKind {
    e.get_io().map_or(io::ErrorKind::Other, io::Error::kind)
}

/// A TCP backend: reads a line `<n>\n`, writes `HEAD\n`, then after a 2 ms pause `n` body
/// bytes, then closes, whatever the client still sends.
pub async fn split_writer_tcp(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut line = String::new();
                if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let n: usize = line.trim().parse().unwrap_or(100);
                let mut s = s.into_inner();
                if s.write_all(b"HEAD\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                let _ = s.write_all(&body(n)).await;
            });
        }
    });
}

/// Asks a [`split_writer_tcp`] at `dst` (from `src`) for `n` bytes without half-closing;
/// reads until EOF.
pub async fn get_tcp(src: std::net::IpAddr, dst: SocketAddr, n: usize) -> Ending {
    let mut s = match crate::connect_from(src, dst).await {
        Ok(s) => s,
        Err(e) => return Ending::Error(e.kind()),
    };
    if let Err(e) = s.write_all(format!("{n}\n").as_bytes()).await {
        return Ending::Error(e.kind());
    }
    let mut want = b"HEAD\n".to_vec();
    want.extend_from_slice(&body(n));
    read_all(&mut s, &want, &AtomicU64::new(0)).await
}

/// A download server: on each connection reads one line, then sends `size` bytes of
/// [`body`] in 64 KiB writes `pause` apart, then closes.
pub async fn paced_download_server(addr: SocketAddr, size: usize, pause: Duration) {
    let l = TcpListener::bind(addr).await.unwrap();
    let data = Arc::new(body(size));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut line = String::new();
                if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut s = s.into_inner();
                for chunk in data.chunks(64 * 1024) {
                    if s.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
}

/// A client of [`paced_download_server`]: sends its line, half-closes (it has finished
/// sending), and reads everything.
pub async fn download(
    src: std::net::IpAddr,
    dst: SocketAddr,
    size: usize,
    progress: Arc<AtomicU64>,
) -> Ending {
    let mut s = match crate::connect_from(src, dst).await {
        Ok(s) => s,
        Err(e) => return Ending::Error(e.kind()),
    };
    if let Err(e) = s.write_all(b"GO\n").await {
        return Ending::Error(e.kind());
    }
    if let Err(e) = s.shutdown().await {
        return Ending::Error(e.kind());
    }
    read_all(&mut s, &body(size), &progress).await
}

/// An upload sink: reads each connection to its end and reports how it ended (compared with
/// [`body`] of `size`).
pub async fn upload_sink(
    addr: SocketAddr,
    size: usize,
    progress: Arc<AtomicU64>,
) -> tokio::sync::mpsc::UnboundedReceiver<Ending> {
    let l = TcpListener::bind(addr).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let want = Arc::new(body(size));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (tx, want, progress) = (tx.clone(), want.clone(), progress.clone());
            tokio::spawn(async move {
                let e = read_all(&mut s, &want, &progress).await;
                let _ = tx.send(e);
            });
        }
    });
    rx
}

/// Sends `size` bytes of [`body`] in 64 KiB writes `pause` apart, then closes.
pub async fn upload(s: &mut TcpStream, size: usize, pause: Duration) -> io::Result<()> {
    for chunk in body(size).chunks(64 * 1024) {
        s.write_all(chunk).await?;
        tokio::time::sleep(pause).await;
    }
    s.shutdown().await
}

/// Waits until `progress` passes `bytes` (or 20 s), then kills (SIGKILL) proxy `node`.
pub async fn kill_when(mesh: &mut crate::TestMesh, node: &str, progress: &AtomicU64, bytes: u64) {
    for _ in 0..2000 {
        if progress.load(Ordering::Relaxed) >= bytes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let name = format!("ztunnel {node}");
    let p = mesh.procs.iter_mut().find(|p| p.name == name).unwrap();
    p.kill();
}

/// The tally of `endings` of transfers cut by a kill; panics unless none was silently
/// truncated and the kill did cut some.
pub fn check_cut(what: &str, endings: &[Ending]) -> Tally {
    let t = Tally::of(endings);
    eprintln!("{what}: {t:?} of {}", endings.len());
    let truncated: Vec<_> = endings
        .iter()
        .filter(|e| matches!(e, Ending::Truncated { .. }))
        .take(5)
        .collect();
    assert_eq!(
        t.truncated, 0,
        "{what}: silently truncated streams (short read, then a clean EOF): {t:?}, e.g. {truncated:?}"
    );
    assert!(t.error > 0, "{what}: the kill cut no transfer: {t:?}");
    assert_eq!(t.complete + t.error, endings.len());
    t
}

/// Answers each HTTP/1.1 request with a `content-length` body of `size` bytes of [`body`],
/// written in 64 KiB pieces `pause` apart.
pub async fn http_download_server(addr: SocketAddr, size: usize, pause: Duration) {
    let l = TcpListener::bind(addr).await.unwrap();
    let data = Arc::new(body(size));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    match s.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let mut s = s.into_inner();
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for chunk in data.chunks(64 * 1024) {
                    if s.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
    });
}

/// A GET with `Connection: close` to an [`http_download_server`] at `dst`, from `src`; reads
/// until EOF. `Complete` when the whole body arrived after the head.
pub async fn http_download(
    src: std::net::IpAddr,
    dst: SocketAddr,
    size: usize,
    progress: Arc<AtomicU64>,
) -> Ending {
    let mut s = match crate::connect_from(src, dst).await {
        Ok(s) => s,
        Err(e) => return Ending::Error(e.kind()),
    };
    let req = "GET /big HTTP/1.1\r\nhost: server.ns.svc\r\nconnection: close\r\n\r\n";
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return Ending::Error(e.kind());
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return Ending::Error(e.kind()),
        }
    }
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    match body_at {
        Some(at) if got[at..] == body(size)[..] => Ending::Complete,
        _ => Ending::Truncated { got: got.len() },
    }
}
