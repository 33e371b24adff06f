//! Load generators, on plain OS threads with blocking sockets so that sending on schedule does
//! not depend on an async timer wheel's millisecond granularity (timer slack is set to 1 ns).
//!
//! Latency is open-loop: request `i` of a connection is due at `start + i × interval`, and its
//! latency is counted from that due time, so a slow response that delays the next send is
//! charged to the next request too (no coordinated omission).

// Blocking threads need std's monotonic clock; tokio's Instant is for async code.
#![allow(clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Connects from `src` to `dst` with TCP_NODELAY.
pub(crate) fn connect(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(dst);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    s.set_tcp_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s.into())
}

/// Sends one HTTP/1.1 request and reads the whole response; returns the status.
pub(crate) fn request(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    s.write_all(req)?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(buf)? {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .context("no content-length")?;
            let status = resp.code.unwrap_or(0);
            while buf.len() < head + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
    }
}

pub(crate) fn post_echo(payload: usize) -> Vec<u8> {
    let mut r = format!(
        "POST /echo HTTP/1.1\r\nHost: server.bench.svc\r\nContent-Length: {payload}\r\n\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', payload));
    r
}

pub(crate) const GET_CLOSE: &[u8] =
    b"GET /small HTTP/1.1\r\nHost: server.bench.svc\r\nConnection: close\r\n\r\n";
pub(crate) const GET: &[u8] = b"GET /small HTTP/1.1\r\nHost: server.bench.svc\r\n\r\n";

/// Outcome of an open-loop latency run.
#[derive(Debug, Default)]
pub(crate) struct LatencyRun {
    /// Latencies in microseconds, from the scheduled send time.
    pub(crate) samples_us: Vec<f64>,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
}

/// `rate` requests/s spread over `conns` keep-alive connections for `duration`.
pub(crate) fn latency(
    src: IpAddr,
    dst: SocketAddr,
    rate: u64,
    conns: usize,
    duration: Duration,
    payload: usize,
) -> LatencyRun {
    let per_conn = Duration::from_secs_f64(conns as f64 / rate.max(1) as f64);
    let count = (duration.as_secs_f64() * rate as f64 / conns as f64).ceil() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || {
                let _ = nix::sys::prctl::set_timerslack(1);
                let req = post_echo(payload);
                let mut buf = Vec::with_capacity(payload + 256);
                let mut run = LatencyRun {
                    samples_us: Vec::with_capacity(count as usize),
                    ..Default::default()
                };
                let offset = per_conn.mul_f64(c as f64 / conns as f64);
                let mut stream = connect(src, dst).ok();
                for i in 0..count {
                    let due = start + offset + per_conn.mul_f64(i as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let Some(s) = stream.as_mut() else {
                        run.errors += 1;
                        stream = connect(src, dst).ok();
                        continue;
                    };
                    match request(s, &req, &mut buf) {
                        Ok(200) => {
                            run.ok += 1;
                            run.samples_us.push(due.elapsed().as_secs_f64() * 1e6);
                        }
                        // A whole answer with another status: a failure, on a connection
                        // that stays usable.
                        Ok(_) => run.errors += 1,
                        Err(_) => {
                            run.errors += 1;
                            stream = connect(src, dst).ok();
                        }
                    }
                }
                run
            })
        })
        .collect();
    let mut total = LatencyRun::default();
    for t in threads {
        if let Ok(r) = t.join() {
            total.samples_us.extend(r.samples_us);
            total.ok += r.ok;
            total.errors += r.errors;
        }
    }
    total
}

/// `streams` connections each pushing data for `duration`; returns Gb/s summed over streams
/// (bytes the server read, over the time until it saw EOF) and the bytes carried.
pub(crate) fn throughput(
    src: IpAddr,
    dst: SocketAddr,
    streams: usize,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
                let mut s = connect(src, dst)?;
                let chunk = vec![0x5au8; 128 * 1024];
                let start = Instant::now();
                let mut sent = 0u64;
                while start.elapsed() < duration {
                    s.write_all(&chunk)?;
                    sent += chunk.len() as u64;
                }
                s.shutdown(std::net::Shutdown::Write)?;
                // The sink answers with the byte count it read, then closes.
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                let got: u64 = reply.trim().parse().context("sink reply")?;
                if got != sent {
                    bail!("sink read {got} bytes, {sent} were sent");
                }
                Ok((got, start.elapsed()))
            })
        })
        .collect();
    let (mut gbps, mut total) = (0.0, 0);
    for t in threads {
        let (bytes, took) = t.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
        gbps += bytes as f64 * 8.0 / took.as_secs_f64() / 1e9;
        total += bytes;
    }
    Ok((gbps, total))
}

/// New connection per request (`Connection: close`) from `workers` threads for `duration`.
/// Returns (successful connections, errors).
pub(crate) fn churn(
    src: IpAddr,
    dst: SocketAddr,
    workers: usize,
    duration: Duration,
) -> (u64, u64, Option<String>) {
    let ok = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let err = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (ok, err, stop) = (ok.clone(), err.clone(), stop.clone());
            let first_error = first_error.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = connect(src, dst)
                        .map_err(anyhow::Error::from)
                        .and_then(|mut s| request(&mut s, GET_CLOSE, &mut buf));
                    let failure = match r {
                        Ok(200) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Ok(status) => format!("status {status}"),
                        Err(e) => format!("{e:#}"),
                    };
                    err.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(failure);
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let first = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    (
        ok.load(Ordering::Relaxed),
        err.load(Ordering::Relaxed),
        first,
    )
}

/// Opens `n` connections, each proven up by one request, and keeps them open; also returns
/// each one's time from `connect` to its whole response, in microseconds.
pub(crate) fn open_idle(
    src: IpAddr,
    dst: SocketAddr,
    n: usize,
) -> anyhow::Result<(Vec<TcpStream>, Vec<f64>)> {
    let mut conns = Vec::with_capacity(n);
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let (s, t) = first_response(src, dst).with_context(|| format!("idle connection {i}"))?;
        conns.push(s);
        took.push(t.as_secs_f64() * 1e6);
    }
    Ok((conns, took))
}

/// A new connection and one request on it: the connection and the time from `connect` to the
/// whole response (for a proxy: its admission, and the tunnel set-up or reuse, included).
pub(crate) fn first_response(
    src: IpAddr,
    dst: SocketAddr,
) -> anyhow::Result<(TcpStream, Duration)> {
    let mut buf = Vec::new();
    let start = Instant::now();
    let mut s = connect(src, dst)?;
    let status = request(&mut s, GET, &mut buf)?;
    let took = start.elapsed();
    if status != 200 {
        bail!("status {status}");
    }
    Ok((s, took))
}

/// Closed-loop requests on one connection (for instruction counting).
pub(crate) fn sequential(
    src: IpAddr,
    dst: SocketAddr,
    n: u64,
    payload: usize,
) -> anyhow::Result<()> {
    let mut s = connect(src, dst)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let req = post_echo(payload);
    let mut buf = Vec::new();
    for _ in 0..n {
        let status = request(&mut s, &req, &mut buf)?;
        if status != 200 {
            bail!("status {status}");
        }
    }
    Ok(())
}
