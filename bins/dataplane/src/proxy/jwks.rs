//! JWKS for JWT authentication at the waypoint: each remote key source (`jwksUri`, or OpenID
//! discovery from the issuer) has one background task that fetches it over HTTP or HTTPS
//! (system roots), keeps the last good set when a fetch fails, refreshes it on an interval,
//! and refetches early when a request presents a key id the set lacks (keys rotated at the
//! issuer) — at most once per [`MIN_REFETCH`], so unknown key ids cannot flood the issuer.
//! Requests read the cached set without locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use mesh_authz::jwt::{KeySet, KeySource};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Shortest time between two fetches of one source.
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(2);
/// Largest JWKS or discovery document accepted.
const MAX_BODY: usize = 1 << 20;

struct Entry {
    keys: ArcSwapOption<KeySet>,
    /// Bumped after every fetch attempt, so waiters wake on failures too.
    version: watch::Sender<u64>,
    kick: Notify,
    stop: CancellationToken,
    timeout: Duration,
    last_error: std::sync::Mutex<Option<String>>,
}

/// The key sets of the remote sources the current config uses.
pub(crate) struct JwksCache {
    entries: ArcSwap<HashMap<KeySource, Arc<Entry>>>,
    refresh: Duration,
    mark: Option<u32>,
}

impl JwksCache {
    pub(crate) fn new(refresh: Duration, mark: Option<u32>) -> JwksCache {
        JwksCache {
            entries: ArcSwap::from_pointee(HashMap::new()),
            refresh,
            mark,
        }
    }

    /// Starts fetching the sources new in this config and stops those it no longer uses.
    /// Called under the proxy's apply lock.
    pub(crate) fn sync(
        &self,
        sources: impl IntoIterator<Item = (KeySource, Duration)>,
        parent: &CancellationToken,
    ) {
        let old = self.entries.load_full();
        let mut next = HashMap::new();
        for (src, timeout) in sources {
            if matches!(src, KeySource::Inline(_)) || next.contains_key(&src) {
                continue;
            }
            let entry = match old.get(&src) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(Entry {
                        keys: ArcSwapOption::empty(),
                        version: watch::channel(0).0,
                        kick: Notify::new(),
                        stop: parent.child_token(),
                        timeout,
                        last_error: std::sync::Mutex::new(None),
                    });
                    tokio::spawn(run(e.clone(), src.clone(), self.refresh, self.mark));
                    e
                }
            };
            next.insert(src, entry);
        }
        for (src, e) in old.iter() {
            if !next.contains_key(src) {
                e.stop.cancel();
            }
        }
        self.entries.store(Arc::new(next));
    }

    /// The cached keys of a source.
    pub(crate) fn get(&self, src: &KeySource) -> Option<Arc<KeySet>> {
        self.entries.load().get(src)?.keys.load_full()
    }

    /// Asks for a fetch now (subject to [`MIN_REFETCH`]) and waits for it, up to the
    /// source's timeout; returns the keys then cached.
    pub(crate) async fn refetch(&self, src: &KeySource) -> Option<Arc<KeySet>> {
        let entry = self.entries.load().get(src)?.clone();
        let mut rx = entry.version.subscribe();
        rx.borrow_and_update();
        entry.kick.notify_one();
        let wait = entry.timeout + MIN_REFETCH;
        let _ = tokio::time::timeout(wait, rx.changed()).await;
        entry.keys.load_full()
    }

    /// Sources, their key ids and last error, for `/config_dump`.
    pub(crate) fn dump(&self) -> serde_json::Value {
        let entries = self.entries.load();
        let mut out: Vec<serde_json::Value> = entries
            .iter()
            .map(|(src, e)| {
                serde_json::json!({
                    "source": src.to_string(),
                    "keyIds": e.keys.load().as_ref().map(|k| k.kids()),
                    "fetches": *e.version.borrow(),
                    "lastError": e.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                })
            })
            .collect();
        out.sort_by_key(|v| v["source"].to_string());
        serde_json::Value::Array(out)
    }
}

async fn run(entry: Arc<Entry>, src: KeySource, refresh: Duration, mark: Option<u32>) {
    let mut last_fetch: Option<tokio::time::Instant> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        if let Some(t) = last_fetch {
            tokio::select! {
                _ = entry.stop.cancelled() => return,
                _ = tokio::time::sleep_until(t + MIN_REFETCH) => {}
            }
        }
        last_fetch = Some(tokio::time::Instant::now());
        let next = match tokio::select! {
            _ = entry.stop.cancelled() => return,
            r = fetch_keys(&src, entry.timeout, mark) => r,
        } {
            Ok(set) => {
                info!(source = %src, kids = ?set.kids(), skipped = set.skipped, "JWKS fetched");
                entry.keys.store(Some(Arc::new(set)));
                *entry.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                backoff = Duration::from_secs(1);
                refresh
            }
            Err(e) => {
                warn!(source = %src, error = %e, "JWKS fetch failed; the last keys stay in use");
                *entry.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                let b = backoff;
                backoff = (backoff * 2).min(refresh);
                b.min(refresh)
            }
        };
        entry.version.send_modify(|v| *v += 1);
        tokio::select! {
            _ = entry.stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
            _ = entry.kick.notified() => {}
        }
    }
}

async fn fetch_keys(
    src: &KeySource,
    timeout: Duration,
    mark: Option<u32>,
) -> Result<KeySet, String> {
    let Some(url) = src.url() else {
        return Err("inline keys are not fetched".into());
    };
    let jwks_url = match src {
        KeySource::Discovery(_) => {
            let doc = get(&url, timeout, mark).await?;
            let v: serde_json::Value = serde_json::from_str(&doc)
                .map_err(|e| format!("{url}: discovery document is not JSON: {e}"))?;
            v.get("jwks_uri")
                .and_then(|u| u.as_str())
                .ok_or_else(|| format!("{url}: discovery document has no jwks_uri"))?
                .to_owned()
        }
        _ => url,
    };
    let body = get(&jwks_url, timeout, mark).await?;
    KeySet::parse(&body).map_err(|e| format!("{jwks_url}: {e}"))
}

async fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONFIG: tokio::sync::OnceCell<Arc<rustls::ClientConfig>> =
        tokio::sync::OnceCell::const_new();
    let cfg = CONFIG
        .get_or_try_init(|| async {
            let certs = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs)
                .await
                .map_err(|e| e.to_string())?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs.certs);
            if added == 0 {
                return Err("no system root certificates for https jwksUri".to_owned());
            }
            let cfg = rustls::ClientConfig::builder_with_provider(mesh_identity::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(cfg))
        })
        .await?;
    Ok(tokio_rustls::TlsConnector::from(cfg.clone()))
}

/// GET over HTTP/1.1, `200` and at most [`MAX_BODY`] bytes, within `timeout`.
async fn get(url: &str, timeout: Duration, mark: Option<u32>) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: not an http or https URL")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "mesh-waypoint")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let work = async {
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("{url}: resolve: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {host} has no address"))?;
        let tcp = mesh_hbone::connect_tcp(addr, mark, None)
            .await
            .map_err(|e| format!("{url}: connect: {e}"))?;
        if https {
            let name = rustls_pki_types_name(&host)?;
            let tls = tls_connector()
                .await?
                .connect(name, tcp)
                .await
                .map_err(|e| format!("{url}: TLS: {e}"))?;
            exchange(tls, req, url).await
        } else {
            exchange(tcp, req, url).await
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

fn rustls_pki_types_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))
}

async fn exchange<IO>(io: IO, req: http::Request<Empty<Bytes>>, url: &str) -> Result<String, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{url}: body: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: body is not UTF-8"))
}
