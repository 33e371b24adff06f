//! HTTP/2 and TLS attacks on the real ztunnel's HBONE port, with its memory measured (VmRSS of
//! the process): each attacking connection costs under 2 MiB, and 100 good clients connecting
//! alongside all get through. Run with `MESH_BIN_DIR` pointing at another build to compare.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../mesh-hbone/tests/support/raw_h2.rs"]
mod raw_h2;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{ConnectRequest, Pool, PoolConfig};
use mesh_identity::{CertStore, SpiffeId, TrustBundle};
use mesh_tests::*;
use raw_h2::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVER: &str = "spiffe://cluster.local/ns/ns/sa/server";
const CLIENT: &str = "spiffe://cluster.local/ns/ns/sa/client";
const ATTACKERS: usize = 20;
const MAX_RSS_PER_ATTACKER: usize = 2 << 20;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

/// The pid of the ztunnel of `node` in `mesh`, found by its command line.
fn pid_of(mesh: &TestMesh, node: &str) -> u32 {
    let config = mesh.config.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.contains(&config) && args.windows(2).any(|w| w[0] == "--node" && w[1] == node) {
            return pid;
        }
    }
    panic!("no ztunnel {node} running");
}

fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap()
        * 1024
}

/// Samples `pid`'s RSS every 20 ms until `done`; the highest.
async fn peak_rss(pid: u32, done: tokio::sync::watch::Receiver<bool>) -> usize {
    let mut peak = 0;
    loop {
        peak = peak.max(rss(pid));
        if *done.borrow() {
            return peak;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Target {
    net: Net,
    bundle: TrustBundle,
    client: Arc<CertStore>,
    server: SpiffeId,
}

impl Target {
    async fn attacker(&self) -> Attacker {
        Attacker::connect(
            self.net.hbone(),
            self.client.clone(),
            &self.bundle,
            &self.server,
            true,
        )
        .await
    }

    /// `n` good clients, each on its own HBONE connection, echoing through the app at once.
    async fn good_connections(&self, n: usize) -> usize {
        let pool = Pool::new(
            PoolConfig {
                max_streams_per_connection: 1,
                ..Default::default()
            },
            self.bundle.clone(),
        );
        let all = Arc::new(tokio::sync::Barrier::new(n));
        let mut tasks = Vec::new();
        for i in 0..n {
            let req = ConnectRequest {
                source: self.client.clone(),
                destination_identity: self.server.clone(),
                hbone_addr: self.net.hbone(),
                authority: self.net.app(),
                headers: ConnectHeaders::default().to_header_map(),
                socket_source: None,
            };
            let (pool, all) = (pool.clone(), all.clone());
            tasks.push(tokio::spawn(async move {
                let tunnel =
                    async {
                        let mut t =
                            match tokio::time::timeout(Duration::from_secs(30), pool.connect(req))
                                .await
                            {
                                Ok(Ok(t)) => t,
                                e => {
                                    eprintln!("good connection {i}: {e:?}");
                                    return None;
                                }
                            };
                        let msg = format!("good connection {i}");
                        t.write_all(msg.as_bytes()).await.ok()?;
                        t.shutdown().await.ok()?;
                        let mut back = String::new();
                        tokio::time::timeout(Duration::from_secs(30), t.read_to_string(&mut back))
                            .await
                            .ok()?
                            .ok()?;
                        (back == msg).then_some(t)
                    }
                    .await;
                all.wait().await;
                tunnel.is_some()
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if let Ok(true) = t.await {
                ok += 1;
            }
        }
        pool.shutdown().await;
        ok
    }
}

/// One attacking connection: sends its attack and holds the connection for `hold`; whether the
/// server closed it (GOAWAY or EOF) by then.
async fn attack(t: &Target, kind: &str, hold: Duration) -> bool {
    let mut a = t.attacker().await;
    let app = t.net.app().to_string();
    match kind {
        "HPACK bomb" => {
            // 100 streams, each one 14 KB block decoding to 14 MB (3500 references to one
            // 4 KB header in the dynamic table).
            for i in 0..100u32 {
                let mut block = hpack::connect(&app);
                if i == 0 {
                    hpack::insert(&mut block, b"x-bomb", &[b'b'; 4000]);
                }
                for _ in 0..3500 {
                    hpack::indexed(&mut block, 62);
                }
                if a.send(&frame(HEADERS, END_HEADERS, 2 * i + 1, &block))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        "CONTINUATION flood" => {
            // One header block: a literal claiming 64 MiB, continued in 256 KiB frames.
            let mut block = hpack::connect(&app);
            block.push(0x00);
            hpack::string(&mut block, b"x-flood");
            hpack::int(&mut block, 7, 0, 64 << 20);
            let _ = a.send(&frame(HEADERS, 0, 1, &block)).await;
            let filler = vec![b'a'; 256 << 10];
            for _ in 0..100 {
                if a.closed() || a.send(&frame(CONTINUATION, 0, 1, &filler)).await.is_err() {
                    break;
                }
            }
        }
        "rapid reset" => {
            for i in 0..1000u32 {
                let id = 2 * i + 1;
                let open = frame(HEADERS, END_HEADERS, id, &hpack::connect(&app));
                if a.closed() || a.send(&open).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                if a.send(&rst_stream(id, CANCEL)).await.is_err() {
                    break;
                }
            }
        }
        "PING flood, socket unread" => {
            drop(a);
            let mut a =
                Attacker::connect(t.net.hbone(), t.client.clone(), &t.bundle, &t.server, false)
                    .await;
            let batch: Vec<u8> = std::iter::repeat_n(ping([1; 8]), 1000).flatten().collect();
            for _ in 0..2000 {
                if !a.try_send(&batch, Duration::from_millis(200)).await {
                    break;
                }
            }
            tokio::time::sleep(hold).await;
            // Unread: closed later, by the keepalive (30 s + 10 s by default).
            return false;
        }
        _ => unreachable!("{kind}"),
    }
    tokio::time::sleep(hold).await;
    a.closed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_attacks_cost_little_memory_and_spare_good_clients() {
    let net = Net { b: 100 };
    let mut mesh = TestMesh::new(&net.config());
    let _app = echo_server(net.app()).await;
    mesh.ztunnel("b", &["--access-log", "off"]);
    let pid = pid_of(&mesh, "b");
    let t = Target {
        net,
        bundle: mesh.ca.trust_bundle().unwrap(),
        client: CertStore::fixed(mesh.ca.issue(&id(CLIENT)).unwrap()),
        server: id(SERVER),
    };
    // Warm up: the first connections grow allocator arenas and the runtime.
    let mut ready = false;
    for _ in 0..50 {
        if t.good_connections(1).await == 1 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "no good connection gets through");
    assert_eq!(t.good_connections(100).await, 100);
    let mut failures = Vec::new();
    for kind in [
        "HPACK bomb",
        "CONTINUATION flood",
        "rapid reset",
        "PING flood, socket unread",
    ] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss(pid);
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(peak_rss(pid, done_rx));
        let closed = std::sync::atomic::AtomicUsize::new(0);
        let attacks = async {
            let all: Vec<_> = (0..ATTACKERS)
                .map(|_| async {
                    if attack(&t, kind, Duration::from_secs(2)).await {
                        closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
                .collect();
            futures_join_all(all).await;
        };
        let (_, good) = tokio::join!(attacks, t.good_connections(100));
        let closed = closed.into_inner();
        done_tx.send(true).unwrap();
        let peak = sampler.await.unwrap();
        let per = peak.saturating_sub(before) / ATTACKERS;
        eprintln!(
            "{kind}: ztunnel RSS {} KiB -> peak {} KiB: {} KiB per attacking connection; \
             {closed}/{ATTACKERS} attackers closed; {good}/100 good connections",
            before / 1024,
            peak / 1024,
            per / 1024
        );
        if kind != "PING flood, socket unread" && closed != ATTACKERS {
            failures.push(format!("{kind}: {closed}/{ATTACKERS} attackers closed"));
        }
        if per >= MAX_RSS_PER_ATTACKER {
            failures.push(format!("{kind}: {} KiB per connection", per / 1024));
        }
        if good != 100 {
            failures.push(format!("{kind}: {good}/100 good connections"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Runs all futures concurrently on this task.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: Vec<F>) {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// The start of a ClientHello: a handshake record announcing 512 bytes, of which 300 come.
fn partial_client_hello() -> Vec<u8> {
    let mut b = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    b.extend([0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
    b.extend(std::iter::repeat_n(0x2a, 300 - b.len()));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_tls_handshakes_cost_little_and_are_closed() {
    const N: usize = 3000;
    let net = Net { b: 101 };
    let mut mesh = TestMesh::new(&net.config());
    mesh.ztunnel("b", &["--access-log", "off"]);
    let pid = pid_of(&mesh, "b");
    let hello = partial_client_hello();
    let connect = |addr: SocketAddr, hello: Vec<u8>| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&hello).await.unwrap();
        s
    };
    // Warm up with a few.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(connect(net.hbone(), hello.clone()).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pid);
    let started = tokio::time::Instant::now();
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(connect(net.hbone(), hello.clone()).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss(pid);
    let per = after.saturating_sub(before) / N;
    eprintln!(
        "{N} unfinished TLS handshakes: ztunnel RSS {} KiB -> {} KiB, {per} bytes each",
        before / 1024,
        after / 1024
    );
    // The handshake timeout (default 10 s) closes each one: the client reads EOF.
    let mut closed = 0;
    for mut s in clients {
        let left = (started + Duration::from_secs(20))
            .saturating_duration_since(tokio::time::Instant::now());
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(left, s.read(&mut buf)).await {
            closed += 1;
        }
    }
    eprintln!(
        "{closed}/{N} closed by the handshake timeout after {:?}",
        started.elapsed()
    );
    assert!(per < 16 * 1024, "{per} bytes per unfinished handshake");
    assert_eq!(closed, N, "closed by the handshake timeout");
    drop(warm);
}
