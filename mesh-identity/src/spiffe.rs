//! SPIFFE trust domains and Istio-shaped SPIFFE ids (`spiffe://<td>/ns/<ns>/sa/<sa>`).
//!
//! Parsing is strict, following the SPIFFE ID specification: lowercase scheme and trust domain,
//! trust domain characters `[a-z0-9._-]`, path segments `[a-zA-Z0-9._-]`, no empty, `.` or `..`
//! segment, no query, fragment, port, user info or percent-encoding. On top of that an Istio
//! workload id has exactly the path `/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Why a trust domain or SPIFFE id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The string does not start with `spiffe://`.
    #[error("must start with \"spiffe://\"")]
    Scheme,
    /// The trust domain is empty.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain has a character outside `[a-z0-9._-]`.
    #[error("trust domain has invalid character {0:?} (allowed: a-z 0-9 . - _)")]
    TrustDomainChar(char),
    /// The whole id or trust domain is too long.
    #[error("too long ({len} bytes, at most {max})")]
    TooLong {
        /// Length seen.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A path segment is empty, `.` or `..`.
    #[error("path segment {0:?} is not allowed")]
    BadSegment(String),
    /// A path segment has a character outside `[a-zA-Z0-9._-]`.
    #[error("path has invalid character {0:?} (allowed: a-z A-Z 0-9 . - _)")]
    PathChar(char),
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("path must be /ns/<namespace>/sa/<service-account>, got {0:?}")]
    NotIstioPath(String),
}

const MAX_TRUST_DOMAIN: usize = 255;
const MAX_ID: usize = 2048;

/// A SPIFFE trust domain, such as `cluster.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// The trust domain as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_trust_domain(s)?;
        Ok(TrustDomain(s.into()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

fn validate_trust_domain(s: &str) -> Result<(), SpiffeIdError> {
    if s.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if s.len() > MAX_TRUST_DOMAIN {
        return Err(SpiffeIdError::TooLong {
            len: s.len(),
            max: MAX_TRUST_DOMAIN,
        });
    }
    match s
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_segment(seg: &str) -> Result<(), SpiffeIdError> {
    if seg.is_empty() || seg == "." || seg == ".." {
        return Err(SpiffeIdError::BadSegment(seg.to_owned()));
    }
    match seg
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::PathChar(c)),
        None => Ok(()),
    }
}

/// An Istio workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Cheap to clone (one `Arc`); equality and hashing compare the whole URI exactly.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    // Byte offsets into `uri`: end of the trust domain, start/end of namespace, start of sa.
    td_end: u16,
    ns_start: u16,
    ns_end: u16,
    sa_start: u16,
}

impl SpiffeId {
    /// Builds an id from its parts, validating each.
    pub fn new(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        validate_segment(namespace)?;
        validate_segment(service_account)?;
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The full URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.uri[9..self.td_end as usize].into())
    }

    /// The trust domain part as a string slice.
    pub fn trust_domain_str(&self) -> &str {
        &self.uri[9..self.td_end as usize]
    }

    /// The namespace part.
    pub fn namespace(&self) -> &str {
        &self.uri[self.ns_start as usize..self.ns_end as usize]
    }

    /// The service account part.
    pub fn service_account(&self) -> &str {
        &self.uri[self.sa_start as usize..]
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ID {
            return Err(SpiffeIdError::TooLong {
                len: s.len(),
                max: MAX_ID,
            });
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        for seg in &segments {
            validate_segment(seg)?;
        }
        if segments.len() != 4 || segments[0] != "ns" || segments[2] != "sa" {
            return Err(SpiffeIdError::NotIstioPath(path.to_owned()));
        }
        let td_end = 9 + td.len();
        let ns_start = td_end + 4; // "/ns/"
        let ns_end = ns_start + segments[1].len();
        let sa_start = ns_end + 4; // "/sa/"
        // MAX_ID (2048) fits in u16, so these casts cannot truncate.
        Ok(SpiffeId {
            uri: s.into(),
            td_end: td_end as u16,
            ns_start: ns_start as u16,
            ns_end: ns_end as u16,
            sa_start: sa_start as u16,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_istio_ids() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain_str(), "cluster.local");
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", SpiffeIdError::Scheme),
            ("SPIFFE://cluster.local/ns/a/sa/b", SpiffeIdError::Scheme),
            ("spiffe:///ns/a/sa/b", SpiffeIdError::EmptyTrustDomain),
            (
                "spiffe://Cluster.local/ns/a/sa/b",
                SpiffeIdError::TrustDomainChar('C'),
            ),
            (
                "spiffe://td:8080/ns/a/sa/b",
                SpiffeIdError::TrustDomainChar(':'),
            ),
            (
                "spiffe://user@td/ns/a/sa/b",
                SpiffeIdError::TrustDomainChar('@'),
            ),
            (
                "spiffe://td/ns/a/sa/b/",
                SpiffeIdError::BadSegment(String::new()),
            ),
            (
                "spiffe://td/ns//sa/b",
                SpiffeIdError::BadSegment(String::new()),
            ),
            (
                "spiffe://td/ns/../sa/b",
                SpiffeIdError::BadSegment("..".into()),
            ),
            ("spiffe://td/ns/a/sa/b?x=1", SpiffeIdError::PathChar('?')),
            ("spiffe://td/ns/a/sa/b#f", SpiffeIdError::PathChar('#')),
            ("spiffe://td/ns/a%20/sa/b", SpiffeIdError::PathChar('%')),
            (
                "spiffe://td/ns/a/sb/b",
                SpiffeIdError::NotIstioPath("/ns/a/sb/b".into()),
            ),
            (
                "spiffe://td/ns/a/sa/b/c",
                SpiffeIdError::NotIstioPath("/ns/a/sa/b/c".into()),
            ),
            ("spiffe://td", SpiffeIdError::NotIstioPath(String::new())),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<SpiffeId>().unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn new_validates_parts() {
        let td: TrustDomain = "example.org".parse().unwrap();
        assert!(SpiffeId::new(&td, "ns1", "sa/evil").is_err());
        assert_eq!(
            SpiffeId::new(&td, "ns1", "sa1").unwrap().as_str(),
            "spiffe://example.org/ns/ns1/sa/sa1"
        );
    }

    proptest! {
        #[test]
        fn roundtrip(td in "[a-z0-9._-]{1,40}", ns in "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,30}",
                     sa in "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,30}") {
            let td: TrustDomain = td.parse().unwrap();
            let id = SpiffeId::new(&td, &ns, &sa).unwrap();
            let again: SpiffeId = id.to_string().parse().unwrap();
            prop_assert_eq!(&again, &id);
            prop_assert_eq!(again.namespace(), ns.as_str());
            prop_assert_eq!(again.service_account(), sa.as_str());
            prop_assert_eq!(again.trust_domain(), td);
        }

        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<SpiffeId>();
            let _ = s.parse::<TrustDomain>();
        }

        #[test]
        fn parsed_ids_display_verbatim(s in "spiffe://[a-z.]{1,10}/ns/[a-z.]{1,5}/sa/[a-z.]{1,5}") {
            if let Ok(id) = s.parse::<SpiffeId>() {
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
