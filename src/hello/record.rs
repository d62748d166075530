//! TLS record framing: find the first handshake message in the first bytes of a stream.
//!
//! tls-parser reads any five bytes as a record header and has no reassembler, so the
//! walk is done here: each record header is checked byte by byte as it arrives (content
//! type, `0x03` major version, minor ≤ 4, length bounds), handshake payloads are joined
//! until the first message's 4-byte header and body are complete, and only then handed
//! to a message parser. Any prefix of a valid flight therefore answers `NeedMore`; a
//! byte that no valid flight could hold answers `NotTls` at once.

use std::borrow::Cow;

use super::reader::Reader;

/// Largest record length accepted (RFC 8446 §5.2 ciphertext bound, 2^14 + 2048 —
/// the plaintext bound plus the slack a tolerant peer may need).
pub(crate) const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

pub(crate) const CONTENT_ALERT: u8 = 0x15;
pub(crate) const CONTENT_HANDSHAKE: u8 = 0x16;

/// What the first records of a flight hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framed<'a> {
    NeedMore,
    NotTls,
    TooLarge,
    /// An alert record came before the handshake message was complete (server side only).
    Alert {
        level: u8,
        description: u8,
    },
    /// The first handshake message, header included, and where its last record ends.
    Message {
        record_version: u16,
        message: Cow<'a, [u8]>,
        consumed: usize,
    },
}

/// Which records may precede the message: a client sends nothing but the hello, a server
/// may answer with an alert instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// Returns the first handshake message of `buf` if its type is `msg_type` and the records
/// carrying it end within `max` bytes.
pub(crate) fn first_handshake_message(
    buf: &[u8],
    max: usize,
    msg_type: u8,
    side: Side,
) -> Framed<'_> {
    let mut off = 0usize;
    let mut header = MessageHeader::default();
    // Bytes of handshake payload in complete records so far.
    let mut joined = 0usize;
    let mut record_version = None;
    loop {
        let rest = buf.get(off..).unwrap_or_default();
        match check_record_header(rest, side) {
            HeaderCheck::NeedMore => return Framed::NeedMore,
            HeaderCheck::NotTls => return Framed::NotTls,
            HeaderCheck::Alert { len } => {
                let Some(&[level, description]) = rest.get(5..7) else {
                    return Framed::NeedMore;
                };
                if ends_handshake(level, description) {
                    return Framed::Alert { level, description };
                }
                // A warning that does not end the handshake (older IIS and Apache send
                // `unrecognized_name` before their ServerHello when the SNI matches no
                // site): skip its record and keep reading for the ServerHello.
                if off.saturating_add(5).saturating_add(len) > max {
                    return Framed::TooLarge;
                }
                if rest.len() < 5 + len {
                    return Framed::NeedMore;
                }
                off += 5 + len;
            }
            HeaderCheck::Handshake { version, len } => {
                if len > MAX_RECORD_LEN || off.saturating_add(5).saturating_add(len) > max {
                    return Framed::TooLarge;
                }
                record_version.get_or_insert(version);
                let payload = rest.get(5..).unwrap_or_default();
                let avail = payload.get(..len).unwrap_or(payload);
                header.learn(avail);
                if header.msg_type().is_some_and(|t| t != msg_type) {
                    return Framed::NotTls;
                }
                let total = header.total();
                if total.is_some_and(|t| t.saturating_add(5) > max) {
                    return Framed::TooLarge;
                }
                if avail.len() < len {
                    return Framed::NeedMore;
                }
                joined += len;
                off += 5 + len;
                if let Some(total) = total.filter(|&t| joined >= t) {
                    let version = record_version.unwrap_or(version);
                    return match join(buf, off, total) {
                        Some(message) => Framed::Message {
                            record_version: version,
                            message,
                            consumed: off,
                        },
                        None => Framed::NotTls,
                    };
                }
            }
        }
    }
}

/// The handshake message's 4-byte header, learned as early as its bytes arrive.
#[derive(Default)]
struct MessageHeader {
    bytes: [u8; 4],
    len: usize,
}

impl MessageHeader {
    fn learn(&mut self, avail: &[u8]) {
        for &b in avail {
            let Some(slot) = self.bytes.get_mut(self.len) else {
                break;
            };
            *slot = b;
            self.len += 1;
        }
    }

    fn msg_type(&self) -> Option<u8> {
        (self.len >= 1).then_some(self.bytes[0])
    }

    /// The whole message's length (header included), once the header is known.
    fn total(&self) -> Option<usize> {
        let [_, a, b, c] = self.bytes;
        (self.len == 4).then(|| 4usize.saturating_add(u32::from_be_bytes([0, a, b, c]) as usize))
    }
}

enum HeaderCheck {
    NeedMore,
    NotTls,
    Alert { len: usize },
    Handshake { version: u16, len: usize },
}

/// Alert levels and the warnings that end a handshake (RFC 5246 §7.2).
const LEVEL_WARNING: u8 = 1;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// Does this alert end the handshake? A fatal one always; a warning only when it is
/// `close_notify` or `user_canceled`. Any other warning lets the handshake go on.
fn ends_handshake(level: u8, description: u8) -> bool {
    level != LEVEL_WARNING || matches!(description, CLOSE_NOTIFY | USER_CANCELED)
}

/// Checks as much of a record header as `rest` holds.
fn check_record_header(rest: &[u8], side: Side) -> HeaderCheck {
    let Some(&content_type) = rest.first() else {
        return HeaderCheck::NeedMore;
    };
    let alert = match content_type {
        CONTENT_HANDSHAKE => false,
        CONTENT_ALERT if side == Side::Server => true,
        _ => return HeaderCheck::NotTls,
    };
    match rest.get(1) {
        None => return HeaderCheck::NeedMore,
        Some(0x03) => {}
        Some(_) => return HeaderCheck::NotTls,
    }
    let minor = match rest.get(2) {
        None => return HeaderCheck::NeedMore,
        Some(&m) if m <= 0x04 => m,
        Some(_) => return HeaderCheck::NotTls,
    };
    let len = match (rest.get(3), rest.get(4)) {
        (Some(&hi), Some(&lo)) => usize::from(u16::from_be_bytes([hi, lo])),
        _ => return HeaderCheck::NeedMore,
    };
    if alert {
        // An alert is two bytes (level 1 or 2, description); a longer record may carry
        // several, the first is the one that matters.
        return match (len, rest.get(5)) {
            (0..=1, _) => HeaderCheck::NotTls,
            (_, Some(&level)) if level != 1 && level != 2 => HeaderCheck::NotTls,
            _ => HeaderCheck::Alert { len },
        };
    }
    if len == 0 {
        // RFC 5246 §6.2.1 / RFC 8446 §5.1: no zero-length handshake fragments.
        return HeaderCheck::NotTls;
    }
    HeaderCheck::Handshake {
        version: u16::from_be_bytes([0x03, minor]),
        len,
    }
}

/// The first `total` payload bytes of the handshake records in `buf[..end]`: borrowed
/// when one record holds them, else copied once.
fn join(buf: &[u8], end: usize, total: usize) -> Option<Cow<'_, [u8]>> {
    let flight = buf.get(..end)?;
    let mut records = Reader::new(flight);
    let mut out: Option<Vec<u8>> = None;
    loop {
        let header = records.take(5)?;
        let len = usize::from(Reader::new(header.get(3..)?).u16()?);
        let payload = records.take(len)?;
        // Warning alerts skipped by the framing are not part of the message.
        if header.first() != Some(&CONTENT_HANDSHAKE) {
            continue;
        }
        match &mut out {
            None => {
                if let Some(message) = payload.get(..total) {
                    return Some(Cow::Borrowed(message));
                }
                let mut v = Vec::with_capacity(total);
                v.extend_from_slice(payload);
                out = Some(v);
            }
            Some(v) => {
                let want = (total - v.len()).min(payload.len());
                v.extend_from_slice(payload.get(..want)?);
                if v.len() >= total {
                    return out.map(Cow::Owned);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;

    fn record(content_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0x03, 0x01];
        r.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        r.extend_from_slice(payload);
        r
    }

    fn message(msg_type: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![msg_type];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(body);
        m
    }

    fn frame(buf: &[u8]) -> Framed<'_> {
        first_handshake_message(buf, MAX, 1, Side::Client)
    }

    #[test]
    fn one_record_is_borrowed() {
        let msg = message(1, &[7; 50]);
        let mut buf = record(0x16, &msg);
        let end = buf.len();
        buf.extend_from_slice(b"trailing");
        match frame(&buf) {
            Framed::Message {
                record_version,
                message,
                consumed,
            } => {
                assert_eq!(record_version, 0x0301);
                assert!(matches!(message, Cow::Borrowed(_)));
                assert_eq!(&message[..], &msg[..]);
                assert_eq!(consumed, end);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn split_header_and_body_over_many_records() {
        let msg = message(1, &(0..=255).collect::<Vec<u8>>());
        // Split inside the 4-byte header too.
        let cuts = [1, 3, 10, 200];
        let mut buf = Vec::new();
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&msg.len())) {
            buf.extend(record(0x16, &msg[start..c]));
            start = c;
        }
        for n in 0..buf.len() {
            assert_eq!(frame(&buf[..n]), Framed::NeedMore, "prefix {n}");
        }
        match frame(&buf) {
            Framed::Message {
                message, consumed, ..
            } => {
                assert!(matches!(message, Cow::Owned(_)));
                assert_eq!(&message[..], &msg[..]);
                assert_eq!(consumed, buf.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_checks() {
        assert_eq!(frame(b""), Framed::NeedMore);
        assert_eq!(frame(b"GET / HTTP/1.1\r\n"), Framed::NotTls);
        assert_eq!(frame(&[0x16, 0x02]), Framed::NotTls);
        assert_eq!(frame(&[0x16, 0x03, 0x05]), Framed::NotTls);
        assert_eq!(frame(&[0x16, 0x03, 0x00, 0x00]), Framed::NeedMore);
        assert_eq!(
            frame(&[0x16, 0x03, 0x01, 0x00, 0x00]),
            Framed::NotTls,
            "empty record"
        );
        assert_eq!(frame(&[0x17, 0x03, 0x03]), Framed::NotTls);
        assert_eq!(
            frame(&[0x15, 0x03, 0x03, 0, 2, 2, 70]),
            Framed::NotTls,
            "client alert"
        );
        assert_eq!(
            frame(&[0x16, 0x03, 0x01, 0x00, 0x10, 0x02]),
            Framed::NotTls,
            "not a ClientHello"
        );
    }

    #[test]
    fn size_limits() {
        // Record longer than 2^14 + 2048.
        assert_eq!(frame(&[0x16, 0x03, 0x01, 0x48, 0x01]), Framed::TooLarge);
        // A hello claiming 16 MiB.
        assert_eq!(
            frame(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0xff, 0xff, 0xff]),
            Framed::TooLarge
        );
        // Records that would run past `max`.
        let msg = message(1, &[0; 100]);
        let buf = record(0x16, &msg);
        assert_eq!(
            first_handshake_message(&buf, buf.len() - 1, 1, Side::Client),
            Framed::TooLarge
        );
        assert!(matches!(
            first_handshake_message(&buf, buf.len(), 1, Side::Client),
            Framed::Message { .. }
        ));
    }

    #[test]
    fn other_record_between_fragments_is_not_tls() {
        let msg = message(1, &[0; 40]);
        let mut buf = record(0x16, &msg[..10]);
        buf.extend(record(0x14, &[1]));
        buf.extend(record(0x16, &msg[10..]));
        assert_eq!(frame(&buf), Framed::NotTls);
    }

    #[test]
    fn server_alert() {
        let alert = record(0x15, &[2, 70]);
        fn f(b: &[u8]) -> Framed<'_> {
            first_handshake_message(b, MAX, 2, Side::Server)
        }
        assert_eq!(f(&alert[..6]), Framed::NeedMore);
        assert_eq!(
            f(&alert),
            Framed::Alert {
                level: 2,
                description: 70
            }
        );
        assert_eq!(f(&record(0x15, &[9, 70])), Framed::NotTls, "bad level");
        // Warnings that end the handshake are answers too.
        for description in [0, 90] {
            assert_eq!(
                f(&record(0x15, &[1, description])),
                Framed::Alert {
                    level: 1,
                    description
                }
            );
        }
        // Any other warning (unrecognized_name) before the ServerHello is skipped.
        let hello = message(2, &[7; 40]);
        let mut warned = record(0x15, &[1, 112]);
        assert_eq!(f(&warned), Framed::NeedMore, "keep reading after a warning");
        warned.extend(record(0x16, &hello[..10]));
        assert_eq!(f(&warned), Framed::NeedMore);
        warned.extend(record(0x15, &[1, 112]));
        warned.extend(record(0x16, &hello[10..]));
        match f(&warned) {
            Framed::Message {
                message, consumed, ..
            } => {
                assert_eq!(&message[..], &hello[..]);
                assert_eq!(consumed, warned.len());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f(&record(0x15, &[2])), Framed::NotTls, "short alert");
        // Alert after a first fragment of the ServerHello.
        let msg = message(2, &[0; 40]);
        let mut buf = record(0x16, &msg[..10]);
        buf.extend(record(0x15, &[2, 40]));
        assert_eq!(
            f(&buf),
            Framed::Alert {
                level: 2,
                description: 40
            }
        );
    }
}
