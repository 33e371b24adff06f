//! The declared protocol of a service port ([`Protocol`]): Istio's port `protocol` (or the
//! prefix of the port's name, `http-web`), or the workload API's `app_protocol`. The data
//! paths ask it questions ([`Protocol::is_http`], [`Protocol::h2`]) instead of comparing
//! strings.

use std::fmt;

/// A service port's declared protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `HTTP`: HTTP/1.1 (HTTP/2 upgrades are not proxied per request).
    Http,
    /// `HTTPS`: TLS the proxy does not terminate; carried as TCP.
    Https,
    /// `HTTP2`: HTTP/2 with prior knowledge on both legs.
    Http2,
    /// `GRPC`: HTTP/2 with prior knowledge on both legs.
    Grpc,
    /// `GRPC-WEB`: carried as TCP.
    GrpcWeb,
    /// `TLS`: carried as TCP.
    Tls,
    /// `TCP`.
    Tcp,
    /// `MONGO`: carried as TCP.
    Mongo,
    /// `MYSQL`: carried as TCP.
    Mysql,
    /// `REDIS`: carried as TCP.
    Redis,
    /// Not declared: sniffed where an HTTP layer is on (Istio's protocol detection).
    Auto,
}

/// The protocols a file may declare, by their Istio names.
pub(crate) const DECLARED: &[(&str, Protocol)] = &[
    ("HTTP", Protocol::Http),
    ("HTTPS", Protocol::Https),
    ("HTTP2", Protocol::Http2),
    ("GRPC", Protocol::Grpc),
    ("GRPC-WEB", Protocol::GrpcWeb),
    ("TLS", Protocol::Tls),
    ("TCP", Protocol::Tcp),
    ("MONGO", Protocol::Mongo),
    ("MYSQL", Protocol::Mysql),
    ("REDIS", Protocol::Redis),
];

impl Protocol {
    /// The declared protocol named `name` (Istio's names, any case); `None` if unknown.
    pub fn parse(name: &str) -> Option<Protocol> {
        DECLARED
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| *p)
    }

    /// Istio's name (`AUTO` when not declared).
    pub fn name(self) -> &'static str {
        DECLARED
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("AUTO", |(n, _)| n)
    }

    /// HTTP, or possibly HTTP (not declared: sniffed): proxied per request where an HTTP
    /// layer is on.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::Auto
        )
    }

    /// Declared HTTP, the version known: `Some(true)` for HTTP/2 (`HTTP2`, `GRPC`),
    /// `Some(false)` for HTTP/1.1; `None` when not declared HTTP.
    pub fn h2(self) -> Option<bool> {
        match self {
            Protocol::Http => Some(false),
            Protocol::Http2 | Protocol::Grpc => Some(true),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_questions() {
        for (name, p) in DECLARED {
            assert_eq!(Protocol::parse(name), Some(*p));
            assert_eq!(Protocol::parse(&name.to_ascii_lowercase()), Some(*p));
            assert_eq!(p.name(), *name);
        }
        assert_eq!(Protocol::parse("AUTO"), None);
        assert_eq!(Protocol::parse("FOO"), None);
        assert_eq!(Protocol::Auto.name(), "AUTO");
        assert!(Protocol::Auto.is_http() && Protocol::Auto.h2().is_none());
        assert!(!Protocol::Tcp.is_http() && !Protocol::Https.is_http());
        assert_eq!(Protocol::Grpc.h2(), Some(true));
        assert_eq!(Protocol::Http.h2(), Some(false));
    }
}
