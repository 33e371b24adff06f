//! What the L7 servers (waypoint, sidecar both directions) accept, before any policy or route
//! looks at a request: limits on the connection (header bytes and count, time to send the
//! headers, HTTP/2 streams and resets) and checks of the request itself (method case, one
//! authority, headers only the mesh may set). Envoy's defaults where it has them.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_telemetry::metrics::ResponseFlags;

use super::http::upgrade::websocket;

/// Largest request head (request line and headers) or HTTP/2 header list (Envoy:
/// `max_request_headers_kb` 60).
pub(crate) const MAX_HEADER_BYTES: usize = 60 * 1024;
/// Most request headers (Envoy: `max_headers_count` 100).
pub(crate) const MAX_HEADERS: usize = 100;
/// Concurrent HTTP/2 streams per downstream or upstream connection.
const MAX_STREAMS: u32 = 100;
/// Streams reset by the peer before we accepted them, and streams we reset for its errors,
/// before the connection is closed (rapid reset, CVE-2023-44487).
const MAX_RESETS: usize = 50;
/// Bytes buffered for sending per HTTP/2 stream.
const MAX_SEND_BUF: usize = 1024 * 1024;
/// HTTP/2 keepalive: a PING after this much silence, and the connection closed if it is not
/// answered within the timeout.
const KEEPALIVE: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of an L7 server, settable per proxy.
#[derive(Debug, Clone, Copy)]
pub struct L7Limits {
    /// Time a client has to send a complete request head, also the longest an idle
    /// keep-alive HTTP/1.1 connection waits for its next request (slowloris).
    pub header_timeout: Duration,
}

impl Default for L7Limits {
    fn default() -> Self {
        L7Limits {
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// The HTTP/1.1 server with the limits: 431 for a head over [`MAX_HEADER_BYTES`] or more
/// than [`MAX_HEADERS`] headers, the connection closed when a head takes longer than
/// `header_timeout`.
pub(crate) fn h1_server(limits: &L7Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    b
}

/// The HTTP/2 server with the limits (header list, streams, resets, send buffer, keepalive).
pub(crate) fn h2_server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(MAX_RESETS)
        .max_local_error_reset_streams(MAX_RESETS)
        .max_send_buf_size(MAX_SEND_BUF)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        // RFC 8441 extended CONNECT, for WebSocket over HTTP/2 (other protocols refused).
        .enable_connect_protocol();
    b
}

/// The HTTP/2 client to upstreams with the same limits.
pub(crate) fn h2_client() -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_reset_streams(MAX_RESETS)
        .max_pending_accept_reset_streams(MAX_RESETS)
        .max_local_error_reset_streams(MAX_RESETS)
        .max_send_buf_size(MAX_SEND_BUF)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    b
}

/// Headers a client must not set: the mesh (or Envoy) sets them for its own peers.
fn mesh_only(name: &str) -> bool {
    name == "x-forwarded-client-cert" || name.starts_with("x-envoy-")
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header names a `Connection` header lists (trimmed, non-empty).
fn connection_names(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// Removes the hop-by-hop headers a proxy must not forward, and those the `Connection`
/// header names (RFC 9110 7.6.1), keeping `te: trailers` (the one hop-by-hop value HTTP/2
/// allows, which gRPC needs end to end).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let te_trailers = headers
        .get("te")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let named: Vec<String> = connection_names(headers)
        .map(str::to_ascii_lowercase)
        .collect();
    for n in named {
        headers.remove(n.as_str());
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    if te_trailers {
        headers.insert("te", HeaderValue::from_static("trailers"));
    }
}

/// Checks a request as it arrives and returns the authority that authorization, routing and
/// the upstream all use: 400 for a method not in upper case (Istio documents this), two
/// `Host` headers, or a `Host` that disagrees with the absolute-form URI or HTTP/2
/// `:authority`; the host's trailing dot is dropped and `Host` set to the result. Removes
/// headers only the mesh may set (`x-forwarded-client-cert`, `x-envoy-*`).
pub(crate) fn check_request<B>(req: &mut Request<B>) -> Result<String, (StatusCode, &'static str)> {
    let authority = checked_authority(req)?;
    // Headers the client names in `Connection` go before anything below reads the request
    // or the proxy adds to it (naming `Host` was refused above: it would drop the authority
    // that was authorized from the request the upstream gets). A WebSocket upgrade is noted
    // first: its `Upgrade`/`Connection` go back only on the request sent upstream.
    if websocket::is_websocket(req) {
        websocket::mark(req);
    } else if websocket::is_other_extended_connect(req) {
        return Err((
            StatusCode::NOT_IMPLEMENTED,
            "only WebSocket is supported over extended CONNECT\n",
        ));
    }
    strip_hop_by_hop(req.headers_mut());
    let v = HeaderValue::from_str(&authority)
        .map_err(|_| (StatusCode::BAD_REQUEST, "invalid authority\n"))?;
    req.headers_mut().insert(header::HOST, v);
    let forbidden: Vec<header::HeaderName> = req
        .headers()
        .keys()
        .filter(|n| mesh_only(n.as_str()))
        .cloned()
        .collect();
    for n in forbidden {
        req.headers_mut().remove(n);
    }
    Ok(authority)
}

/// The checks of [`check_request`] that read the request without changing it, and the
/// authority they yield (hop-by-hop headers cannot change it: a `Connection` naming `Host`
/// is refused).
pub(crate) fn checked_authority<B>(req: &Request<B>) -> Result<String, (StatusCode, &'static str)> {
    if req
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err((StatusCode::BAD_REQUEST, "method must be upper case\n"));
    }
    let names_host = connection_names(req.headers()).any(|n| n.eq_ignore_ascii_case("host"));
    if names_host {
        return Err((StatusCode::BAD_REQUEST, "Connection must not name Host\n"));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().map(|h| h.to_str());
    if hosts.next().is_some() {
        return Err((StatusCode::BAD_REQUEST, "more than one Host header\n"));
    }
    let host = match host {
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => return Err((StatusCode::BAD_REQUEST, "invalid Host header\n")),
        None => None,
    };
    let uri_authority = req.uri().authority().map(|a| a.as_str());
    let authority = match (host, uri_authority) {
        (Some(h), Some(u)) if !h.eq_ignore_ascii_case(u) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "Host does not match the request's authority\n",
            ));
        }
        (Some(h), _) => h,
        (None, Some(u)) => u,
        (None, None) => "",
    };
    let authority = normalize_authority(authority);
    // As Envoy: a request must name its host, and only as a host name or a bracketed IP
    // literal with an optional port (no `user@`, lists or bare IPv6 that upstreams could read
    // differently from the policy).
    if authority.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "missing Host\n"));
    }
    if !valid_authority(&authority) {
        return Err((StatusCode::BAD_REQUEST, "invalid Host\n"));
    }
    Ok(authority)
}

/// [`check_request`] as the request path's guard: refusals are answered 400 (`DPE`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hygiene;

impl mesh_l7::layer::Guard for Hygiene {
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), mesh_l7::layer::Refusal> {
        check_request(req)
            .map(drop)
            .map_err(|(status, body)| mesh_l7::layer::Refusal {
                status,
                body,
                flags: ResponseFlags::DownstreamProtocolError,
            })
    }
}

/// `host[:port]` with a host of letters, digits, `.`, `-`, `_`, or `[IPv6][:port]`.
fn valid_authority(a: &str) -> bool {
    let (host, port) = match a.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((ip, rest)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => ("[", rest),
            _ => return false,
        },
        None => match a.split_once(':') {
            Some((h, p)) => (h, p),
            None => (a, ""),
        },
    };
    let port = match (host, port) {
        ("[", "") => return true,
        ("[", p) => match p.strip_prefix(':') {
            Some(p) => p,
            None => return false,
        },
        (_, p) => p,
    };
    let host_ok = host == "["
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    let port_ok = (port.is_empty() && !a.ends_with(':')) || port.parse::<u16>().is_ok();
    host_ok && port_ok
}

/// Lower case, without the host's trailing dot (`Example.com.:80` → `example.com:80`).
fn normalize_authority(a: &str) -> String {
    let lower = a.to_ascii_lowercase();
    // Every trailing dot, of the value and of the host: `a..` as `a.` would escape a policy
    // on `a`, and normalizing the result again would change it.
    let a = lower.trim_end_matches('.');
    let (host, port) = match a.rsplit_once(':') {
        // `host:port` or `[v6]:port`; a bare IPv6 address has no port.
        Some((h, p))
            if (!h.contains(':') || h.ends_with(']'))
                && !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (h, Some(p))
        }
        _ => (a, None),
    };
    let host = host.trim_end_matches('.');
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

#[cfg(test)]
#[path = "hygiene_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, hosts: &[&str], extra: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn lower_case_method_is_refused() {
        let mut r = req("get", "/admin", &["a"], &[]);
        assert_eq!(
            check_request(&mut r).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
        let mut r = req("GET", "/admin", &["a"], &[]);
        assert!(check_request(&mut r).is_ok());
    }

    #[test]
    fn duplicate_or_conflicting_host_is_refused() {
        let mut r = req("GET", "/", &["a.example", "b.example"], &[]);
        assert!(check_request(&mut r).is_err());
        let mut r = req("GET", "http://evil.example/x", &["good.example"], &[]);
        assert!(check_request(&mut r).is_err());
        let mut r = req("GET", "http://Good.example/x", &["good.example"], &[]);
        assert_eq!(check_request(&mut r).unwrap(), "good.example");
    }

    #[test]
    fn trailing_dot_is_normalized_and_host_set() {
        let mut r = req("GET", "/", &["Echo.Demo.svc.:8080"], &[]);
        assert_eq!(check_request(&mut r).unwrap(), "echo.demo.svc:8080");
        assert_eq!(r.headers()[header::HOST], "echo.demo.svc:8080");
        assert_eq!(normalize_authority("[::1]:80"), "[::1]:80");
        assert_eq!(normalize_authority("a.b."), "a.b");
    }

    #[test]
    fn missing_odd_or_connection_dropped_host_is_refused() {
        for (hosts, extra) in [
            (vec![], vec![]),
            (vec![""], vec![]),
            (vec!["."], vec![]),
            (vec!["x@admin.example"], vec![]),
            (vec!["admin.example, b"], vec![]),
            (vec!["::1"], vec![]),
            (vec!["a.example:99999"], vec![]),
            (vec!["a.example:"], vec![]),
            (vec!["a.example"], vec![("connection", "Host")]),
        ] {
            let mut r = req("GET", "/", &hosts, &extra);
            assert_eq!(
                check_request(&mut r).map_err(|e| e.0),
                Err(StatusCode::BAD_REQUEST),
                "{hosts:?} {extra:?}"
            );
        }
        for ok in [
            "a.example",
            "a-b_c.example:8080",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:80",
        ] {
            let mut r = req("GET", "/", &[ok], &[]);
            assert!(check_request(&mut r).is_ok(), "{ok}");
        }
    }

    #[test]
    fn spoofed_mesh_headers_are_stripped() {
        let mut r = req(
            "GET",
            "/",
            &["a"],
            &[
                (
                    "x-forwarded-client-cert",
                    "By=spiffe://x;URI=spiffe://admin",
                ),
                ("x-envoy-original-path", "/admin"),
                ("x-user", "kept"),
            ],
        );
        check_request(&mut r).unwrap();
        assert!(r.headers().get("x-forwarded-client-cert").is_none());
        assert!(r.headers().get("x-envoy-original-path").is_none());
        assert_eq!(r.headers()["x-user"], "kept");
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-ok", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-ok"], "1");
    }
}
