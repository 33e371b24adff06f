//! The server workload of the bench (an HTTP echo and a TCP sink) and `meshctl bench-relay`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::out::say;

/// HTTP echo port.
pub(crate) const HTTP_PORT: u16 = 8080;
/// TCP sink port.
pub(crate) const TCP_PORT: u16 = 5001;

/// How a bench server answers: normally, late, or with errors (the bad endpoint of
/// `--bad-endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Behaviour {
    /// Answers at once.
    #[default]
    Normal,
    /// Answers every request this late.
    Slow(std::time::Duration),
    /// Answers every request with 503.
    Failing,
}

/// The server workload on `ip`: an HTTP echo and a TCP sink.
pub(crate) async fn start_servers(ip: std::net::IpAddr) -> anyhow::Result<()> {
    start_servers_as(ip, Behaviour::Normal).await
}

/// The server workload on `ip`, answering HTTP as `how`.
pub(crate) async fn start_servers_as(ip: std::net::IpAddr, how: Behaviour) -> anyhow::Result<()> {
    let http = TcpListener::bind(SocketAddr::new(ip, HTTP_PORT))
        .await
        .with_context(|| format!("bind {ip}:{HTTP_PORT}"))?;
    let tcp = TcpListener::bind(SocketAddr::new(ip, TCP_PORT))
        .await
        .with_context(|| format!("bind {ip}:{TCP_PORT}"))?;
    tokio::spawn(async move {
        while let Ok((s, _)) = http.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = if req.method() == hyper::Method::POST {
                        req.into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default()
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    let mut resp = Response::new(Full::new(body));
                    match how {
                        Behaviour::Normal => {}
                        Behaviour::Slow(d) => tokio::time::sleep(d).await,
                        Behaviour::Failing => {
                            *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        }
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(total.to_string().as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(())
}

/// `meshctl bench-relay`: a plain TCP forwarder for the relay-pair floor topology.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RelayArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    to: SocketAddr,
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

pub(crate) fn relay_main(args: RelayArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::out::fail(e),
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        let l = TcpListener::bind(args.listen).await?;
        say!("ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (mut down, _) = tokio::select! {
                _ = term.recv() => return Ok(()),
                r = l.accept() => r?,
            };
            let to = args.to;
            tokio::spawn(async move {
                let _ = down.set_nodelay(true);
                if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                    let _ = up.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::out::fail(e),
    }
}
