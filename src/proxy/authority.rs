//! The CONNECT target (`host:port`): an IPv4 literal, a bracketed IPv6 literal, or a DNS
//! host name. Anything else — spaces, CR/LF, user info, paths, zone ids, a missing or absurd
//! port — is refused with 400 before any lookup is made.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::names::HostName;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(HostName),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => fmt::Display::fmt(&crate::net::addr_text::IpText(*ip), f),
            Host::Name(n) => f.write_str(n.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    pub host: Host,
    pub port: u16,
}

/// `host:port`, as the span's `target` and `/debug/tunnels` write it: an IPv6 host in
/// brackets, as the CONNECT line had it (`[::1]:443`, not the ambiguous `::1:443`).
impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracketed = matches!(self.host, Host::Ip(IpAddr::V6(_)));
        if bracketed {
            f.write_str("[")?;
        }
        fmt::Display::fmt(&self.host, f)?;
        f.write_str(if bracketed { "]:" } else { ":" })?;
        f.write_str(itoa::Buffer::new().format(self.port))
    }
}

impl Authority {
    pub fn name(&self) -> Option<&HostName> {
        match &self.host {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }
}

/// Parses a CONNECT request target. The error is a short reason for the 400 body.
pub fn parse_authority(s: &str) -> Result<Authority, &'static str> {
    if s.len() > 300 {
        return Err("target too long");
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("unclosed '[' in the target")?;
        let port = after.strip_prefix(':').ok_or("the target needs a port")?;
        let ip: Ipv6Addr = v6
            .parse()
            .map_err(|_| "invalid IPv6 address in the target")?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or("the target needs a port")?;
        let host = if let Ok(v4) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(v4))
        } else {
            Host::Name(HostName::parse(host).ok_or("the target host is not a valid host name")?)
        };
        (host, port)
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the target port is not a number");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(Authority { host, port: p }),
        _ => Err("the target port is out of range"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_host_colon_port() {
        for t in [
            "login.microsoftonline.com:443",
            "10.0.0.1:8443",
            "[::1]:443",
            "a:65535",
        ] {
            let a = parse_authority(t).unwrap();
            assert_eq!(a.to_string(), t);
            assert_eq!(parse_authority(&a.to_string()), Ok(a));
        }
        let v6 = parse_authority("[2001:DB8:0::1]:636").unwrap();
        assert_eq!(v6.to_string(), "[2001:db8::1]:636");
        assert_eq!(v6.host.to_string(), "2001:db8::1");
    }

    #[test]
    fn accepts_names_and_literals() {
        let a = parse_authority("LOGIN.microsoftonline.com.:443").unwrap();
        assert_eq!(a.host.to_string(), "login.microsoftonline.com");
        assert_eq!(a.port, 443);
        assert_eq!(
            parse_authority("10.1.2.3:8443").unwrap().host,
            Host::Ip("10.1.2.3".parse().unwrap())
        );
        assert_eq!(
            parse_authority("[::ffff:127.0.0.1]:443").unwrap().host,
            Host::Ip("::ffff:127.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_authority("[2001:db8::1]:443").unwrap().port, 443);
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:65536",
            "host:99999999999",
            "host:+443",
            "bad host:443",
            "a\r\nb:443",
            "user@host:443",
            "host/path:443",
            "10.0.0.300:443",
            "[::1:443",
            "[fe80::1%eth0]:443",
            "::1:443",
            "[::1]",
            "[::1]x:443",
            "*.example.com:443",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?}");
        }
    }
}
