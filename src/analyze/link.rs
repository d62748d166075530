//! From a captured frame to a TCP segment: the link layer (Ethernet, Linux cooked SLL and
//! SLL2, raw IP, BSD loopback), VLAN tags (802.1Q, 802.1ad QinQ, up to four), IPv4 (its
//! options and the Ethernet padding after it) and IPv6 (its extension headers), then TCP.
//!
//! Pure and allocation-free: every length read from the frame is checked before it is
//! used, and anything that is not a whole TCP header answers with a reason to skip.
//! IP fragments are skipped (a ClientHello is never sent fragmented by a sane stack).

/// LINKTYPE_* values (tcpdump.org/linktypes.html).
pub mod linktype {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    /// DLT_RAW as some BSDs number it.
    pub const RAW_BSD_12: u32 = 12;
    pub const RAW_BSD_14: u32 = 14;
    pub const RAW: u32 = 101;
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: [u16; 4] = [0x8100, 0x88A8, 0x9100, 0x9200];
const MAX_VLAN_TAGS: usize = 4;

/// TCP flags.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// An address and port; IPv4 is kept IPv4-mapped so that both families share one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: [u8; 16],
    pub port: u16,
}

impl Endpoint {
    pub fn addr(&self) -> std::net::IpAddr {
        std::net::Ipv6Addr::from(self.ip).to_canonical()
    }

    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.addr(), self.port)
    }
}

/// One TCP segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The captured part of the payload.
    pub payload: &'a [u8],
    /// The payload's length on the wire (from the IP header): more than `payload.len()`
    /// when the capture's snap length cut the frame.
    pub wire_len: u32,
}

/// Why a frame carries no TCP segment for us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A link type this reader does not know.
    LinkType,
    /// Not IPv4/IPv6 (ARP, LLDP, …).
    NotIp,
    /// IP, but not TCP.
    NotTcp,
    /// An IP fragment.
    Fragment,
    /// Cut off or inconsistent headers.
    Malformed,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one frame of the given link type.
pub fn decode(linktype: u32, frame: &[u8]) -> Result<Segment<'_>, Skip> {
    match linktype {
        linktype::ETHERNET => {
            let ethertype = be16(frame, 12).ok_or(Skip::Malformed)?;
            ether(ethertype, frame.get(14..).ok_or(Skip::Malformed)?)
        }
        linktype::LINUX_SLL => {
            let proto = be16(frame, 14).ok_or(Skip::Malformed)?;
            ether(proto, frame.get(16..).ok_or(Skip::Malformed)?)
        }
        linktype::LINUX_SLL2 => {
            let proto = be16(frame, 0).ok_or(Skip::Malformed)?;
            ether(proto, frame.get(20..).ok_or(Skip::Malformed)?)
        }
        linktype::RAW | linktype::RAW_BSD_12 | linktype::RAW_BSD_14 => ip(frame),
        linktype::IPV4 => ipv4(frame),
        linktype::IPV6 => ipv6(frame),
        linktype::NULL | linktype::LOOP => {
            // The address family, in the capturing host's byte order (NULL) or network
            // order (LOOP): accept either.
            let fam = frame.get(..4).ok_or(Skip::Malformed)?;
            let family = u32::from_le_bytes(fam.try_into().map_err(|_| Skip::Malformed)?).min(
                u32::from_be_bytes(fam.try_into().map_err(|_| Skip::Malformed)?),
            );
            let rest = frame.get(4..).ok_or(Skip::Malformed)?;
            match family {
                2 => ipv4(rest),
                10 | 24 | 28 | 30 => ipv6(rest),
                _ => Err(Skip::NotIp),
            }
        }
        _ => Err(Skip::LinkType),
    }
}

/// After an ethertype: VLAN tags, then IP.
fn ether(mut ethertype: u16, mut rest: &[u8]) -> Result<Segment<'_>, Skip> {
    for _ in 0..=MAX_VLAN_TAGS {
        match ethertype {
            ETHERTYPE_IPV4 => return ipv4(rest),
            ETHERTYPE_IPV6 => return ipv6(rest),
            t if ETHERTYPE_VLAN.contains(&t) => {
                ethertype = be16(rest, 2).ok_or(Skip::Malformed)?;
                rest = rest.get(4..).ok_or(Skip::Malformed)?;
            }
            _ => return Err(Skip::NotIp),
        }
    }
    Err(Skip::Malformed)
}

fn ip(packet: &[u8]) -> Result<Segment<'_>, Skip> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => ipv4(packet),
        Some(6) => ipv6(packet),
        Some(_) => Err(Skip::NotIp),
        None => Err(Skip::Malformed),
    }
}

fn mapped_v4(addr: &[u8]) -> Option<[u8; 16]> {
    let mut ip = [0u8; 16];
    ip[10] = 0xff;
    ip[11] = 0xff;
    ip.get_mut(12..)?.copy_from_slice(addr.get(..4)?);
    Some(ip)
}

fn ipv4(p: &[u8]) -> Result<Segment<'_>, Skip> {
    let b0 = *p.first().ok_or(Skip::Malformed)?;
    if b0 >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = usize::from(b0 & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return Err(Skip::Malformed);
    }
    let total = usize::from(be16(p, 2).ok_or(Skip::Malformed)?);
    // Total length 0: a segmentation-offloaded frame captured before the NIC split it.
    let declared = if total == 0 { p.len() } else { total };
    if declared < ihl {
        return Err(Skip::Malformed);
    }
    let frag = be16(p, 6).ok_or(Skip::Malformed)?;
    if frag & 0x3fff != 0 {
        return Err(Skip::Fragment);
    }
    if p.get(9) != Some(&6) {
        return Err(Skip::NotTcp);
    }
    let src = mapped_v4(p.get(12..16).ok_or(Skip::Malformed)?).ok_or(Skip::Malformed)?;
    let dst = mapped_v4(p.get(16..20).ok_or(Skip::Malformed)?).ok_or(Skip::Malformed)?;
    // Ethernet pads short frames: the IP length says where the packet ends.
    let captured = p.get(ihl..declared.min(p.len())).ok_or(Skip::Malformed)?;
    tcp(src, dst, captured, declared - ihl)
}

fn ipv6(p: &[u8]) -> Result<Segment<'_>, Skip> {
    if p.first().map(|b| b >> 4) != Some(6) || p.len() < 40 {
        return Err(Skip::Malformed);
    }
    let payload_len = usize::from(be16(p, 4).ok_or(Skip::Malformed)?);
    let mut next = *p.get(6).ok_or(Skip::Malformed)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(p.get(8..24).ok_or(Skip::Malformed)?);
    dst.copy_from_slice(p.get(24..40).ok_or(Skip::Malformed)?);
    // Payload length 0: a jumbogram or an offloaded frame; take what was captured.
    let declared = if payload_len == 0 {
        p.len() - 40
    } else {
        payload_len
    };
    let mut rest = p
        .get(40..(40 + declared).min(p.len()))
        .ok_or(Skip::Malformed)?;
    let mut remaining = declared;
    for _ in 0..8 {
        let hdr_len = match next {
            6 => return tcp(src, dst, rest, remaining),
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => (usize::from(*rest.get(1).ok_or(Skip::Malformed)?) + 1) * 8,
            44 => {
                let off_flags = be16(rest, 2).ok_or(Skip::Malformed)?;
                if off_flags & 0xfff9 != 0 {
                    return Err(Skip::Fragment);
                }
                8
            }
            // Authentication header.
            51 => (usize::from(*rest.get(1).ok_or(Skip::Malformed)?) + 2) * 4,
            _ => return Err(Skip::NotTcp),
        };
        next = *rest.first().ok_or(Skip::Malformed)?;
        rest = rest.get(hdr_len..).ok_or(Skip::Malformed)?;
        remaining = remaining.checked_sub(hdr_len).ok_or(Skip::Malformed)?;
    }
    Err(Skip::Malformed)
}

fn tcp(src: [u8; 16], dst: [u8; 16], seg: &[u8], declared: usize) -> Result<Segment<'_>, Skip> {
    let off = usize::from(*seg.get(12).ok_or(Skip::Malformed)? >> 4) * 4;
    if off < 20 || declared < off {
        return Err(Skip::Malformed);
    }
    let payload = seg.get(off..).unwrap_or_default();
    Ok(Segment {
        src: Endpoint {
            ip: src,
            port: be16(seg, 0).ok_or(Skip::Malformed)?,
        },
        dst: Endpoint {
            ip: dst,
            port: be16(seg, 2).ok_or(Skip::Malformed)?,
        },
        seq: be32(seg, 4).ok_or(Skip::Malformed)?,
        ack: be32(seg, 8).ok_or(Skip::Malformed)?,
        flags: *seg.get(13).ok_or(Skip::Malformed)?,
        payload,
        wire_len: u32::try_from(declared - off).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_bytes(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&50000u16.to_be_bytes());
        t[2..4].copy_from_slice(&443u16.to_be_bytes());
        t[4..8].copy_from_slice(&1000u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t.extend_from_slice(payload);
        t
    }

    fn v4(payload: &[u8]) -> Vec<u8> {
        let t = tcp_bytes(payload, ACK);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&((20 + t.len()) as u16).to_be_bytes());
        ip.extend(t);
        ip
    }

    fn v6(payload: &[u8], ext: bool) -> Vec<u8> {
        let t = tcp_bytes(payload, ACK);
        let mut ip = vec![0x60, 0, 0, 0, 0, 0, if ext { 0 } else { 6 }, 64];
        ip.extend([0x20, 1, 0x0d, 0xb8].iter().chain(&[0; 11]).chain(&[1]));
        ip.extend([0x20, 1, 0x0d, 0xb8].iter().chain(&[0; 11]).chain(&[2]));
        let mut body = Vec::new();
        if ext {
            body.extend([6, 0, 1, 4, 0, 0, 0, 0]);
        }
        body.extend(t);
        ip[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
        ip.extend(body);
        ip
    }

    fn eth(ethertypes: &[u16], ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for (i, t) in ethertypes.iter().enumerate() {
            f.extend_from_slice(&t.to_be_bytes());
            if i + 1 < ethertypes.len() {
                f.extend_from_slice(&[0, 42]);
            }
        }
        f.extend_from_slice(ip);
        f
    }

    #[test]
    fn ethernet_vlan_qinq_padding() {
        let ip = v4(b"hi");
        let frame = eth(&[0x0800], &ip);
        let s = decode(linktype::ETHERNET, &frame).unwrap();
        assert_eq!(
            (s.payload, s.src.port, s.dst.port, s.seq),
            (&b"hi"[..], 50000, 443, 1000)
        );
        assert_eq!(s.src.addr().to_string(), "10.0.0.1");
        // Ethernet padding after a short packet is not payload.
        let mut padded = eth(&[0x0800], &ip);
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(decode(linktype::ETHERNET, &padded).unwrap().payload, b"hi");
        let tagged = eth(&[0x8100, 0x0800], &ip);
        let q = decode(linktype::ETHERNET, &tagged).unwrap();
        assert_eq!(q.payload, b"hi");
        let qinq = eth(&[0x88a8, 0x8100, 0x86dd], &v6(b"x", false));
        let s = decode(linktype::ETHERNET, &qinq).unwrap();
        assert_eq!(s.dst.addr().to_string(), "2001:db8::2");
        assert_eq!(
            decode(linktype::ETHERNET, &eth(&[0x0806], &ip)),
            Err(Skip::NotIp)
        );
    }

    #[test]
    fn cooked_raw_loop_and_ipv6_extensions() {
        let ip = v4(b"abc");
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&0x0800u16.to_be_bytes());
        sll.extend_from_slice(&ip);
        assert_eq!(decode(linktype::LINUX_SLL, &sll).unwrap().payload, b"abc");
        let mut sll2 = 0x86ddu16.to_be_bytes().to_vec();
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend(v6(b"z", true));
        assert_eq!(decode(linktype::LINUX_SLL2, &sll2).unwrap().payload, b"z");
        assert_eq!(decode(linktype::RAW, &ip).unwrap().payload, b"abc");
        let mut lo = 2u32.to_le_bytes().to_vec();
        lo.extend_from_slice(&ip);
        assert_eq!(decode(linktype::NULL, &lo).unwrap().payload, b"abc");
        assert_eq!(decode(9999, &ip), Err(Skip::LinkType));
    }

    #[test]
    fn fragments_snaplen_and_garbage() {
        let mut frag = v4(b"abc");
        frag[6] = 0x20; // more fragments
        assert_eq!(decode(linktype::RAW, &frag), Err(Skip::Fragment));
        let ip = v4(&[7; 100]);
        let cut = decode(linktype::RAW, &ip[..60]).unwrap();
        assert_eq!((cut.payload.len(), cut.wire_len), (20, 100));
        for n in 0..ip.len() {
            let _ = decode(linktype::RAW, &ip[..n]);
            let _ = decode(linktype::ETHERNET, &ip[..n]);
        }
        let mut udp = v4(b"x");
        udp[9] = 17;
        assert_eq!(decode(linktype::RAW, &udp), Err(Skip::NotTcp));
    }
}
