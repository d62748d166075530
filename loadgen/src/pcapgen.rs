//! Capture files for `tlspeek analyze`, written and rewritten here: a pcap and pcapng
//! writer, a pcap reader (the tests convert or reorder what tcpdump wrote), frames for
//! every link type `tlspeek analyze` reads, TCP connections that number their own
//! segments, and the large synthetic capture (mostly bulk data) of the memory test and of
//! the `pcap` mode (the speed benchmark against tshark in BENCHMARKS.md).
//!
//! Test-and-benchmark code: the reader trusts its input (it reads captures this module or
//! tcpdump wrote) and panics on a malformed one.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};

pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Microseconds since the epoch.
    pub ts_us: u64,
    pub data: Vec<u8>,
}

/// Writes pcap (microseconds, little-endian) or pcapng (one interface per link type).
pub struct Writer<W: Write> {
    w: W,
    ng: bool,
}

impl<W: Write> Writer<W> {
    pub fn pcap(mut w: W, linktype: u32) -> io::Result<Writer<W>> {
        w.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        w.write_all(&2u16.to_le_bytes())?;
        w.write_all(&4u16.to_le_bytes())?;
        w.write_all(&[0; 8])?;
        w.write_all(&262_144u32.to_le_bytes())?;
        w.write_all(&linktype.to_le_bytes())?;
        Ok(Writer { w, ng: false })
    }

    /// A pcapng section with one interface per link type (interface i = `linktypes[i]`),
    /// microsecond timestamps.
    pub fn pcapng(mut w: W, linktypes: &[u32]) -> io::Result<Writer<W>> {
        let mut shb = Vec::new();
        shb.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        write_block(&mut w, 0x0A0D_0D0A, &[&shb])?;
        for &lt in linktypes {
            let mut idb = Vec::new();
            idb.extend_from_slice(&(lt as u16).to_le_bytes());
            idb.extend_from_slice(&0u16.to_le_bytes());
            idb.extend_from_slice(&262_144u32.to_le_bytes());
            write_block(&mut w, 1, &[&idb])?;
        }
        Ok(Writer { w, ng: true })
    }

    /// Writes a frame captured on interface `iface` (pcap: always its one link type).
    pub fn frame_on(&mut self, iface: u32, ts_us: u64, data: &[u8]) -> io::Result<()> {
        if self.ng {
            let mut head = Vec::with_capacity(20);
            head.extend_from_slice(&iface.to_le_bytes());
            head.extend_from_slice(&((ts_us >> 32) as u32).to_le_bytes());
            head.extend_from_slice(&(ts_us as u32).to_le_bytes());
            head.extend_from_slice(&(data.len() as u32).to_le_bytes());
            head.extend_from_slice(&(data.len() as u32).to_le_bytes());
            write_block(&mut self.w, 6, &[&head, data])
        } else {
            let mut head = [0u8; 16];
            head[0..4].copy_from_slice(&((ts_us / 1_000_000) as u32).to_le_bytes());
            head[4..8].copy_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
            head[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
            head[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
            self.w.write_all(&head)?;
            self.w.write_all(data)
        }
    }

    pub fn frame(&mut self, ts_us: u64, data: &[u8]) -> io::Result<()> {
        self.frame_on(0, ts_us, data)
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

fn write_block<W: Write>(w: &mut W, btype: u32, parts: &[&[u8]]) -> io::Result<()> {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let padded = body.div_ceil(4) * 4;
    let len = (12 + padded) as u32;
    w.write_all(&btype.to_le_bytes())?;
    w.write_all(&len.to_le_bytes())?;
    for p in parts {
        w.write_all(p)?;
    }
    w.write_all(&[0; 3][..padded - body])?;
    w.write_all(&len.to_le_bytes())
}

/// Reads a little-endian microsecond pcap (what tcpdump writes): link type and records.
pub fn read_pcap(bytes: &[u8]) -> (u32, Vec<Record>) {
    assert_eq!(
        &bytes[0..4],
        &0xa1b2_c3d4u32.to_le_bytes(),
        "not a LE µs pcap"
    );
    let linktype = u32::from_le_bytes(bytes[20..24].try_into().unwrap());
    let mut at = 24;
    let mut out = Vec::new();
    while at + 16 <= bytes.len() {
        let f = |i: usize| u32::from_le_bytes(bytes[at + i..at + i + 4].try_into().unwrap());
        let (sec, usec, caplen) = (f(0), f(4), f(8) as usize);
        let data = bytes[at + 16..at + 16 + caplen].to_vec();
        out.push(Record {
            ts_us: u64::from(sec) * 1_000_000 + u64::from(usec),
            data,
        });
        at += 16 + caplen;
    }
    (linktype, out)
}

pub fn write_pcap(linktype: u32, records: &[Record]) -> Vec<u8> {
    let mut w = Writer::pcap(Vec::new(), linktype).unwrap();
    for r in records {
        w.frame(r.ts_us, &r.data).unwrap();
    }
    w.into_inner()
}

pub fn write_pcapng(linktype: u32, records: &[Record]) -> Vec<u8> {
    let mut w = Writer::pcapng(Vec::new(), &[linktype]).unwrap();
    for r in records {
        w.frame(r.ts_us, &r.data).unwrap();
    }
    w.into_inner()
}

/// The TCP part of an Ethernet/IPv4 frame (what tcpdump writes on lo): source port,
/// destination port, sequence number, flags, payload length.
pub fn tcp_of_ethernet_v4(frame: &[u8]) -> Option<(u16, u16, u32, u8, usize)> {
    if frame.len() < 14 + 20 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let tcp = &ip[ihl..];
    let off = usize::from(tcp[12] >> 4) * 4;
    Some((
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
        u32::from_be_bytes(tcp[4..8].try_into().ok()?),
        tcp[13],
        total - ihl - off,
    ))
}

/// How frames are wrapped.
#[derive(Clone, Debug)]
pub enum Link {
    /// Ethernet with these VLAN TPIDs in front (outermost first), e.g. `[0x88a8, 0x8100]`.
    Ethernet(Vec<u16>),
    Sll,
    Sll2,
    Raw,
}

/// A TCP/IP frame.
pub fn frame(
    link: &Link,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 96);
    write_frame(&mut f, link, src, dst, seq, ack, flags, payload.len());
    f.extend_from_slice(payload);
    f
}

/// Appends the headers of a frame whose payload (of `payload_len` bytes) follows.
#[allow(clippy::too_many_arguments)]
pub fn write_frame(
    f: &mut Vec<u8>,
    link: &Link,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload_len: usize,
) {
    let ethertype: u16 = if src.is_ipv4() { 0x0800 } else { 0x86dd };
    match link {
        Link::Ethernet(vlans) => {
            f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
            for (i, tpid) in vlans.iter().enumerate() {
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&(100 + i as u16).to_be_bytes());
            }
            f.extend_from_slice(&ethertype.to_be_bytes());
        }
        Link::Sll => {
            f.extend_from_slice(&[0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
            f.extend_from_slice(&ethertype.to_be_bytes());
        }
        Link::Sll2 => {
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        }
        Link::Raw => {}
    }
    let tcp_len = 20 + payload_len;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + tcp_len) as u16;
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
}

/// A TCP connection that numbers its own segments.
pub struct Conn {
    pub link: Link,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub cseq: u32,
    pub sseq: u32,
}

impl Conn {
    pub fn new(link: Link, client: SocketAddr, server: SocketAddr, isn: u32) -> Conn {
        Conn {
            link,
            client,
            server,
            cseq: isn,
            sseq: isn.wrapping_mul(7).wrapping_add(12345),
        }
    }

    /// The next segment from the client (`from_client`) or the server: sequence number
    /// from that side's counter, which advances by the payload (and by one for SYN or FIN);
    /// the other side's counter as the ACK number when ACK is set.
    pub fn segment(&mut self, from_client: bool, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (src, dst, seq, peer_seq) = if from_client {
            (self.client, self.server, self.cseq, self.sseq)
        } else {
            (self.server, self.client, self.sseq, self.cseq)
        };
        let ack = if flags & ACK != 0 { peer_seq } else { 0 };
        let f = frame(&self.link, src, dst, seq, ack, flags, payload);
        let used = payload.len() as u32 + u32::from(flags & (SYN | FIN) != 0);
        let own = if from_client {
            &mut self.cseq
        } else {
            &mut self.sseq
        };
        *own = own.wrapping_add(used);
        f
    }

    pub fn syn(&mut self) -> Vec<u8> {
        self.segment(true, SYN, &[])
    }

    pub fn syn_ack(&mut self) -> Vec<u8> {
        self.segment(false, SYN | ACK, &[])
    }

    pub fn handshake(&mut self) -> Vec<Vec<u8>> {
        let syn = self.syn();
        let syn_ack = self.syn_ack();
        let ack = self.client_data(&[]);
        vec![syn, syn_ack, ack]
    }

    pub fn client_data(&mut self, payload: &[u8]) -> Vec<u8> {
        self.segment(true, ACK | PSH, payload)
    }

    pub fn server_data(&mut self, payload: &[u8]) -> Vec<u8> {
        self.segment(false, ACK | PSH, payload)
    }

    pub fn client_fin(&mut self) -> Vec<u8> {
        self.segment(true, FIN | ACK, &[])
    }

    pub fn server_fin(&mut self) -> Vec<u8> {
        self.segment(false, FIN | ACK, &[])
    }
}

/// Deterministic pseudo-random numbers (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What a synthetic capture holds.
#[derive(Debug, Default)]
pub struct Synthetic {
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
    /// (client address, index into the hellos given) of every connection.
    pub clients: Vec<(SocketAddr, usize)>,
}

/// A large capture of mostly bulk data, written to `w` as pcap (Ethernet; IPv4 and IPv6,
/// with and without 802.1Q / QinQ tags): `connections` TLS connections, `concurrent` at a
/// time with their packets interleaved, each a handshake, one of `hellos` (a ClientHello,
/// in two segments when long), one of `server_hellos`, then `bulk` bytes (on average) of
/// TLS application data records from the server in 1448-byte segments with an ACK every
/// second segment, then FIN both ways.
pub fn synthetic<W: Write>(
    w: W,
    hellos: &[&[u8]],
    server_hellos: &[&[u8]],
    connections: u64,
    concurrent: usize,
    bulk: u64,
) -> io::Result<(W, Synthetic)> {
    const MSS: usize = 1448;
    let mut out = Writer::pcap(w, LINKTYPE_ETHERNET)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // One 16 KiB application-data record, cycled through as the server's stream.
    let mut record = vec![0x17, 0x03, 0x03, 0x40, 0x00];
    record.extend((0..16384).map(|i| (i * 31 % 251) as u8));
    struct Live {
        conn: Conn,
        left: u64,
        pos: usize,
        segs: u64,
    }
    let mut live: Vec<Live> = Vec::new();
    let mut started = 0u64;
    let mut ts: u64 = 1_700_000_000_000_000;
    let mut stats = Synthetic::default();
    let mut scratch = Vec::with_capacity(2048);
    let emit = |out: &mut Writer<W>, stats: &mut Synthetic, ts: &mut u64, f: &[u8]| {
        *ts += 7;
        stats.packets += 1;
        stats.bytes += f.len() as u64 + 16;
        out.frame(*ts, f)
    };
    while started < connections || !live.is_empty() {
        while live.len() < concurrent && started < connections {
            let i = started;
            started += 1;
            let v6 = i % 5 == 4;
            let link = match i % 3 {
                0 => Link::Ethernet(vec![]),
                1 => Link::Ethernet(vec![0x8100]),
                _ => Link::Ethernet(vec![0x88a8, 0x8100]),
            };
            let (client, server): (SocketAddr, SocketAddr) = if v6 {
                (
                    format!("[2001:db8::{:x}]:{}", 1 + i % 200, 20000 + i % 40000)
                        .parse()
                        .unwrap(),
                    "[2001:db8:ffff::1]:443".parse().unwrap(),
                )
            } else {
                (
                    format!(
                        "10.{}.{}.{}:{}",
                        i / 65536 % 256,
                        i / 256 % 256,
                        i % 256,
                        20000 + i % 40000
                    )
                    .parse()
                    .unwrap(),
                    "192.0.2.10:443".parse().unwrap(),
                )
            };
            let mut conn = Conn::new(link, client, server, (i as u32).wrapping_mul(2_654_435_761));
            for f in conn.handshake() {
                emit(&mut out, &mut stats, &mut ts, &f)?;
            }
            let which = (i as usize) % hellos.len();
            let hello = hellos[which];
            if hello.len() > 200 {
                let (a, b) = hello.split_at(hello.len() / 2);
                emit(&mut out, &mut stats, &mut ts, &conn.client_data(a))?;
                emit(&mut out, &mut stats, &mut ts, &conn.client_data(b))?;
            } else {
                emit(&mut out, &mut stats, &mut ts, &conn.client_data(hello))?;
            }
            let sh = server_hellos[(i as usize) % server_hellos.len()];
            emit(&mut out, &mut stats, &mut ts, &conn.server_data(sh))?;
            stats.connections += 1;
            stats.clients.push((client, which));
            live.push(Live {
                conn,
                left: bulk / 2 + rng.below(bulk.max(1)),
                pos: 0,
                segs: 0,
            });
        }
        // One bulk segment of a random live connection.
        let k = rng.below(live.len() as u64) as usize;
        let l = &mut live[k];
        if l.left == 0 {
            let mut l = live.swap_remove(k);
            let f = l.conn.client_fin();
            emit(&mut out, &mut stats, &mut ts, &f)?;
            let f = l.conn.server_fin();
            emit(&mut out, &mut stats, &mut ts, &f)?;
            continue;
        }
        let n = (MSS as u64).min(l.left) as usize;
        let mut chunk_left = n;
        scratch.clear();
        write_frame(
            &mut scratch,
            &l.conn.link,
            l.conn.server,
            l.conn.client,
            l.conn.sseq,
            l.conn.cseq,
            ACK,
            n,
        );
        while chunk_left > 0 {
            let take = chunk_left.min(record.len() - l.pos);
            scratch.extend_from_slice(&record[l.pos..l.pos + take]);
            l.pos = (l.pos + take) % record.len();
            chunk_left -= take;
        }
        l.conn.sseq = l.conn.sseq.wrapping_add(n as u32);
        l.left -= n as u64;
        l.segs += 1;
        emit(&mut out, &mut stats, &mut ts, &scratch)?;
        if l.segs % 2 == 0 {
            let f = l.conn.client_data(&[]);
            emit(&mut out, &mut stats, &mut ts, &f)?;
        }
    }
    stats.bytes += 24;
    Ok((out.into_inner(), stats))
}
