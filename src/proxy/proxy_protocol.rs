//! PROXY protocol v2 (HAProxy's binary form), accepted only from `proxy_protocol_from`:
//! behind a load balancer every source would otherwise be the balancer's own address, which
//! voids per-source metrics and `allowed_sources`. From a trusted balancer the header is
//! required (a `LOCAL` header — a health check — keeps the balancer's address); from anyone
//! else a PROXY header is refused as a bad request.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];
/// Longest header accepted (16-byte fixed part + addresses + TLVs).
const MAX_HEADER: usize = 16 + 536;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol v2 header from a trusted load balancer")]
    Missing,
    #[error("malformed PROXY protocol v2 header: {0}")]
    Malformed(&'static str),
    #[error("PROXY protocol header not complete within the header timeout")]
    Timeout,
    #[error("client closed during the PROXY protocol header")]
    Closed,
}

/// What a complete header says.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The real client (PROXY command over TCP).
    Proxied(SocketAddr),
    /// LOCAL command or an address family without one (health checks): keep the peer.
    Local,
}

/// Parses a header from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// header and its length.
pub fn parse(buf: &[u8]) -> Result<Option<(Parsed, usize)>, ProxyHeaderError> {
    let known = buf.len().min(SIGNATURE.len());
    if buf.get(..known) != SIGNATURE.get(..known) {
        return Err(ProxyHeaderError::Missing);
    }
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let (ver_cmd, fam) = (fixed[12], fixed[13]);
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("version is not 2"));
    }
    if 16 + len > MAX_HEADER {
        return Err(ProxyHeaderError::Malformed("header too long"));
    }
    let Some(body) = buf.get(16..16 + len) else {
        return Ok(None);
    };
    let total = 16 + len;
    match ver_cmd & 0x0f {
        0x0 => return Ok(Some((Parsed::Local, total))),
        0x1 => {}
        _ => return Err(ProxyHeaderError::Malformed("unknown command")),
    }
    let addr = match fam {
        // TCP over IPv4: src addr, dst addr, src port, dst port.
        0x11 => {
            let b = body
                .get(..12)
                .ok_or(ProxyHeaderError::Malformed("short IPv4 addresses"))?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[8], b[9]]))
        }
        0x21 => {
            let b = body
                .get(..36)
                .ok_or(ProxyHeaderError::Malformed("short IPv6 addresses"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([b[32], b[33]]),
            )
        }
        // UNSPEC, UDP or UNIX: nothing usable as a TCP client address.
        _ => return Ok(Some((Parsed::Local, total))),
    };
    Ok(Some((Parsed::Proxied(addr), total)))
}

/// Does `buf` start like a PROXY header (v2 signature, or v1 text)?
pub fn looks_like_header(buf: &[u8]) -> bool {
    buf.starts_with(&SIGNATURE) || buf.starts_with(b"PROXY ")
}

/// Reads exactly one header from `stream` (never more: the request follows it), until
/// `deadline`.
pub async fn read(stream: &TcpStream, deadline: Instant) -> Result<Parsed, ProxyHeaderError> {
    let mut buf = [0u8; MAX_HEADER];
    let mut have = 0usize;
    // First the fixed part, then exactly the announced length.
    let mut want = 16usize;
    loop {
        while have < want {
            match tokio::time::timeout_at(deadline, stream.readable()).await {
                Err(_) => return Err(ProxyHeaderError::Timeout),
                Ok(Err(_)) => return Err(ProxyHeaderError::Closed),
                Ok(Ok(())) => {}
            }
            let Some(slot) = buf.get_mut(have..want) else {
                return Err(ProxyHeaderError::Malformed("header too long"));
            };
            match stream.try_read(slot) {
                Ok(0) => return Err(ProxyHeaderError::Closed),
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(ProxyHeaderError::Closed),
            }
            // Refuse a wrong signature as soon as it shows.
            parse(buf.get(..have).unwrap_or_default()).map(|_| ())?;
        }
        match parse(buf.get(..have).unwrap_or_default())? {
            Some((p, _)) => return Ok(p),
            None => {
                let len = buf
                    .get(14..16)
                    .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
                want = 16 + len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0, 12]);
        h.extend(src);
        h.extend([10, 0, 0, 1]);
        h.extend(sport.to_be_bytes());
        h.extend(3128u16.to_be_bytes());
        h
    }

    #[test]
    fn proxied_local_partial_and_bad() {
        let h = v4([192, 0, 2, 7], 51000);
        assert_eq!(
            parse(&h).unwrap(),
            Some((Parsed::Proxied("192.0.2.7:51000".parse().unwrap()), 28))
        );
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]).unwrap(), None, "prefix {n}");
        }
        let mut local = SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap(), Some((Parsed::Local, 16)));
        assert_eq!(
            parse(b"CONNECT x:443 HTTP/1.1\r\n"),
            Err(ProxyHeaderError::Missing)
        );
        let mut v1 = SIGNATURE.to_vec();
        v1.extend([0x11, 0x11, 0, 12]);
        assert!(matches!(parse(&v1), Err(ProxyHeaderError::Malformed(_))));
        let mut long = SIGNATURE.to_vec();
        long.extend([0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&long), Err(ProxyHeaderError::Malformed(_))));
        let mut short = SIGNATURE.to_vec();
        short.extend([0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&short), Err(ProxyHeaderError::Malformed(_))));
        assert!(looks_like_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
        assert!(looks_like_header(&h));
        assert!(!looks_like_header(b"CONNECT"));
    }

    #[test]
    fn ipv6() {
        let mut h = SIGNATURE.to_vec();
        h.extend([0x21, 0x21, 0, 36]);
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        h.extend(src.octets());
        h.extend([0u8; 16]);
        h.extend(443u16.to_be_bytes());
        h.extend(3128u16.to_be_bytes());
        assert_eq!(
            parse(&h).unwrap(),
            Some((Parsed::Proxied("[2001:db8::7]:443".parse().unwrap()), 52))
        );
    }
}
