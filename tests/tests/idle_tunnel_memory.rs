//! The heap an idle tunnel keeps, in both ztunnels of an in-process pair (issue 18's "memory
//! per idle tunnel" row, and a guard: async futures grow silently as paths are added — the
//! figure once regressed from 6.4 to 47 KiB unnoticed). Live bytes are counted with a counting
//! allocator (the process's: its own test binary), so the figure is exact and independent of
//! the machine's load; the echo server and the client sockets are subtracted by the same count
//! over direct connections. Block 127.230.x.x.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
// Test-only: a counting global allocator needs `unsafe impl GlobalAlloc`; it only delegates
// to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use mesh_tests::inproc::InprocMesh;
use mesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds GlobalAlloc's
// contract; the counter has no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc` with `l` (alloc above).
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Tunnels held open at once: enough that per-connection costs dwarf one-off growth (a slab
/// or map doubling), few enough for the test's file-descriptor limit.
const N: usize = 200;
/// The bound on both proxies' heap per idle tunnel. Measured 8.2 KiB in a debug build (whose
/// futures are larger than a release build's) with the test's debug-level logging (a span per
/// connection); it was 17.5 KiB before the byte pump dropped its idle buffer and the tunnel's
/// task stopped holding its futures twice. The release figure, against the 8 KiB for
/// the pair, is `meshctl bench`'s (BENCHMARKS.md).
const MAX_PER_TUNNEL: i64 = 10 * 1024;

/// `N` connections from the client to `dst`, each having echoed one byte, held open.
async fn open_idle(client: std::net::IpAddr, dst: SocketAddr) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = connect_from(client, dst).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        conns.push(s);
    }
    conns
}

/// Live heap bytes once the connections' work has settled.
async fn settled() -> i64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    LIVE.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_keeps_a_few_kib_in_the_pair() {
    let net = Net { b: 230 };
    let mut mesh = InprocMesh::new(&net.config());
    echo_server(net.app()).await;
    mesh.ztunnel("b", &[]).await;
    mesh.ztunnel("a", &[]).await;
    // Warm: certificates, the pooled HBONE connection, metric series, log buffers.
    drop(open_idle(net.client(), net.vip()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // What the echo server and the client keep per connection, without the mesh.
    let before = settled().await;
    let direct = open_idle(net.client(), net.app()).await;
    let plain = settled().await - before;
    drop(direct);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = settled().await;
    let tunnels = open_idle(net.client(), net.vip()).await;
    let meshed = settled().await - before;
    let per_tunnel = (meshed - plain) / N as i64;
    println!(
        "heap per idle tunnel (both ztunnels): {per_tunnel} bytes \
         (through the mesh {meshed}, direct {plain}, {N} connections)"
    );
    assert!(
        per_tunnel <= MAX_PER_TUNNEL,
        "an idle tunnel keeps {per_tunnel} bytes of heap in the pair (bound {MAX_PER_TUNNEL})"
    );
    assert!(per_tunnel > 0, "the count sees the tunnels: {per_tunnel}");
    drop(tunnels);
    for p in &mut mesh.procs {
        assert!(p.stop().await, "{} stops cleanly", p.name);
    }
}
