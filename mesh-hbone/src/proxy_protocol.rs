//! PROXY protocol v2 headers (haproxy's `proxy-protocol.txt`, section 2.2) as Istio's ztunnel
//! writes them before the bytes of a tunnel delivered to a workload whose
//! `application_tunnel.protocol` is `PROXY` (a sandwiched waypoint or gateway): `PROXY`
//! command, `STREAM` over the source's and destination's family, and two TLVs of Istio's
//! (workload API `ApplicationTunnel`): `0xD0` the source's SPIFFE id, `0xD1` the FQDN of the
//! targeted service. Encoding is the `ppp` crate's; this module only chooses the fields and
//! bounds them.

use std::net::SocketAddr;

/// TLV type of the source workload's SPIFFE identity (`spiffe://td/ns/…/sa/…`).
pub const TLV_SOURCE_IDENTITY: u8 = 0xD0;
/// TLV type of the targeted service's host name.
pub const TLV_SERVICE: u8 = 0xD1;

/// The longest value a TLV may carry here: longer ones (a host name is at most 253 bytes, a
/// SPIFFE id at most 2048) are refused rather than truncated.
pub const MAX_TLV_VALUE: usize = 2048;

/// Why a header could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// A TLV value is longer than [`MAX_TLV_VALUE`].
    #[error("PROXY TLV {kind:#04x}: {len} bytes (at most {MAX_TLV_VALUE})")]
    TooLong {
        /// The TLV type.
        kind: u8,
        /// Its length.
        len: usize,
    },
    /// The encoder failed.
    #[error("PROXY header: {0}")]
    Encode(#[from] std::io::Error),
}

/// The PROXY v2 header of a connection from `source` to `destination`, with the source's
/// SPIFFE id and, when known, the targeted service's host name. Addresses of two families are
/// both sent as IPv6 (the IPv4 one mapped, `::ffff:a.b.c.d`): the format has no mixed family,
/// and `UNSPEC` would make the receiver skip the TLVs.
pub fn header(
    source: SocketAddr,
    destination: SocketAddr,
    source_identity: Option<&str>,
    service: Option<&str>,
) -> Result<Vec<u8>, ProxyHeaderError> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let mut b = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        same_family(source, destination),
    );
    for (kind, value) in [
        (TLV_SOURCE_IDENTITY, source_identity),
        (TLV_SERVICE, service),
    ] {
        let Some(value) = value else { continue };
        if value.len() > MAX_TLV_VALUE {
            return Err(ProxyHeaderError::TooLong {
                kind,
                len: value.len(),
            });
        }
        b = b.write_tlv(kind, value.as_bytes())?;
    }
    Ok(b.build()?)
}

/// `(source, destination)` in one family: IPv4 mapped into IPv6 when the other is IPv6.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (v6(source), v6(destination))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> ppp::v2::Header<'_> {
        ppp::v2::Header::try_from(bytes).unwrap()
    }

    #[test]
    fn ipv4_with_both_tlvs() {
        let h = header(
            "10.0.0.1:40000".parse().unwrap(),
            "10.96.0.1:80".parse().unwrap(),
            Some("spiffe://cluster.local/ns/a/sa/b"),
            Some("web.ns.svc.cluster.local"),
        )
        .unwrap();
        // The v2 signature, version 2 / PROXY, TCP over IPv4.
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        let p = parse(&h);
        assert_eq!(
            p.addresses,
            ppp::v2::Addresses::IPv4(ppp::v2::IPv4::new([10, 0, 0, 1], [10, 96, 0, 1], 40000, 80))
        );
        let tlvs: Vec<(u8, Vec<u8>)> = p
            .tlvs()
            .map(|t| {
                let t = t.unwrap();
                (t.kind, t.value.to_vec())
            })
            .collect();
        assert_eq!(
            tlvs,
            [
                (0xD0, b"spiffe://cluster.local/ns/a/sa/b".to_vec()),
                (0xD1, b"web.ns.svc.cluster.local".to_vec()),
            ]
        );
        assert_eq!(p.len(), h.len());
    }

    #[test]
    fn mixed_families_are_ipv6_and_long_values_refused() {
        let h = header(
            "10.0.0.1:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
            Some("spiffe://td/ns/a/sa/b"),
            None,
        )
        .unwrap();
        let p = parse(&h);
        assert_eq!(
            p.addresses,
            ppp::v2::Addresses::IPv6(ppp::v2::IPv6::new(
                "::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap(),
                std::net::Ipv6Addr::LOCALHOST,
                1,
                2
            ))
        );
        assert_eq!(p.tlvs().count(), 1);
        let long = "x".repeat(MAX_TLV_VALUE + 1);
        assert!(matches!(
            header(
                "10.0.0.1:1".parse().unwrap(),
                "10.0.0.2:2".parse().unwrap(),
                Some(&long),
                None
            ),
            Err(ProxyHeaderError::TooLong { kind: 0xD0, .. })
        ));
    }

    proptest! {
        // Whatever the addresses and values, the header parses back to them.
        #[test]
        fn round_trips(
            src in any::<SocketAddr>(),
            dst in any::<SocketAddr>(),
            id in proptest::option::of("[ -~]{0,300}"),
            svc in proptest::option::of("[a-z0-9.-]{0,253}"),
        ) {
            let h = header(src, dst, id.as_deref(), svc.as_deref()).unwrap();
            let p = parse(&h);
            prop_assert_eq!(p.len(), h.len());
            let want: ppp::v2::Addresses = same_family(src, dst).into();
            prop_assert_eq!(p.addresses, want);
            let tlvs: Vec<(u8, Vec<u8>)> = p.tlvs().map(|t| {
                let t = t.unwrap();
                (t.kind, t.value.to_vec())
            }).collect();
            let mut expect = Vec::new();
            if let Some(i) = &id { expect.push((0xD0, i.as_bytes().to_vec())); }
            if let Some(s) = &svc { expect.push((0xD1, s.as_bytes().to_vec())); }
            prop_assert_eq!(tlvs, expect);
        }
    }
}
