//! A raw HTTP/2 attacker for tests: frames and HPACK written by hand over mesh mTLS, because
//! h2's own client refuses to send what an attacker sends. Shared by `mesh-hbone`'s in-process
//! attack tests and the end-to-end ones in `tests/` (included with `#[path]`).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_identity::{CertStore, SpiffeId, TrustBundle, client_config};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame: 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn ping(payload: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &payload)
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// HPACK by hand (RFC 7541), no Huffman coding.
pub mod hpack {
    /// An integer with an `n`-bit prefix, the first byte's other bits set to `flags`.
    pub fn int(out: &mut Vec<u8>, n: u8, flags: u8, mut v: usize) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(flags | v as u8);
            return;
        }
        out.push(flags | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// A string literal (H = 0).
    pub fn string(out: &mut Vec<u8>, s: &[u8]) {
        int(out, 7, 0, s.len());
        out.extend_from_slice(s);
    }

    /// An indexed header field (static table 1..=61, dynamic from 62).
    pub fn indexed(out: &mut Vec<u8>, index: usize) {
        int(out, 7, 0x80, index);
    }

    /// A literal with incremental indexing and a new name: inserted into the dynamic table.
    pub fn insert(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x40);
        string(out, name);
        string(out, value);
    }

    /// A literal without indexing whose name is the static table's `index`.
    pub fn literal_indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
        int(out, 4, 0x00, index);
        string(out, value);
    }

    /// A literal without indexing with a new name.
    pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x00);
        string(out, name);
        string(out, value);
    }

    /// `:method CONNECT`, `:authority <authority>`: an HBONE request.
    pub fn connect(authority: &str) -> Vec<u8> {
        let mut b = Vec::new();
        literal_indexed_name(&mut b, 2, b"CONNECT");
        literal_indexed_name(&mut b, 1, authority.as_bytes());
        b
    }
}

/// What the server sent so far.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// GOAWAY (last stream id, error code).
    pub goaway: Option<(u32, u32)>,
    /// The connection ended (EOF or error).
    pub eof: bool,
    pub ping_acks: Vec<[u8; 8]>,
    pub pings: u64,
    pub resets: Vec<(u32, u32)>,
    /// Streams that got response HEADERS.
    pub responses: Vec<u32>,
    pub frames: u64,
}

impl Seen {
    pub fn closed(&self) -> bool {
        self.goaway.is_some() || self.eof
    }
}

/// A raw HTTP/2 client over mesh mTLS.
pub struct Attacker {
    /// Our address: the server's `ConnInfo::peer_addr`.
    pub local: SocketAddr,
    w: WriteHalf<TlsStream<TcpStream>>,
    /// Unread when the attacker does not read its socket.
    r: Option<ReadHalf<TlsStream<TcpStream>>>,
    seen: watch::Receiver<Seen>,
    tx: Option<watch::Sender<Seen>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    next_ping: u64,
}

impl Drop for Attacker {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

/// TLS to `addr` as `certs`, verifying the server is `server_id`.
pub async fn tls(
    addr: SocketAddr,
    certs: Arc<CertStore>,
    bundle: &TrustBundle,
    server_id: &SpiffeId,
) -> std::io::Result<TlsStream<TcpStream>> {
    let cfg = client_config(certs, bundle, server_id.clone()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    TlsConnector::from(cfg)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

impl Attacker {
    /// Connects, sends the preface, an empty SETTINGS and its ACK of the server's. With
    /// `read`, a task reads (and records) what the server sends; without, nothing is ever read.
    pub async fn connect(
        addr: SocketAddr,
        certs: Arc<CertStore>,
        bundle: &TrustBundle,
        server_id: &SpiffeId,
        read: bool,
    ) -> Attacker {
        let stream = tls(addr, certs, bundle, server_id).await.unwrap();
        let local = stream.get_ref().0.local_addr().unwrap();
        let (r, w) = tokio::io::split(stream);
        let (tx, rx) = watch::channel(Seen::default());
        let mut a = Attacker {
            local,
            w,
            r: Some(r),
            seen: rx,
            tx: Some(tx),
            reader: None,
            next_ping: 1,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend(frame(SETTINGS, ACK, 0, &[]));
        a.send(&hello).await.unwrap();
        if read {
            a.start_reading();
        }
        a
    }

    /// Starts the reader task (if not started).
    pub fn start_reading(&mut self) {
        let (Some(r), Some(tx)) = (self.r.take(), self.tx.take()) else {
            return;
        };
        self.reader = Some(tokio::spawn(read_frames(r, tx)));
    }

    /// Writes and flushes `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes).await?;
        self.w.flush().await
    }

    /// Writes `bytes` unless that blocks for `wait` (the peer stopped reading): whether it
    /// went out.
    pub async fn try_send(&mut self, bytes: &[u8], wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.send(bytes)).await,
            Ok(Ok(()))
        )
    }

    pub fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    pub fn closed(&self) -> bool {
        self.seen.borrow().closed()
    }

    /// Waits up to `timeout` for `f` to hold on what the server sent.
    pub async fn wait_for(&mut self, timeout: Duration, f: impl Fn(&Seen) -> bool) -> bool {
        tokio::time::timeout(timeout, self.seen.wait_for(|s| f(s)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether the server still serves the connection: a PING is answered (true), or GOAWAY or
    /// EOF came instead (false). Panics if neither happens within `timeout`.
    pub async fn is_open(&mut self, timeout: Duration) -> bool {
        let payload = self.next_ping.to_be_bytes();
        self.next_ping += 1;
        if self.send(&ping(payload)).await.is_err() {
            return false;
        }
        let ok = self
            .wait_for(timeout, |s| s.closed() || s.ping_acks.contains(&payload))
            .await;
        assert!(ok, "neither a PING ACK nor a close within {timeout:?}");
        let s = self.seen();
        !s.closed()
    }
}

async fn read_frames(mut r: ReadHalf<TlsStream<TcpStream>>, tx: watch::Sender<Seen>) {
    let mut head = [0u8; 9];
    loop {
        if r.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).await.is_err() {
            break;
        }
        tx.send_modify(|s| {
            s.frames += 1;
            match kind {
                GOAWAY if len >= 8 => {
                    let last = u32::from_be_bytes(payload[0..4].try_into().unwrap()) & 0x7fff_ffff;
                    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                    s.goaway = Some((last, code));
                }
                PING if flags & ACK != 0 && len == 8 => {
                    s.ping_acks.push(payload[..8].try_into().unwrap());
                }
                PING => s.pings += 1,
                RST_STREAM if len == 4 => {
                    let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    s.resets.push((stream, code));
                }
                HEADERS => s.responses.push(stream),
                _ => {}
            }
        });
    }
    tx.send_modify(|s| s.eof = true);
}
