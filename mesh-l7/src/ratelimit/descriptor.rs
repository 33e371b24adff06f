//! Rate limit descriptors as Envoy makes them from a route's `rate_limits`: each entry's
//! actions, in order, each add one `(key, value)`; an action that cannot produce its entry
//! (a header absent without `skip_if_absent`, headers not matching) drops the whole
//! descriptor (`envoy.config.route.v3.RateLimit.Action` docs).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};

/// A descriptor: ordered `(key, value)` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The entries.
    pub entries: Vec<(String, String)>,
}

/// The request facts the actions read.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a str,
    /// Path with the query.
    pub path: &'a str,
    /// Authority.
    pub authority: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The client's address as the mesh asserts it (never a client-written header).
    pub client: Option<IpAddr>,
}

/// A header an action reads, pseudo-headers included.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HeaderRef {
    Path,
    Method,
    Authority,
    Scheme,
    Named(HeaderName),
}

impl HeaderRef {
    pub(crate) fn parse(name: &str) -> Option<HeaderRef> {
        Some(match name.to_ascii_lowercase().as_str() {
            ":path" => HeaderRef::Path,
            ":method" => HeaderRef::Method,
            ":authority" | "host" => HeaderRef::Authority,
            ":scheme" => HeaderRef::Scheme,
            n => HeaderRef::Named(HeaderName::from_bytes(n.as_bytes()).ok()?),
        })
    }

    fn get<'a>(&self, r: &RequestView<'a>) -> Option<&'a str> {
        match self {
            HeaderRef::Path => Some(r.path),
            HeaderRef::Method => Some(r.method),
            HeaderRef::Authority => Some(r.authority).filter(|a| !a.is_empty()),
            HeaderRef::Scheme => Some("http"),
            HeaderRef::Named(n) => r.headers.get(n).and_then(|v| v.to_str().ok()),
        }
    }
}

/// A compiled header condition of `header_value_match`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeaderCond {
    pub(crate) name: HeaderRef,
    pub(crate) test: HeaderTest,
    pub(crate) invert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HeaderTest {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present(bool),
}

impl HeaderCond {
    fn matches(&self, r: &RequestView<'_>) -> bool {
        let v = self.name.get(r);
        let m = match (&self.test, v) {
            (HeaderTest::Present(p), v) => v.is_some() == *p,
            (_, None) => false,
            (HeaderTest::Exact(e), Some(v)) => v == e,
            (HeaderTest::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (HeaderTest::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
        };
        m != self.invert
    }
}

/// One compiled action.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    RequestHeader {
        header: HeaderRef,
        key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    MaskedRemoteAddress {
        v4: u8,
        v6: u8,
    },
    GenericKey {
        key: String,
        value: String,
    },
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<HeaderCond>,
    },
}

/// One `rate_limits[]` entry: its actions make one descriptor.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Recipe {
    pub(crate) actions: Vec<Action>,
}

impl Recipe {
    /// The descriptor for `r`, or none when an action cannot make its entry.
    pub(crate) fn build(&self, r: &RequestView<'_>) -> Option<Descriptor> {
        let mut entries = Vec::with_capacity(self.actions.len());
        for a in &self.actions {
            match a {
                Action::RequestHeader {
                    header,
                    key,
                    skip_if_absent,
                } => match header.get(r) {
                    Some(v) => entries.push((key.clone(), v.to_owned())),
                    None if *skip_if_absent => {}
                    None => return None,
                },
                // Envoy: the trusted client address; never `x-forwarded-for` as written.
                Action::RemoteAddress => {
                    entries.push(("remote_address".into(), r.client?.to_string()))
                }
                // Envoy: `<masked address>/<prefix length>`, key `masked_remote_address`.
                Action::MaskedRemoteAddress { v4, v6 } => {
                    let net = match r.client? {
                        IpAddr::V4(a) => {
                            let mask = u32::MAX.checked_shl(32 - u32::from(*v4)).unwrap_or(0);
                            format!("{}/{v4}", std::net::Ipv4Addr::from(a.to_bits() & mask))
                        }
                        IpAddr::V6(a) => {
                            let mask = u128::MAX.checked_shl(128 - u32::from(*v6)).unwrap_or(0);
                            format!("{}/{v6}", std::net::Ipv6Addr::from(a.to_bits() & mask))
                        }
                    };
                    entries.push(("masked_remote_address".into(), net));
                }
                Action::GenericKey { key, value } => entries.push((key.clone(), value.clone())),
                Action::HeaderValueMatch {
                    key,
                    value,
                    expect_match,
                    headers,
                } => {
                    if headers.iter().all(|h| h.matches(r)) != *expect_match {
                        return None;
                    }
                    entries.push((key.clone(), value.clone()));
                }
            }
        }
        (!entries.is_empty()).then_some(Descriptor { entries })
    }
}
