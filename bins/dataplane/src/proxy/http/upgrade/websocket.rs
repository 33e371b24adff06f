//! What a WebSocket upgrade is (the request side) and the counters of upgraded connections:
//! a leaf module, shared by the hygiene check, the telemetry and the pass-through.

use std::sync::Arc;

use http::{Method, Request, Version, header};
use hyper::ext::Protocol;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

/// In a request's extensions: it asked to upgrade to WebSocket (its hop-by-hop headers were
/// removed; [`super::prepare`] puts them back for the upstream).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WebSocket;

/// Marks a WebSocket upgrade ([`is_websocket`]) and presents it to the stack in one form
/// whatever the client spoke: `GET` with the [`WebSocket`] marker. An HTTP/2 extended
/// `CONNECT` (RFC 8441) becomes a `GET` without its `:protocol`, as Envoy turns it into an
/// HTTP/1-style upgrade for its filters: authorization, ext_authz, routing and rate-limit
/// descriptors keyed on the method see the same `GET` as for the HTTP/1.1 form, so a rule on
/// `GET` cannot be skipped by speaking HTTP/2. [`super::prepare`] restores the upstream's form.
pub(crate) fn mark<B>(req: &mut Request<B>) {
    if req.method() == Method::CONNECT {
        *req.method_mut() = Method::GET;
        req.extensions_mut().remove::<Protocol>();
    }
    req.extensions_mut().insert(WebSocket);
}

/// Upgraded (WebSocket) pairs a proxy keeps open at most: each holds two connections and two
/// copy buffers (32 KiB), so one client opening pairs cannot exhaust memory or descriptors.
pub(crate) const MAX_UPGRADED: usize = 4096;

/// Upgraded connections and their bytes, in the proxy's metrics, and the cap on open pairs.
#[derive(Debug, Clone)]
pub(crate) struct UpgradeMetrics {
    /// Slots of open upgraded pairs ([`MAX_UPGRADED`]).
    pub(super) slots: Arc<Semaphore>,
    /// Upgrades answered 503 because the proxy had its cap of open pairs.
    pub(super) over_cap: Counter,
    /// Connections joined after a 101.
    pub(super) joined: Counter,
    /// Bytes copied client → upstream.
    pub(super) bytes_up: Counter,
    /// Bytes copied upstream → client.
    pub(super) bytes_down: Counter,
    /// Upstream 101s refused because the client did not ask to upgrade.
    pub(super) unasked: Counter,
}

impl Default for UpgradeMetrics {
    fn default() -> Self {
        UpgradeMetrics::with_cap(MAX_UPGRADED)
    }
}

impl UpgradeMetrics {
    /// Counters at zero and `cap` open pairs at most.
    pub(crate) fn with_cap(cap: usize) -> UpgradeMetrics {
        UpgradeMetrics {
            slots: Arc::new(Semaphore::new(cap)),
            over_cap: Counter::default(),
            joined: Counter::default(),
            bytes_up: Counter::default(),
            bytes_down: Counter::default(),
            unasked: Counter::default(),
        }
    }

    /// The counters, registered in `r` (the `mesh_` sub-registry).
    pub(crate) fn register(r: &mut Registry) -> UpgradeMetrics {
        let m = UpgradeMetrics::default();
        r.register(
            "upgrade_over_cap",
            "WebSocket upgrades answered 503 because the proxy had its cap of open upgraded connections",
            m.over_cap.clone(),
        );
        r.register(
            "upgraded_connections",
            "HTTP connections upgraded (WebSocket) and joined to their upstream after a 101",
            m.joined.clone(),
        );
        r.register(
            "upgraded_sent_bytes",
            "Bytes of upgraded (WebSocket) connections copied from the client to the upstream",
            m.bytes_up.clone(),
        );
        r.register(
            "upgraded_received_bytes",
            "Bytes of upgraded (WebSocket) connections copied from the upstream to the client",
            m.bytes_down.clone(),
        );
        r.register(
            "upgrade_refused",
            "Upstream 101 responses answered 502 because the client had not asked to upgrade",
            m.unasked.clone(),
        );
        m
    }
}

/// Whether `req` is a WebSocket upgrade: HTTP/1.1 `GET` with `Connection` listing `upgrade`
/// and `Upgrade: websocket` (case-insensitive, alone: a list such as `h2c, websocket` is
/// not honoured), or an HTTP/2 extended `CONNECT` with `:protocol websocket`.
pub(crate) fn is_websocket<B>(req: &Request<B>) -> bool {
    if req.version() == Version::HTTP_2 {
        return req.method() == Method::CONNECT
            && req
                .extensions()
                .get::<Protocol>()
                .is_some_and(|p| p.as_str() == "websocket");
    }
    if req.version() != Version::HTTP_11 || req.method() != Method::GET {
        return false;
    }
    let mut upgrades = req.headers().get_all(header::UPGRADE).iter();
    let websocket = upgrades
        .next()
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    websocket && upgrades.next().is_none() && connection_upgrade
}

/// Whether `req` is an HTTP/2 extended `CONNECT` for another protocol than `websocket`
/// (refused: only WebSocket is passed through, as Istio's default `upgrade_configs`).
pub(crate) fn is_other_extended_connect<B>(req: &Request<B>) -> bool {
    req.extensions()
        .get::<Protocol>()
        .is_some_and(|p| p.as_str() != "websocket" || req.method() != Method::CONNECT)
}
