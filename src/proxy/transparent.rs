//! Transparent capture: connections redirected to tlspeek by iptables/nftables (`REDIRECT`:
//! the original destination comes from `SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for
//! IPv6) or delivered by `TPROXY` (the original destination is the accepted socket's own
//! address). The callers this product hunts often ignore proxy settings (services running as
//! SYSTEM, appliances): this is how they are seen anyway.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;

/// The destination the client meant, before the redirect.
pub fn original_destination(stream: &TcpStream, tproxy: bool) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    if tproxy {
        return Ok(local);
    }
    original_dst(stream, local)
}

#[cfg(target_os = "linux")]
fn original_dst(stream: &TcpStream, local: SocketAddr) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let unmapped_v4 = matches!(local.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if local.is_ipv4() || unmapped_v4 {
        let sa = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sa.sin_port)))
    } else {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Ok(SocketAddr::new(IpAddr::V6(ip), u16::from_be(sa.sin6_port)))
    }
}

#[cfg(not(target_os = "linux"))]
fn original_dst(_stream: &TcpStream, _local: SocketAddr) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_ORIGINAL_DST needs Linux",
    ))
}

/// Loop protection: a connection whose original destination is one of tlspeek's own
/// listeners (or that was not redirected at all) must not be connected back to tlspeek.
pub fn is_loop(original: SocketAddr, local: SocketAddr, own_listeners: &[SocketAddr]) -> bool {
    let original = SocketAddr::new(original.ip().to_canonical(), original.port());
    if original == SocketAddr::new(local.ip().to_canonical(), local.port()) {
        return true;
    }
    own_listeners.iter().any(|l| {
        l.port() == original.port()
            && (l.ip().is_unspecified()
                || l.ip().to_canonical() == original.ip()
                || original.ip().is_loopback())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_recognised() {
        let own: Vec<SocketAddr> = vec![
            "0.0.0.0:3129".parse().unwrap(),
            "127.0.0.1:3128".parse().unwrap(),
        ];
        let local: SocketAddr = "10.0.0.5:3129".parse().unwrap();
        assert!(is_loop(local, local, &own), "not redirected");
        assert!(
            is_loop("10.0.0.9:3129".parse().unwrap(), local, &own),
            "to our own transparent port"
        );
        assert!(
            is_loop("127.0.0.1:3128".parse().unwrap(), local, &own),
            "to our proxy port"
        );
        assert!(!is_loop("20.190.128.1:443".parse().unwrap(), local, &own));
        assert!(
            !is_loop("10.0.0.9:3128".parse().unwrap(), local, &own),
            "another host's 3128"
        );
    }

    #[tokio::test]
    async fn tproxy_uses_the_local_address_and_redirect_needs_conntrack() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let c = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(original_destination(&s, true).unwrap(), addr);
        // Not redirected: either no conntrack entry (an error) or the address itself.
        if let Ok(orig) = original_destination(&s, false) {
            assert_eq!(orig, addr);
        }
        drop(c);
    }
}
