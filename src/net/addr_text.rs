//! Addresses as text, the same text as `std`'s `Display`, for the few places every
//! connection writes one (its event line's `source_ip` and `upstream_ip`, its `source`
//! label, its span): an IPv4 address is written digit by digit into a stack buffer, not
//! through `core::fmt`'s machinery, which costs ten times as much per address. IPv6 is
//! rare at an egress and keeps `std`'s writer (its `::` rules are not worth repeating).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The longest IPv4 socket address: `255.255.255.255:65535`.
const V4_SOCKET_MAX: usize = 21;

/// A small text buffer on the stack; bytes past its end are dropped (never reached: the
/// callers write at most `V4_SOCKET_MAX` bytes).
struct Text {
    buf: [u8; V4_SOCKET_MAX],
    len: usize,
}

impl Text {
    fn new() -> Text {
        Text {
            buf: [0; V4_SOCKET_MAX],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn push_decimal(&mut self, n: u16) {
        let mut digits = [0u8; 5];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            self.push(d);
        }
    }

    fn push_v4(&mut self, ip: Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            self.push_decimal(u16::from(octet));
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, dots and a colon are ever pushed.
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

/// `ip` as `ip.to_string()` writes it.
pub fn ip_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => ipv4_string(v4),
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// `ip` as `ip.to_string()` writes it.
pub fn ipv4_string(ip: Ipv4Addr) -> String {
    let mut t = Text::new();
    t.push_v4(ip);
    t.as_str().to_string()
}

/// An address that displays as `IpAddr`'s `Display` (a CONNECT target's host).
pub struct IpText(pub IpAddr);

impl fmt::Display for IpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => {
                let mut t = Text::new();
                t.push_v4(v4);
                f.write_str(t.as_str())
            }
            IpAddr::V6(v6) => fmt::Display::fmt(&v6, f),
        }
    }
}

/// A socket address that displays as `SocketAddr`'s `Display` (for a span field: no
/// `String` is made).
pub struct SocketText(pub SocketAddr);

impl fmt::Display for SocketText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SocketAddr::V4(a) => {
                let mut t = Text::new();
                t.push_v4(*a.ip());
                t.push(b':');
                t.push_decimal(a.port());
                f.write_str(t.as_str())
            }
            SocketAddr::V6(a) => fmt::Display::fmt(&a, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_std_writes() {
        let mut next = 0x9e37_79b9_7f4a_7c15u64;
        let mut addrs: Vec<SocketAddr> = vec![
            "0.0.0.0:0".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
            "10.0.100.9:8080".parse().unwrap(),
            "[::1]:443".parse().unwrap(),
            "[2001:db8::ffff:1.2.3.4]:1".parse().unwrap(),
            "[::ffff:10.3.2.1]:3128".parse().unwrap(),
        ];
        for _ in 0..5000 {
            next ^= next << 13;
            next ^= next >> 7;
            next ^= next << 17;
            let ip = Ipv4Addr::from((next >> 16) as u32);
            addrs.push(SocketAddr::new(IpAddr::V4(ip), (next & 0xffff) as u16));
        }
        for a in addrs {
            assert_eq!(ip_string(a.ip()), a.ip().to_string());
            assert_eq!(IpText(a.ip()).to_string(), a.ip().to_string());
            assert_eq!(SocketText(a).to_string(), a.to_string());
            // Width and alignment are not used in spans; `Display` of the text is plain.
            assert_eq!(format!("{}", SocketText(a)), format!("{a}"));
        }
    }
}
