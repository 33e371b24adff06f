//! SOCKS5 (RFC 1928) server side, CONNECT only, no authentication: the unprivileged way for a
//! local client to enter the mesh.
//!
//! The parsers are pure (bytes in, decision out) and property-tested; [`handshake`] drives them
//! over a stream. Bytes a client sends after its request, before our reply, are returned so the
//! caller forwards them instead of losing them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the client asked to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address.
    Addr(SocketAddr),
    /// A host name and port.
    Host(String, u16),
}

/// SOCKS5 reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Success = 0x00,
    /// General failure.
    GeneralFailure = 0x01,
    /// Connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// Network unreachable.
    NetworkUnreachable = 0x03,
    /// Host unreachable.
    HostUnreachable = 0x04,
    /// Connection refused.
    ConnectionRefused = 0x05,
    /// Command not supported.
    CommandNotSupported = 0x07,
    /// Address type not supported.
    AddressTypeNotSupported = 0x08,
}

/// A protocol violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Socks5Error {
    /// Not SOCKS version 5.
    #[error("not SOCKS5 (version byte {0:#04x})")]
    Version(u8),
    /// The client offers no method we accept (we need "no authentication").
    #[error("client offers no acceptable authentication method")]
    NoAcceptableMethod,
    /// A command other than CONNECT.
    #[error("command {0:#04x} not supported (only CONNECT)")]
    Command(u8),
    /// Unknown address type.
    #[error("address type {0:#04x} not supported")]
    AddressType(u8),
    /// A host name that is empty or not UTF-8.
    #[error("invalid host name")]
    BadHost,
    /// Reserved byte not zero.
    #[error("reserved byte must be zero")]
    Reserved,
    /// Connection closed during the handshake.
    #[error("connection closed during handshake")]
    Eof,
    /// I/O error.
    #[error("i/o: {0}")]
    Io(String),
}

impl Socks5Error {
    /// The reply to send for this error, if the protocol still allows one.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Socks5Error::Command(_) => Some(Reply::CommandNotSupported),
            Socks5Error::AddressType(_) => Some(Reply::AddressTypeNotSupported),
            Socks5Error::BadHost | Socks5Error::Reserved => Some(Reply::GeneralFailure),
            _ => None,
        }
    }
}

/// Parses the greeting `VER NMETHODS METHODS…`. `Ok(None)`: need more bytes; `Ok(Some(n))`: the
/// greeting is `n` bytes long and offers "no authentication".
pub fn parse_greeting(buf: &[u8]) -> Result<Option<usize>, Socks5Error> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != 5 {
        return Err(Socks5Error::Version(ver));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    let len = 2 + n as usize;
    let Some(methods) = buf.get(2..len) else {
        return Ok(None);
    };
    if !methods.contains(&0x00) {
        return Err(Socks5Error::NoAcceptableMethod);
    }
    Ok(Some(len))
}

/// Parses the request `VER CMD RSV ATYP DST.ADDR DST.PORT`. `Ok(None)`: need more bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Target, usize)>, Socks5Error> {
    if buf.len() < 4 {
        if let Some(&v) = buf.first()
            && v != 5
        {
            return Err(Socks5Error::Version(v));
        }
        return Ok(None);
    }
    if buf[0] != 5 {
        return Err(Socks5Error::Version(buf[0]));
    }
    if buf[1] != 0x01 {
        return Err(Socks5Error::Command(buf[1]));
    }
    if buf[2] != 0 {
        return Err(Socks5Error::Reserved);
    }
    let port_at = |i: usize| -> Option<u16> {
        let p = buf.get(i..i + 2)?;
        Some(u16::from_be_bytes([p[0], p[1]]))
    };
    match buf[3] {
        0x01 => {
            let Some(a) = buf.get(4..8) else {
                return Ok(None);
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(port_at(8).map(|p| (Target::Addr(SocketAddr::new(IpAddr::V4(ip), p)), 10)))
        }
        0x04 => {
            let Some(a) = buf.get(4..20) else {
                return Ok(None);
            };
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            let ip = Ipv6Addr::from(o);
            // An IPv4-mapped address is the IPv4 one (else it would miss the mesh's indexes).
            let ip = IpAddr::V6(ip).to_canonical();
            Ok(port_at(20).map(|p| (Target::Addr(SocketAddr::new(ip, p)), 22)))
        }
        0x03 => {
            let Some(&n) = buf.get(4) else {
                return Ok(None);
            };
            let end = 5 + n as usize;
            let Some(name) = buf.get(5..end) else {
                return Ok(None);
            };
            let name = std::str::from_utf8(name).map_err(|_| Socks5Error::BadHost)?;
            if name.is_empty() {
                return Err(Socks5Error::BadHost);
            }
            let Some(port) = port_at(end) else {
                return Ok(None);
            };
            // A literal address sent as a name is an address.
            let target = match name.parse::<IpAddr>() {
                Ok(ip) => Target::Addr(SocketAddr::new(ip.to_canonical(), port)),
                Err(_) => Target::Host(name.to_owned(), port),
            };
            Ok(Some((target, end + 2)))
        }
        t => Err(Socks5Error::AddressType(t)),
    }
}

/// Encodes a reply (bound address reported as 0.0.0.0:0).
pub fn encode_reply(reply: Reply) -> [u8; 10] {
    [5, reply as u8, 0, 1, 0, 0, 0, 0, 0, 0]
}

// Greeting (≤ 257) plus request (≤ 262) plus whatever a client pipelines.
const MAX_HANDSHAKE: usize = 1024;

/// Runs the handshake up to the request; returns the target and any bytes the client already
/// sent after the request. The caller must then [`send_reply`].
pub async fn handshake<S>(s: &mut S) -> Result<(Target, Vec<u8>), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(64);
    let used = loop {
        if let Some(n) = parse_greeting(&buf)? {
            break n;
        }
        read_more(s, &mut buf).await?;
    };
    buf.drain(..used);
    s.write_all(&[5, 0x00])
        .await
        .map_err(|e| Socks5Error::Io(e.to_string()))?;
    loop {
        match parse_request(&buf) {
            Ok(Some((target, n))) => {
                buf.drain(..n);
                return Ok((target, buf));
            }
            Ok(None) => read_more(s, &mut buf).await?,
            Err(e) => {
                if let Some(r) = e.reply() {
                    let _ = s.write_all(&encode_reply(r)).await;
                }
                return Err(e);
            }
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<(), Socks5Error> {
    if buf.len() >= MAX_HANDSHAKE {
        return Err(Socks5Error::Io("handshake too long".into()));
    }
    let mut chunk = [0u8; 512];
    let n = s
        .read(&mut chunk)
        .await
        .map_err(|e| Socks5Error::Io(e.to_string()))?;
    if n == 0 {
        return Err(Socks5Error::Eof);
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Sends the final reply.
pub async fn send_reply<S: AsyncWrite + Unpin>(s: &mut S, reply: Reply) -> std::io::Result<()> {
    s.write_all(&encode_reply(reply)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ipv4_mapped_targets_are_ipv4() {
        let mut req = vec![5, 1, 0, 4];
        req.extend_from_slice(&"::ffff:10.0.0.7".parse::<Ipv6Addr>().unwrap().octets());
        req.extend_from_slice(&8080u16.to_be_bytes());
        let (t, _) = parse_request(&req).unwrap().unwrap();
        assert!(matches!(t, Target::Addr(a) if a == "10.0.0.7:8080".parse().unwrap()));
        let name = b"::ffff:10.0.0.7";
        let mut req = vec![5, 1, 0, 3, name.len() as u8];
        req.extend_from_slice(name);
        req.extend_from_slice(&8080u16.to_be_bytes());
        let (t, _) = parse_request(&req).unwrap().unwrap();
        assert!(matches!(t, Target::Addr(a) if a == "10.0.0.7:8080".parse().unwrap()));
    }

    #[test]
    fn parses_requests() {
        assert_eq!(parse_greeting(&[5, 1, 0]).unwrap(), Some(3));
        assert_eq!(parse_greeting(&[5, 2, 2]).unwrap(), None);
        assert_eq!(
            parse_greeting(&[5, 1, 2]).unwrap_err(),
            Socks5Error::NoAcceptableMethod
        );
        assert_eq!(
            parse_greeting(&[4, 1, 0]).unwrap_err(),
            Socks5Error::Version(4)
        );
        let req = [5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90, 0xAA];
        assert_eq!(
            parse_request(&req).unwrap(),
            Some((Target::Addr("127.0.0.1:8080".parse().unwrap()), 10))
        );
        let mut host = vec![5, 1, 0, 3, 4];
        host.extend_from_slice(b"echo");
        host.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&host).unwrap(),
            Some((Target::Host("echo".into(), 80), 11))
        );
        assert_eq!(parse_request(&host[..7]).unwrap(), None);
        assert_eq!(
            parse_request(&[5, 2, 0, 1]).unwrap_err(),
            Socks5Error::Command(2)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 9]).unwrap_err(),
            Socks5Error::AddressType(9)
        );
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_greeting(&b);
            let _ = parse_request(&b);
        }

        #[test]
        fn address_roundtrip(ip in any::<IpAddr>(), port in any::<u16>(), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut b = vec![5, 1, 0];
            match ip {
                IpAddr::V4(v4) => { b.push(1); b.extend_from_slice(&v4.octets()); }
                IpAddr::V6(v6) => { b.push(4); b.extend_from_slice(&v6.octets()); }
            }
            b.extend_from_slice(&port.to_be_bytes());
            let len = b.len();
            b.extend_from_slice(&extra);
            let (t, n) = parse_request(&b).unwrap().unwrap();
            prop_assert_eq!(t, Target::Addr(SocketAddr::new(ip.to_canonical(), port)));
            prop_assert_eq!(n, len);
            // Every strict prefix asks for more bytes.
            for i in 0..len {
                prop_assert_eq!(parse_request(&b[..i]).unwrap(), None);
            }
        }
    }
}
