//! HBONE CONNECT request headers, as Istio's ztunnel sends them.
//!
//! - `Forwarded: for="<client ip:port>"` (RFC 7239, quoted because of the port; IPv6 bracketed),
//!   plus `;host=<service hostname>` when the destination was a service.
//! - `baggage` (W3C): `k8s.cluster.name`, `k8s.namespace.name`, `k8s.<kind>.name`,
//!   `service.name`, `service.version`, `cloud.region`, `cloud.availability_zone` of the source
//!   workload (istio/ztunnel `src/baggage.rs`); the destination answers its own in the 200
//!   (Istio 1.29+, `ENABLE_RESPONSE_BAGGAGE`).
//! - `traceparent` (W3C trace context): kept when valid, generated when absent.

use std::fmt::Write as _;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

/// `forwarded` header name.
pub const FORWARDED: HeaderName = http::header::FORWARDED;
/// `baggage` header name.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// `traceparent` header name.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Source-workload facts carried in the `baggage` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    /// `k8s.cluster.name`
    pub cluster: Option<String>,
    /// `k8s.namespace.name`
    pub namespace: Option<String>,
    /// Workload kind for `k8s.<kind>.name` (e.g. `deployment`, `workloadentry`).
    pub workload_kind: Option<String>,
    /// Workload name for `k8s.<kind>.name`.
    pub workload_name: Option<String>,
    /// `service.name` (canonical service).
    pub service_name: Option<String>,
    /// `service.version` (canonical revision).
    pub service_version: Option<String>,
    /// `cloud.region` (locality region).
    pub region: Option<String>,
    /// `cloud.availability_zone` (locality zone).
    pub zone: Option<String>,
}

fn baggage_safe(v: &str) -> bool {
    // W3C baggage values: no whitespace, comma, semicolon, backslash, quote or control chars.
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'\\' | b'"'))
}

impl Baggage {
    /// Encodes as a `baggage` header value; fields with unsafe characters are left out.
    pub fn to_header_value(&self) -> Option<HeaderValue> {
        let mut s = String::new();
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v.as_deref().filter(|v| baggage_safe(v)) {
                if !s.is_empty() {
                    s.push(',');
                }
                let _ = write!(s, "{k}={v}");
            }
        };
        push("k8s.cluster.name", &self.cluster);
        push("k8s.namespace.name", &self.namespace);
        if let Some(kind) = self.workload_kind.as_deref().filter(|k| baggage_safe(k)) {
            push(&format!("k8s.{kind}.name"), &self.workload_name);
        }
        push("service.name", &self.service_name);
        push("service.version", &self.service_version);
        push("cloud.region", &self.region);
        push("cloud.availability_zone", &self.zone);
        if s.is_empty() {
            return None;
        }
        HeaderValue::from_str(&s).ok()
    }

    /// Parses a `baggage` header value; unknown keys are ignored.
    pub fn parse(value: &str) -> Baggage {
        let mut b = Baggage::default();
        for member in value.split(',') {
            let member = member.split(';').next().unwrap_or_default().trim();
            let Some((k, v)) = member.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim().to_owned());
            match k {
                "k8s.cluster.name" => b.cluster = Some(v),
                "k8s.namespace.name" => b.namespace = Some(v),
                "service.name" => b.service_name = Some(v),
                "service.version" => b.service_version = Some(v),
                "cloud.region" => b.region = Some(v),
                "cloud.availability_zone" => b.zone = Some(v),
                _ => {
                    if let Some(kind) = k
                        .strip_prefix("k8s.")
                        .and_then(|r| r.strip_suffix(".name"))
                        .filter(|kind| !kind.contains('.') && !kind.is_empty())
                    {
                        b.workload_kind = Some(kind.to_owned());
                        b.workload_name = Some(v);
                    }
                }
            }
        }
        b
    }
}

/// Builds the `Forwarded` value: `for="<addr>"` and `;host=<host>` when known.
pub fn forwarded_value(client: SocketAddr, host: Option<&str>) -> Option<HeaderValue> {
    let mut s = format!("for=\"{client}\"");
    if let Some(h) = host
        && !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
    {
        let _ = write!(s, ";host={h}");
    }
    HeaderValue::from_str(&s).ok()
}

/// Reads the client address from the first `for=` of a `Forwarded` value.
pub fn parse_forwarded_for(value: &str) -> Option<SocketAddr> {
    let first = value.split(',').next()?;
    for pair in first.split(';') {
        let (k, v) = pair.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("for") {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            return v.parse().ok();
        }
    }
    None
}

/// A fresh W3C `traceparent` (version 00, random trace and span ids, sampled).
pub fn new_traceparent() -> HeaderValue {
    let ids = random_bytes::<24>();
    let mut s = [0u8; 55];
    s[..3].copy_from_slice(b"00-");
    hex_into(&mut s[3..35], &ids[..16]);
    s[35] = b'-';
    hex_into(&mut s[36..52], &ids[16..]);
    s[52..].copy_from_slice(b"-01");
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&s).unwrap_or_else(|_| HeaderValue::from_static("00-0-0-00"))
}

/// A new `x-request-id`: a random UUID (version 4), as Envoy generates.
pub fn new_request_id() -> HeaderValue {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = [b'-'; 36];
    for (range, bytes) in [
        (0..8, &b[0..4]),
        (9..13, &b[4..6]),
        (14..18, &b[6..8]),
        (19..23, &b[8..10]),
        (24..36, &b[10..16]),
    ] {
        hex_into(&mut s[range], bytes);
    }
    HeaderValue::from_bytes(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Random bytes for trace and request ids (not secrets: ids need uniqueness, not secrecy).
/// The RNG failing gives fixed, valid-but-obvious ids rather than failing the request
/// (an all-zero trace id would be invalid).
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        b = [1u8; N];
    }
    b
}

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (o, b) in out.chunks_exact_mut(2).zip(bytes) {
        o[0] = HEX[usize::from(b >> 4)];
        o[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Whether a `traceparent` value is well-formed (version 00 layout, non-zero ids).
pub fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// The headers of one CONNECT request.
#[derive(Debug, Clone, Default)]
pub struct ConnectHeaders {
    /// The original client address (`Forwarded: for=`).
    pub client: Option<SocketAddr>,
    /// The service hostname the client asked for (`Forwarded: ;host=`).
    pub host: Option<String>,
    /// Source workload facts.
    pub baggage: Baggage,
    /// An incoming `traceparent` to propagate; a new one is generated when absent or invalid.
    pub traceparent: Option<String>,
}

impl ConnectHeaders {
    /// Encodes into a header map.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(3);
        if let Some(c) = self.client
            && let Some(v) = forwarded_value(c, self.host.as_deref())
        {
            h.insert(FORWARDED, v);
        }
        if let Some(v) = self.baggage.to_header_value() {
            h.insert(BAGGAGE, v);
        }
        let tp = self
            .traceparent
            .as_deref()
            .filter(|t| valid_traceparent(t))
            .and_then(|t| HeaderValue::from_str(t).ok())
            .unwrap_or_else(new_traceparent);
        h.insert(TRACEPARENT, tp);
        h
    }

    /// Decodes from a header map (unknown or malformed values are dropped).
    pub fn from_header_map(h: &HeaderMap) -> ConnectHeaders {
        let s = |n: &HeaderName| h.get(n).and_then(|v| v.to_str().ok());
        let fwd = s(&FORWARDED);
        ConnectHeaders {
            client: fwd.and_then(parse_forwarded_for),
            host: fwd.and_then(|f| {
                f.split(',').next()?.split(';').find_map(|p| {
                    let (k, v) = p.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("host").then(|| v.to_owned())
                })
            }),
            baggage: s(&BAGGAGE).map(Baggage::parse).unwrap_or_default(),
            traceparent: s(&TRACEPARENT)
                .filter(|t| valid_traceparent(t))
                .map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forwarded_format() {
        let v = forwarded_value("10.0.0.1:4567".parse().unwrap(), Some("echo.demo.svc")).unwrap();
        assert_eq!(v, "for=\"10.0.0.1:4567\";host=echo.demo.svc");
        let v = forwarded_value("[2001:db8::1]:80".parse().unwrap(), None).unwrap();
        assert_eq!(v, "for=\"[2001:db8::1]:80\"");
        assert_eq!(
            parse_forwarded_for("for=\"[2001:db8::1]:80\";host=x"),
            Some("[2001:db8::1]:80".parse().unwrap())
        );
        assert_eq!(parse_forwarded_for("for=unknown"), None);
    }

    #[test]
    fn baggage_roundtrip() {
        let b = Baggage {
            cluster: Some("Kubernetes".into()),
            namespace: Some("demo".into()),
            workload_kind: Some("workloadentry".into()),
            workload_name: Some("client".into()),
            service_name: Some("client".into()),
            service_version: Some("v1".into()),
            region: Some("us-east1".into()),
            zone: Some("us-east1-b".into()),
        };
        let v = b.to_header_value().unwrap();
        // Key order and names as istio/ztunnel `src/baggage.rs` `baggage_header_val`.
        assert_eq!(
            v,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.workloadentry.name=client,service.name=client,service.version=v1,cloud.region=us-east1,cloud.availability_zone=us-east1-b"
        );
        assert_eq!(Baggage::parse(v.to_str().unwrap()), b);
    }

    #[test]
    fn traceparent_generated_and_validated() {
        let t = new_traceparent();
        assert!(valid_traceparent(t.to_str().unwrap()), "{t:?}");
        assert!(!valid_traceparent(
            "00-00000000000000000000000000000000-0000000000000001-01"
        ));
        let h = ConnectHeaders {
            traceparent: Some("garbage".into()),
            ..Default::default()
        }
        .to_header_map();
        assert!(valid_traceparent(h[&TRACEPARENT].to_str().unwrap()));
        let keep = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = ConnectHeaders {
            traceparent: Some(keep.into()),
            ..Default::default()
        }
        .to_header_map();
        assert_eq!(h[&TRACEPARENT], keep);
    }

    proptest! {
        #[test]
        fn forwarded_roundtrip(ip in any::<std::net::IpAddr>(), port in any::<u16>(), host in proptest::option::of("[a-z0-9.-]{1,30}")) {
            let a = SocketAddr::new(ip, port);
            let v = forwarded_value(a, host.as_deref()).unwrap();
            let mut m = HeaderMap::new();
            m.insert(FORWARDED, v);
            let h = ConnectHeaders::from_header_map(&m);
            prop_assert_eq!(h.client, Some(a));
            prop_assert_eq!(h.host, host);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,100}") {
            let _ = parse_forwarded_for(&s);
            let _ = Baggage::parse(&s);
            let _ = valid_traceparent(&s);
        }
    }

    #[test]
    fn generated_ids_are_well_formed() {
        for _ in 0..100 {
            let tp = new_traceparent();
            assert!(valid_traceparent(tp.to_str().unwrap()), "{tp:?}");
            let id = new_request_id();
            let id = id.to_str().unwrap();
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(parts[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(&parts[3][..1], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
            assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        }
        assert_ne!(new_request_id(), new_request_id());
    }
}
