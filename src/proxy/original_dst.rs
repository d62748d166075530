//! The original destination of a transparently captured connection: connections redirected to tlspeek by iptables/nftables (`REDIRECT`:
//! the original destination comes from `SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for
//! IPv6) or delivered by `TPROXY` (the original destination is the accepted socket's own
//! address). The callers this product hunts often ignore proxy settings (services running as
//! SYSTEM, appliances): this is how they are seen anyway.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;

/// Where a transparently captured connection was going, and where it arrived (both with
/// IPv4-mapped addresses unmapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Original {
    /// The destination the client meant.
    pub destination: SocketAddr,
    /// The accepted socket's own address.
    pub local: SocketAddr,
}

/// The destination the client meant: with `TPROXY` the accepted socket's own address, with
/// `REDIRECT` the conntrack entry's original destination.
pub fn original_destination(stream: &TcpStream, tproxy: bool) -> io::Result<Original> {
    let local = stream.local_addr()?;
    let destination = if tproxy {
        local
    } else {
        original_dst(stream, local)?
    };
    Ok(Original {
        destination: canonical(destination),
        local: canonical(local),
    })
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
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
/// listeners (`own_listeners`), or with `REDIRECT` one that was not redirected at all (its
/// original destination is where it arrived), must not be connected back to tlspeek. With
/// `TPROXY` the original destination *is* where it arrived: that is how TPROXY delivers.
pub fn is_loop(original: &Original, tproxy: bool, own_listeners: &[Option<SocketAddr>]) -> bool {
    let dest = original.destination;
    if !tproxy && dest == original.local {
        return true;
    }
    own_listeners.iter().flatten().any(|l| {
        l.port() == dest.port()
            && (l.ip().is_unspecified()
                || l.ip().to_canonical() == dest.ip()
                || dest.ip().is_loopback())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_recognised() {
        let own = [
            Some("0.0.0.0:3129".parse().unwrap()),
            Some("127.0.0.1:3128".parse().unwrap()),
            None,
        ];
        let local: SocketAddr = "10.0.0.5:3129".parse().unwrap();
        let to = |d: &str| Original {
            destination: d.parse().unwrap(),
            local,
        };
        assert!(is_loop(&to("10.0.0.5:3129"), false, &own), "not redirected");
        assert!(
            is_loop(&to("10.0.0.9:3129"), false, &own),
            "to our own transparent port"
        );
        assert!(
            is_loop(&to("127.0.0.1:3128"), false, &own),
            "to our proxy port"
        );
        assert!(!is_loop(&to("20.190.128.1:443"), false, &own));
        assert!(
            !is_loop(&to("10.0.0.9:3128"), false, &own),
            "another host's 3128"
        );
        // TPROXY: the socket's own address is the destination.
        let tproxied = Original {
            destination: "20.190.128.1:443".parse().unwrap(),
            local: "20.190.128.1:443".parse().unwrap(),
        };
        assert!(!is_loop(&tproxied, true, &own), "a TPROXY connection");
        assert!(
            is_loop(&to("10.0.0.9:3129"), true, &own),
            "TPROXY to our own port"
        );
    }

    #[tokio::test]
    async fn tproxy_uses_the_local_address_and_redirect_needs_conntrack() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let c = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (s, _) = l.accept().await.unwrap();
        let tproxied = original_destination(&s, true).unwrap();
        assert_eq!((tproxied.destination, tproxied.local), (addr, addr));
        // Not redirected: either no conntrack entry (an error) or the address itself.
        if let Ok(orig) = original_destination(&s, false) {
            assert_eq!(orig.destination, addr);
        }
        drop(c);
    }
}
