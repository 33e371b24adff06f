//! An in-process HBONE server for attack tests: a local CA, a client identity for the
//! attacker and for good clients, an echo application, and the outcome of every connection.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_hbone::headers::ConnectHeaders;
use mesh_hbone::{
    ConnectRequest, Error, H2Settings, Pool, PoolConfig, accept_tls, serve_connection,
};
use mesh_identity::{CertStore, LocalCa, SpiffeId, TrustBundle, TrustDomain, server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The authority attack streams ask for: counted, held for `handler_delay` (an upstream
/// connect), then refused 503.
pub const SINK: &str = "127.0.0.2:9";

pub struct Server {
    pub _dir: tempfile::TempDir,
    pub ca: LocalCa,
    pub bundle: TrustBundle,
    pub client: Arc<CertStore>,
    pub server_id: SpiffeId,
    pub addr: SocketAddr,
    /// Echoes what it reads.
    pub echo: SocketAddr,
    /// Writes 1 MiB as soon as connected, then waits.
    pub talker: SocketAddr,
    /// CONNECTs to [`SINK`] the handler was called for.
    pub sunk: Arc<AtomicUsize>,
    /// How each connection ended, by the client's address.
    pub outcomes: Arc<Mutex<HashMap<SocketAddr, Result<(), Error>>>>,
    pub cancel: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub async fn start(settings: H2Settings, handler_delay: Duration) -> Server {
    start_with(settings, handler_delay, Duration::from_secs(5)).await
}

pub async fn start_with(
    settings: H2Settings,
    handler_delay: Duration,
    handshake_timeout: Duration,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
    let bundle = ca.trust_bundle().unwrap();
    let td: TrustDomain = "cluster.local".parse().unwrap();
    let server_id = SpiffeId::new(&td, "ns", "server").unwrap();
    let client = CertStore::fixed(
        ca.issue(&SpiffeId::new(&td, "ns", "client").unwrap())
            .unwrap(),
    );
    let server_certs = CertStore::fixed(ca.issue(&server_id).unwrap());
    let cancel = CancellationToken::new();

    let echo_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = echo_l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo_l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let talker_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let talker = talker_l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = talker_l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(&vec![7u8; 1 << 20]).await;
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            });
        }
    });

    let tls = server_config(server_certs, &bundle, vec![td]).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sunk = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(HashMap::new()));
    let (c, s2, o2) = (cancel.clone(), sunk.clone(), outcomes.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                a = l.accept() => match a { Ok(x) => x, Err(_) => return },
                () = c.cancelled() => return,
            };
            let (tls, cancel, sunk, outcomes, settings) = (
                tls.clone(),
                c.clone(),
                s2.clone(),
                o2.clone(),
                settings.clone(),
            );
            tokio::spawn(async move {
                let (s, info) = match accept_tls(tcp, tls, handshake_timeout).await {
                    Ok(x) => x,
                    Err(e) => {
                        outcomes.lock().unwrap().insert(peer, Err(e));
                        return;
                    }
                };
                let r = serve_connection(s, info, &settings, cancel, move |req| {
                    let sunk = sunk.clone();
                    let to_sink = req.authority.to_string() == SINK;
                    if to_sink {
                        sunk.fetch_add(1, Ordering::SeqCst);
                    }
                    async move {
                        if to_sink {
                            tokio::time::sleep(handler_delay).await;
                            return req.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
                        }
                        let Ok(mut app) = TcpStream::connect(req.authority).await else {
                            return req.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
                        };
                        if let Ok(t) = req.accept() {
                            let (mut r, mut w) = app.split();
                            let _ = mesh_hbone::copy_bidirectional(&mut r, &mut w, t, &()).await;
                        }
                    }
                })
                .await;
                outcomes.lock().unwrap().insert(peer, r);
            });
        }
    });
    Server {
        _dir: dir,
        ca,
        bundle,
        client,
        server_id,
        addr,
        echo,
        talker,
        sunk,
        outcomes,
        cancel,
    }
}

impl Server {
    /// Waits up to `timeout` for the connection from `peer` to end; its outcome.
    pub async fn outcome(&self, peer: SocketAddr, timeout: Duration) -> Option<Result<(), Error>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.outcomes.lock().unwrap().remove(&peer) {
                return Some(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn request(&self, authority: SocketAddr) -> ConnectRequest {
        ConnectRequest {
            source: self.client.clone(),
            destination_identity: self.server_id.clone(),
            hbone_addr: self.addr,
            authority,
            headers: ConnectHeaders::default().to_header_map(),
            socket_source: None,
        }
    }

    /// `n` good clients, each on its own HBONE connection, each echoing a message while the
    /// others are open: how many got their bytes back.
    pub async fn good_connections(&self, n: usize) -> usize {
        let pool = Pool::new(
            PoolConfig {
                max_streams_per_connection: 1,
                ..Default::default()
            },
            self.bundle.clone(),
        );
        let mut tasks = Vec::new();
        // Every tunnel stays open until all have echoed: n connections at once.
        let all = Arc::new(tokio::sync::Barrier::new(n));
        for i in 0..n {
            let (pool, req, all) = (pool.clone(), self.request(self.echo), all.clone());
            tasks.push(tokio::spawn(async move {
                let tunnel =
                    async {
                        let mut t =
                            match tokio::time::timeout(Duration::from_secs(20), pool.connect(req))
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
                        tokio::time::timeout(Duration::from_secs(20), t.read_to_string(&mut back))
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
