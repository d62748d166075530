//! Capture files: pcap (micro- or nanosecond, either byte order, and the "modified" format
//! of old Red Hat tcpdumps) and pcapng (several sections, several interfaces, any
//! timestamp resolution), read through one bounded buffer.
//!
//! `pcap-parser` parses each record; the framing around it is checked here first, so that
//! damage is found, reported with its file offset, and stepped over: a record header that
//! no capture could hold makes the reader scan forward for the next plausible record (two
//! in a row for pcap, a block whose trailing length matches for pcapng), and a block whose
//! framing is sound but whose content is not is skipped whole. A file that ends inside a
//! record is reported as cut off. Nothing here trusts a length from the file before
//! checking it against a bound, so a lying length can neither allocate without limit nor
//! index past the buffer.

use std::io::{self, Read};

use pcap_parser::pcapng::Block;
use pcap_parser::{
    LegacyPcapBlock, PcapError, parse_block_be, parse_block_le, parse_pcap_frame,
    parse_pcap_frame_be, parse_pcap_frame_modified, parse_pcap_header,
};

/// Largest record or block accepted (pcap's usual snaplen is 256 KiB; a block larger than
/// this is taken as damage, not as a reason to buffer more).
pub const MAX_RECORD: usize = 16 * 1024 * 1024;
/// Bytes asked of the file at a time: from the first size, doubling per refill up to the
/// last (small inputs never pay for a large buffer).
const FIRST_CHUNK: usize = 64 * 1024;
const READ_CHUNK: usize = 1024 * 1024;

const PCAP_HEADER_LEN: usize = 24;
const SHB_MAGIC: u32 = 0x0A0D_0D0A;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// pcapng block types accepted as a resynchronisation point after damage.
const KNOWN_BLOCKS: [u32; 9] = [
    SHB_MAGIC,
    0x0000_0001, // interface description
    0x0000_0003, // simple packet
    0x0000_0004, // name resolution
    0x0000_0005, // interface statistics
    0x0000_0006, // enhanced packet
    0x0000_000A, // decryption secrets
    0x0000_0BAD, // custom
    0x4000_0BAD, // custom, do not copy
];

/// Nanoseconds since the Unix epoch.
pub type Nanos = i64;

/// The capture's file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Pcap,
    PcapNg,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pcap => "pcap",
            Format::PcapNg => "pcapng",
        }
    }
}

/// Why a file could not be read as a capture at all.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a pcap or pcapng capture: {0}")]
    NotACapture(String),
}

/// One captured packet.
#[derive(Debug)]
pub struct Packet<'a> {
    pub ts: Nanos,
    /// LINKTYPE_* value of its interface.
    pub linktype: u32,
    /// The captured bytes (possibly fewer than were on the wire).
    pub data: &'a [u8],
    /// File offset of the record.
    pub offset: u64,
}

/// What the reader found next.
#[derive(Debug)]
pub enum Next<'a> {
    Packet(Packet<'a>),
    /// `skipped` bytes from `offset` could not be read as records and were stepped over.
    Damaged {
        offset: u64,
        skipped: u64,
        reason: String,
    },
    /// The file ends inside a record that starts at `offset`.
    CutOff {
        offset: u64,
        reason: String,
    },
    End,
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    linktype: u32,
    /// Timestamp units per second.
    units: u64,
    /// Seconds added to every timestamp.
    offset_secs: i64,
}

#[derive(Debug)]
enum Layout {
    Pcap {
        big_endian: bool,
        nanos: bool,
        modified: bool,
        linktype: u32,
        max_caplen: usize,
        last_sec: Option<u32>,
    },
    PcapNg {
        big_endian: bool,
        interfaces: Vec<Interface>,
        last_ts: Nanos,
    },
}

/// Reads packets from a capture through one buffer of at most [`MAX_RECORD`] bytes plus a
/// read chunk (1 MiB).
pub struct CaptureReader<R> {
    src: R,
    buf: Vec<u8>,
    /// The unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
    chunk: usize,
    layout: Layout,
    format: Format,
}

fn u32_at(b: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

/// A short description of what a non-capture file looks like, for the error message.
fn describe(head: &[u8]) -> String {
    if head.is_empty() {
        return "the file is empty".into();
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return "it is gzip-compressed (decompress it first: gunzip -k FILE)".into();
    }
    if head.starts_with(b"\xfd7zXZ") || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return "it is xz/zstd-compressed (decompress it first)".into();
    }
    if head.starts_with(b"PK\x03\x04") {
        return "it is a zip archive".into();
    }
    let shown: String = head
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    if head
        .iter()
        .take(64)
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return format!("it looks like text (starts with {shown})");
    }
    format!("unknown magic number (starts with {shown})")
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header and recognises the format. A file that is neither pcap nor
    /// pcapng is an error.
    pub fn new(src: R) -> Result<CaptureReader<R>, CaptureError> {
        let mut r = CaptureReader {
            src,
            buf: Vec::new(),
            start: 0,
            end: 0,
            base: 0,
            eof: false,
            chunk: FIRST_CHUNK,
            layout: Layout::PcapNg {
                big_endian: false,
                interfaces: Vec::new(),
                last_ts: 0,
            },
            format: Format::PcapNg,
        };
        r.fill(PCAP_HEADER_LEN)?;
        let head = r.unread().to_vec();
        let head = head.as_slice();
        let magic = u32_at(head, 0, false);
        match magic {
            Some(SHB_MAGIC) => {
                // The first block is a section header: `next_record` reads it like any other.
                r.format = Format::PcapNg;
                match u32_at(head, 8, false) {
                    Some(BYTE_ORDER_MAGIC) | None => {}
                    Some(m) if m.swap_bytes() == BYTE_ORDER_MAGIC => {}
                    Some(_) => {
                        return Err(CaptureError::NotACapture(
                            "a pcapng section header with a bad byte-order magic".into(),
                        ));
                    }
                }
            }
            Some(0xa1b2_c3d4 | 0xa1b2_3c4d | 0xa1b2_cd34 | 0xd4c3_b2a1 | 0x4d3c_b2a1) => {
                let (_, h) = parse_pcap_header(head).map_err(|_| {
                    CaptureError::NotACapture(format!(
                        "the pcap file header is cut off ({} of 24 bytes)",
                        head.len()
                    ))
                })?;
                let snaplen = usize::try_from(h.snaplen).unwrap_or(MAX_RECORD);
                r.layout = Layout::Pcap {
                    big_endian: h.is_bigendian(),
                    nanos: h.is_nanosecond_precision(),
                    modified: h.is_modified_format(),
                    linktype: h.network.0 as u32,
                    // Some writers put 0 or a small value in snaplen and write more.
                    max_caplen: snaplen.clamp(262_144, MAX_RECORD),
                    last_sec: None,
                };
                r.format = Format::Pcap;
                r.start += PCAP_HEADER_LEN;
            }
            _ => return Err(CaptureError::NotACapture(describe(head))),
        }
        Ok(r)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// File offset of the next unread byte (how far the reader got).
    pub fn position(&self) -> u64 {
        self.base + self.start as u64
    }

    fn unread(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    fn avail(&self) -> usize {
        self.end - self.start
    }

    /// Makes at least `n` unread bytes available; false when the file ends first (what is
    /// there stays available).
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        if self.avail() >= n {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        // Move the unread bytes to the front, then grow to what is needed plus a chunk.
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        let want = n + self.chunk;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        self.chunk = (self.chunk * 2).min(READ_CHUNK);
        while self.avail() < n {
            let dst = self.buf.get_mut(self.end..).unwrap_or_default();
            match self.src.read(dst) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Drops `n` unread bytes.
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Drops everything up to the end of the file; returns how many bytes that was.
    fn consume_rest(&mut self) -> io::Result<u64> {
        let mut n = 0u64;
        loop {
            n += self.avail() as u64;
            self.start = self.end;
            if self.eof {
                return Ok(n);
            }
            self.fill(1)?;
        }
    }

    /// The next packet, damage report or end.
    pub fn next_record(&mut self) -> io::Result<Next<'_>> {
        match self.layout {
            Layout::Pcap { .. } => self.next_pcap(),
            Layout::PcapNg { .. } => self.next_pcapng(),
        }
    }

    // ---------------------------------------------------------------------------------
    // pcap

    fn pcap_header_len(&self) -> usize {
        match self.layout {
            Layout::Pcap { modified: true, .. } => 24,
            _ => 16,
        }
    }

    /// Is there a plausible record header at `at` (unread-relative)? `Some(len)` of the
    /// whole record when so.
    fn plausible_pcap(&self, at: usize) -> Option<usize> {
        let Layout::Pcap {
            big_endian,
            nanos,
            max_caplen,
            last_sec,
            ..
        } = self.layout
        else {
            return None;
        };
        let h = self.unread().get(at..)?;
        let sec = u32_at(h, 0, big_endian)?;
        let frac = u32_at(h, 4, big_endian)?;
        let caplen = usize::try_from(u32_at(h, 8, big_endian)?).ok()?;
        let origlen = usize::try_from(u32_at(h, 12, big_endian)?).ok()?;
        let frac_ok = frac < if nanos { 1_000_000_000 } else { 1_000_000 };
        let time_ok = last_sec.is_none_or(|last| sec.abs_diff(last) <= 86_400);
        (frac_ok && time_ok && caplen <= max_caplen && origlen >= caplen && origlen <= MAX_RECORD)
            .then_some(self.pcap_header_len() + caplen)
    }

    fn next_pcap(&mut self) -> io::Result<Next<'_>> {
        let hdr = self.pcap_header_len();
        let offset = self.position();
        if !self.fill(hdr)? {
            return Ok(match self.avail() {
                0 => Next::End,
                n => {
                    self.consume(n);
                    Next::CutOff {
                        offset,
                        reason: format!("record header cut off ({n} of {hdr} bytes)"),
                    }
                }
            });
        }
        let Layout::Pcap {
            big_endian,
            max_caplen,
            ..
        } = self.layout
        else {
            return Ok(Next::End);
        };
        let caplen = u32_at(self.unread(), 8, big_endian)
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(usize::MAX);
        if caplen > max_caplen {
            let reason = format!("record length {caplen} is larger than any packet");
            return self.resync_pcap(offset, reason);
        }
        if !self.fill(hdr + caplen)? {
            let n = self.avail();
            self.consume(n);
            return Ok(Next::CutOff {
                offset,
                reason: format!(
                    "packet cut off ({} of {caplen} bytes)",
                    n.saturating_sub(hdr)
                ),
            });
        }
        let Layout::Pcap {
            big_endian,
            nanos,
            modified,
            linktype,
            ..
        } = self.layout
        else {
            return Ok(Next::End);
        };
        let record = self.unread().get(..hdr + caplen).unwrap_or_default();
        let Some((sec, frac, len)) = parse_pcap_record(record, modified, big_endian) else {
            return self.resync_pcap(offset, "unreadable record".into());
        };
        if let Layout::Pcap { last_sec, .. } = &mut self.layout {
            *last_sec = Some(sec);
        }
        let ts = i64::from(sec) * 1_000_000_000 + i64::from(frac) * if nanos { 1 } else { 1_000 };
        let at = self.start + hdr;
        self.consume(hdr + caplen);
        Ok(Next::Packet(Packet {
            ts,
            linktype,
            data: self.buf.get(at..at + len).unwrap_or_default(),
            offset,
        }))
    }

    /// Steps over damage byte by byte until two plausible records follow each other (or
    /// one ends exactly at the end of the file).
    fn resync_pcap(&mut self, offset: u64, reason: String) -> io::Result<Next<'_>> {
        let hdr = self.pcap_header_len();
        let mut skipped = 0u64;
        loop {
            self.consume(1);
            skipped += 1;
            if !self.fill(hdr)? {
                skipped += self.consume_rest()?;
                break;
            }
            let Some(len) = self.plausible_pcap(0) else {
                continue;
            };
            let complete = self.fill(len + hdr)?;
            let next_ok = self.plausible_pcap(len).is_some();
            let ends_here = !complete && self.avail() == len;
            if next_ok || ends_here {
                break;
            }
        }
        Ok(Next::Damaged {
            offset,
            skipped,
            reason,
        })
    }

    // ---------------------------------------------------------------------------------
    // pcapng

    /// Framing of the block at `at` (unread-relative): `Ok(Some((type, len, big_endian)))`
    /// when its header is sound, `Ok(None)` when more bytes are needed, `Err` when it
    /// cannot be a block.
    fn block_frame(&self, at: usize) -> Result<Option<(u32, usize, bool)>, String> {
        let Layout::PcapNg { big_endian, .. } = self.layout else {
            return Err("not pcapng".into());
        };
        let h = self.unread().get(at..).unwrap_or_default();
        let Some(btype_le) = u32_at(h, 0, false) else {
            return Ok(None);
        };
        let (btype, be) = if btype_le == SHB_MAGIC {
            match u32_at(h, 8, false) {
                None => return Ok(None),
                Some(BYTE_ORDER_MAGIC) => (SHB_MAGIC, false),
                Some(m) if m.swap_bytes() == BYTE_ORDER_MAGIC => (SHB_MAGIC, true),
                Some(_) => return Err("section header with a bad byte-order magic".into()),
            }
        } else {
            (u32_at(h, 0, big_endian).unwrap_or(0), big_endian)
        };
        let Some(len) = u32_at(h, 4, be) else {
            return Ok(None);
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < 12 || len % 4 != 0 || len > MAX_RECORD {
            return Err(format!("block length {len} is not possible"));
        }
        Ok(Some((btype, len, be)))
    }

    fn next_pcapng(&mut self) -> io::Result<Next<'_>> {
        loop {
            let offset = self.position();
            if !self.fill(12)? {
                return Ok(match self.avail() {
                    0 => Next::End,
                    n => {
                        self.consume(n);
                        Next::CutOff {
                            offset,
                            reason: format!("block header cut off ({n} bytes)"),
                        }
                    }
                });
            }
            let (btype, len, be) = match self.block_frame(0) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    let n = self.avail();
                    self.consume(n);
                    return Ok(Next::CutOff {
                        offset,
                        reason: "block header cut off".into(),
                    });
                }
                Err(reason) => return self.resync_pcapng(offset, reason),
            };
            if !self.fill(len)? {
                let n = self.avail();
                self.consume(n);
                return Ok(Next::CutOff {
                    offset,
                    reason: format!("block cut off ({n} of {len} bytes)"),
                });
            }
            if u32_at(self.unread(), len - 4, be) != Some(len as u32) {
                return self.resync_pcapng(offset, "block lengths do not match".into());
            }
            match self.block(btype, len, be) {
                Some(Ok((ts, linktype, at, data_len))) => {
                    return Ok(Next::Packet(Packet {
                        ts,
                        linktype,
                        data: self.buf.get(at..at + data_len).unwrap_or_default(),
                        offset,
                    }));
                }
                Some(Err(reason)) => {
                    return Ok(Next::Damaged {
                        offset,
                        skipped: len as u64,
                        reason,
                    });
                }
                None => {}
            }
        }
    }

    /// Parses and consumes one framed block. `Some(Ok(..))` for a packet (timestamp,
    /// linktype, buffer position and length of its bytes), `Some(Err)` for a block that
    /// is damaged inside, `None` for a block that carries no packet.
    #[allow(clippy::type_complexity)]
    fn block(
        &mut self,
        btype: u32,
        len: usize,
        be: bool,
    ) -> Option<Result<(Nanos, u32, usize, usize), String>> {
        /// Where the packet bytes start in an enhanced / simple packet block.
        const EPB_DATA: usize = 28;
        const SPB_DATA: usize = 12;
        let block_at = self.start;
        let bytes = self.buf.get(block_at..block_at + len).unwrap_or_default();
        let parsed = if be {
            parse_block_be(bytes)
        } else {
            parse_block_le(bytes)
        };
        let Layout::PcapNg {
            big_endian,
            interfaces,
            last_ts,
        } = &mut self.layout
        else {
            return None;
        };
        let result = match parsed {
            Err(_) => Some(Err(format!("unreadable block of type 0x{btype:08x}"))),
            Ok((_, Block::SectionHeader(_))) => {
                *big_endian = be;
                interfaces.clear();
                None
            }
            Ok((_, Block::InterfaceDescription(idb))) => {
                interfaces.push(Interface {
                    linktype: idb.linktype.0 as u32,
                    units: ts_units(idb.if_tsresol),
                    offset_secs: idb.if_tsoffset,
                });
                None
            }
            Ok((_, Block::EnhancedPacket(epb))) => {
                match interfaces.get(usize::try_from(epb.if_id).unwrap_or(usize::MAX)) {
                    None => Some(Err(format!(
                        "packet of interface {} that was never described",
                        epb.if_id
                    ))),
                    Some(i) => {
                        let raw = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                        let ts = to_nanos(raw, i.units, i.offset_secs);
                        *last_ts = ts;
                        let caplen = usize::try_from(epb.caplen).unwrap_or(usize::MAX);
                        let data_len = caplen.min(epb.data.len());
                        Some(Ok((ts, i.linktype, block_at + EPB_DATA, data_len)))
                    }
                }
            }
            Ok((_, Block::SimplePacket(spb))) => match interfaces.first() {
                None => Some(Err("packet before any interface was described".into())),
                Some(i) => {
                    let orig = usize::try_from(spb.origlen).unwrap_or(usize::MAX);
                    let data_len = orig.min(spb.data.len());
                    Some(Ok((*last_ts, i.linktype, block_at + SPB_DATA, data_len)))
                }
            },
            Ok(_) => None,
        };
        self.consume(len);
        result
    }

    /// Steps over damage four bytes at a time (blocks are 32-bit aligned) until a known
    /// block type with a sound length and a matching trailing length.
    fn resync_pcapng(&mut self, offset: u64, reason: String) -> io::Result<Next<'_>> {
        let mut skipped = 0u64;
        loop {
            self.consume(4);
            skipped += 4;
            if !self.fill(12)? {
                skipped += self.consume_rest()?;
                break;
            }
            let Ok(Some((btype, len, be))) = self.block_frame(0) else {
                continue;
            };
            if !KNOWN_BLOCKS.contains(&btype) {
                continue;
            }
            if !self.fill(len)? {
                // A block that runs past the end: let `next_record` report the cut.
                break;
            }
            if u32_at(self.unread(), len - 4, be) == Some(len as u32) {
                break;
            }
        }
        Ok(Next::Damaged {
            offset,
            skipped,
            reason,
        })
    }
}

/// Units per second of an `if_tsresol` value: 10^-n, or 2^-n with the high bit set; the
/// default (microseconds) when out of range.
fn ts_units(resol: u8) -> u64 {
    let n = u32::from(resol & 0x7f);
    if resol & 0x80 == 0 {
        10u64.checked_pow(n).unwrap_or(1_000_000)
    } else {
        1u64.checked_shl(n).filter(|_| n < 64).unwrap_or(1_000_000)
    }
}

fn to_nanos(raw: u64, units: u64, offset_secs: i64) -> Nanos {
    let units = u128::from(units.max(1));
    let raw = u128::from(raw);
    let secs = raw / units;
    let frac = raw % units;
    let nanos = secs * 1_000_000_000 + frac * 1_000_000_000 / units;
    i64::try_from(nanos)
        .unwrap_or(i64::MAX)
        .saturating_add(offset_secs.saturating_mul(1_000_000_000))
}

/// A classic pcap record's seconds, fraction and captured length, in the file's flavour.
fn parse_pcap_record(record: &[u8], modified: bool, big_endian: bool) -> Option<(u32, u32, usize)> {
    let parsed: Result<_, pcap_parser::nom::Err<PcapError<&[u8]>>> = if modified {
        parse_pcap_frame_modified(record)
    } else if big_endian {
        parse_pcap_frame_be(record)
    } else {
        parse_pcap_frame(record)
    };
    let (
        _,
        LegacyPcapBlock {
            ts_sec,
            ts_usec,
            data,
            ..
        },
    ) = parsed.ok()?;
    Some((ts_sec, ts_usec, data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_header(linktype: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        v.extend_from_slice(&2u16.to_le_bytes());
        v.extend_from_slice(&4u16.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&65535u32.to_le_bytes());
        v.extend_from_slice(&linktype.to_le_bytes());
        v
    }

    fn pcap_record(sec: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&sec.to_le_bytes());
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    fn collect(bytes: &[u8]) -> Vec<String> {
        let mut r = CaptureReader::new(bytes).unwrap();
        let mut out = Vec::new();
        loop {
            match r.next_record().unwrap() {
                Next::Packet(p) => {
                    out.push(format!("packet@{} {:?} ts={}", p.offset, p.data, p.ts))
                }
                Next::Damaged {
                    offset, skipped, ..
                } => out.push(format!("damaged@{offset}+{skipped}")),
                Next::CutOff { offset, .. } => out.push(format!("cut@{offset}")),
                Next::End => break,
            }
        }
        out
    }

    #[test]
    fn pcap_records_damage_and_cut() {
        let mut f = pcap_header(1);
        f.extend(pcap_record(100, b"abc"));
        f.extend(pcap_record(101, b"de"));
        assert_eq!(
            collect(&f),
            [
                "packet@24 [97, 98, 99] ts=100000005000",
                "packet@43 [100, 101] ts=101000005000"
            ]
        );
        // A record with an impossible length, then two good ones.
        let mut g = pcap_header(1);
        g.extend(pcap_record(100, b"abc"));
        g.extend_from_slice(&[0xff; 16]);
        g.extend(pcap_record(102, b"xy"));
        g.extend(pcap_record(103, b"z"));
        assert_eq!(
            collect(&g),
            [
                "packet@24 [97, 98, 99] ts=100000005000",
                "damaged@43+16",
                "packet@59 [120, 121] ts=102000005000",
                "packet@77 [122] ts=103000005000"
            ]
        );
        // Cut in the middle of a packet.
        let cut = &f[..f.len() - 1];
        assert_eq!(collect(cut)[1], "cut@43");
    }

    #[test]
    fn not_a_capture() {
        for (bytes, want) in [
            (&b""[..], "empty"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "text"),
            (&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0], "gzip"),
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "magic"),
        ] {
            let e = CaptureReader::new(bytes).err().unwrap().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    fn block(btype: u32, body: &[u8]) -> Vec<u8> {
        let len = (12 + body.len()).div_ceil(4) * 4;
        let mut v = Vec::new();
        v.extend_from_slice(&btype.to_le_bytes());
        v.extend_from_slice(&(len as u32).to_le_bytes());
        v.extend_from_slice(body);
        v.resize(len - 4, 0);
        v.extend_from_slice(&(len as u32).to_le_bytes());
        v
    }

    fn pcapng(packets: &[&[u8]]) -> Vec<u8> {
        let mut shb = Vec::new();
        shb.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        let mut f = block(SHB_MAGIC, &shb);
        // IDB: Ethernet, snaplen 0, if_tsresol = 9 (ns).
        let mut idb = vec![1, 0, 0, 0, 0, 0, 0, 0];
        idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        f.extend(block(1, &idb));
        for p in packets {
            let mut epb = Vec::new();
            epb.extend_from_slice(&0u32.to_le_bytes());
            let ts: u64 = 1_700_000_000_123_456_789;
            epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
            epb.extend_from_slice(&(ts as u32).to_le_bytes());
            epb.extend_from_slice(&(p.len() as u32).to_le_bytes());
            epb.extend_from_slice(&(p.len() as u32).to_le_bytes());
            epb.extend_from_slice(p);
            f.extend(block(6, &epb));
        }
        f
    }

    #[test]
    fn pcapng_packets_resolution_and_damage() {
        let f = pcapng(&[b"hello", b"w"]);
        let got = collect(&f);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].ends_with("[104, 101, 108, 108, 111] ts=1700000000123456789"));
        // Damage the length of the first packet block: the second is found again.
        let mut g = f.clone();
        let first_epb = 28 + 32;
        g[first_epb + 4] = 0xff;
        let got = collect(&g);
        assert!(got[0].starts_with("damaged@60+"), "{got:?}");
        assert!(got[1].ends_with("[119] ts=1700000000123456789"), "{got:?}");
        assert_eq!(collect(&f[..f.len() - 3]).last().unwrap(), "cut@100");
    }

    #[test]
    fn resolutions() {
        assert_eq!(ts_units(6), 1_000_000);
        assert_eq!(ts_units(9), 1_000_000_000);
        assert_eq!(ts_units(0x80 | 10), 1024);
        assert_eq!(ts_units(0xff), 1_000_000);
        assert_eq!(to_nanos(1_500_000, 1_000_000, 10), 11_500_000_000);
    }
}
