//! The ServerHello summary: what the server chose (version, suite, extensions).
//!
//! The negotiated version is the `supported_versions` extension when present (TLS 1.3
//! servers say `0x0303` in the legacy field), else the legacy version. A HelloRetryRequest
//! is a ServerHello with a fixed random; it already fixes the version and suite, so it is
//! summarised the same way and flagged.

use tls_parser::{TlsMessage, TlsMessageHandshake, parse_tls_message_handshake};

use super::Malformed;
use super::ext::EXT_SUPPORTED_VERSIONS;
use super::grease::is_grease;
use super::reader::Reader;

/// SHA-256 of "HelloRetryRequest" (RFC 8446 §4.1.3): the random of a HelloRetryRequest.
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Everything tlspeek keeps from a ServerHello. Owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHelloSummary {
    /// Version of the first record carrying the ServerHello.
    pub record_version: u16,
    /// The ServerHello's legacy `version` field.
    pub legacy_version: u16,
    /// `supported_versions` (extension 43) when present, else `legacy_version`.
    pub negotiated_version: u16,
    pub cipher_suite: u16,
    /// Extension types in wire order, GREASE left out.
    pub extensions: Vec<u16>,
    /// The message is a HelloRetryRequest (TLS 1.3): a second ServerHello follows.
    pub hello_retry_request: bool,
    /// Bytes of the input the ServerHello's records took.
    pub hello_len: usize,
}

/// Parses one whole ServerHello handshake message (4-byte header included).
pub(crate) fn parse_server_hello(
    message: &[u8],
    record_version: u16,
    hello_len: usize,
) -> Result<ServerHelloSummary, Malformed> {
    let body = message.get(4..).ok_or(Malformed("handshake header"))?;
    if let Some(&[0x7f, minor]) = body.get(..2) {
        if minor <= LAST_OLD_FORMAT_DRAFT {
            return parse_draft_server_hello(message, record_version, hello_len);
        }
    }
    let (rest, parsed) =
        parse_tls_message_handshake(message).map_err(|_| Malformed("server hello"))?;
    if !rest.is_empty() {
        return Err(Malformed("handshake length"));
    }
    // tls-parser reads the fixed part; the extension block is taken from the position
    // after it, because tls-parser skips it for SSL 3.0 and drops a lying length.
    let (legacy_version, cipher_suite, random, fixed_len) = match parsed {
        TlsMessage::Handshake(TlsMessageHandshake::ServerHello(sh)) => {
            let sid = sh.session_id.map_or(0, <[u8]>::len);
            (
                sh.version.0,
                sh.cipher.0,
                sh.random,
                2 + 32 + 1 + sid + 2 + 1,
            )
        }
        TlsMessage::Handshake(TlsMessageHandshake::ServerHelloV13Draft18(sh)) => {
            (sh.version.0, sh.cipher.0, sh.random, 2 + 32 + 2)
        }
        _ => return Err(Malformed("not a server hello")),
    };
    let mut s = ServerHelloSummary {
        record_version,
        legacy_version,
        negotiated_version: legacy_version,
        cipher_suite,
        extensions: Vec::new(),
        hello_retry_request: random == HRR_RANDOM,
        hello_len,
    };
    let tail = body.get(fixed_len..).ok_or(Malformed("server hello"))?;
    read_extensions(tail, &mut s)?;
    Ok(s)
}

/// TLS 1.3 drafts up to 21 (`0x7f00`–`0x7f15`) used a ServerHello of their own: version,
/// random, cipher suite, extensions — no session id, no compression. Drafts 22 and later
/// use the final format (legacy version `0x0303`, the draft in `supported_versions`).
const LAST_OLD_FORMAT_DRAFT: u8 = 0x15;

/// Parses a draft-format ServerHello by hand (tls-parser knows only draft 18's).
fn parse_draft_server_hello(
    message: &[u8],
    record_version: u16,
    hello_len: usize,
) -> Result<ServerHelloSummary, Malformed> {
    let mut m = Reader::new(message);
    let _msg_type = m.u8().ok_or(Malformed("handshake header"))?;
    let len = m.take(3).ok_or(Malformed("handshake header"))?;
    let len = u32::from_be_bytes([0, len[0], len[1], len[2]]) as usize;
    let body = m.take(len).ok_or(Malformed("handshake length"))?;
    if !m.is_empty() {
        return Err(Malformed("handshake length"));
    }
    let mut r = Reader::new(body);
    let version = r.u16().ok_or(Malformed("server hello"))?;
    let random = r.take(32).ok_or(Malformed("server hello"))?;
    let cipher_suite = r.u16().ok_or(Malformed("server hello"))?;
    let mut s = ServerHelloSummary {
        record_version,
        legacy_version: version,
        negotiated_version: version,
        cipher_suite,
        extensions: Vec::new(),
        hello_retry_request: random == HRR_RANDOM,
        hello_len,
    };
    read_extensions(r.rest(), &mut s)?;
    Ok(s)
}

/// Reads the extension block after a ServerHello's fixed part (absent in SSL 3.0 and some
/// TLS 1.0 servers): extension types, and the negotiated version from
/// `supported_versions`.
fn read_extensions(tail: &[u8], s: &mut ServerHelloSummary) -> Result<(), Malformed> {
    if tail.is_empty() {
        return Ok(());
    }
    let mut r = Reader::new(tail);
    let block = r.vec16().ok_or(Malformed("extension block"))?;
    if !r.is_empty() {
        return Err(Malformed("bytes after extensions"));
    }
    let mut exts = Reader::new(block);
    let mut version_seen = false;
    while !exts.is_empty() {
        let ty = exts.u16().ok_or(Malformed("extension header"))?;
        let data = exts.vec16().ok_or(Malformed("extension length"))?;
        if is_grease(ty) {
            continue;
        }
        s.extensions.push(ty);
        if ty == EXT_SUPPORTED_VERSIONS && !version_seen {
            version_seen = true;
            let mut v = Reader::new(data);
            s.negotiated_version = v.u16().ok_or(Malformed("supported_versions"))?;
            if !v.is_empty() {
                return Err(Malformed("supported_versions"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ServerHello message: version, 32-byte random, 32-byte session id, suite, null
    /// compression, then `tail` (the extension block with its length, or nothing).
    fn message(version: u16, random: [u8; 32], suite: u16, tail: &[u8]) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        body.extend_from_slice(&random);
        body.push(32);
        body.extend_from_slice(&[0x42; 32]);
        body.extend_from_slice(&suite.to_be_bytes());
        body.push(0);
        body.extend_from_slice(tail);
        let mut msg = vec![2];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    fn block(exts: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (ty, data) in exts {
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&(data.len() as u16).to_be_bytes());
            b.extend_from_slice(data);
        }
        let mut out = (b.len() as u16).to_be_bytes().to_vec();
        out.extend(b);
        out
    }

    #[test]
    fn tls13_version_comes_from_supported_versions() {
        let tail = block(&[(0x002b, &[3, 4]), (0x0033, &[0, 0x1d, 0, 0]), (0x3a3a, &[])]);
        let msg = message(0x0303, [7; 32], 0x1301, &tail);
        let s = parse_server_hello(&msg, 0x0303, 99).unwrap();
        assert_eq!(s.legacy_version, 0x0303);
        assert_eq!(s.negotiated_version, 0x0304);
        assert_eq!(s.cipher_suite, 0x1301);
        assert_eq!(s.extensions, [0x002b, 0x0033]);
        assert!(!s.hello_retry_request);
        assert_eq!(s.hello_len, 99);
    }

    #[test]
    fn hello_retry_request() {
        let msg = message(0x0303, HRR_RANDOM, 0x1302, &block(&[(0x002b, &[3, 4])]));
        assert!(
            parse_server_hello(&msg, 0x0303, 0)
                .unwrap()
                .hello_retry_request
        );
    }

    #[test]
    fn ssl3_with_and_without_extensions() {
        // tls-parser does not read extensions for 0x0300; they are read here.
        let s = parse_server_hello(&message(0x0300, [1; 32], 0x000a, &[]), 0x0300, 0).unwrap();
        assert_eq!((s.negotiated_version, s.extensions.len()), (0x0300, 0));
        let tail = block(&[(0xff01, &[0])]);
        let s = parse_server_hello(&message(0x0300, [1; 32], 0x000a, &tail), 0x0300, 0).unwrap();
        assert_eq!(s.extensions, [0xff01]);
    }

    #[test]
    fn malformed_server_hellos() {
        let mut lying = block(&[(0xff01, &[0])]);
        lying[1] += 1;
        let mut trailing = block(&[(0xff01, &[0])]);
        trailing.push(0);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "lying block length",
                message(0x0303, [1; 32], 0xc02f, &lying),
            ),
            (
                "byte after extensions",
                message(0x0303, [1; 32], 0xc02f, &trailing),
            ),
            ("one stray byte", message(0x0303, [1; 32], 0xc02f, &[0])),
            (
                "supported_versions too long",
                message(0x0303, [1; 32], 0x1301, &block(&[(0x002b, &[3, 4, 0])])),
            ),
            (
                "unknown legacy version",
                message(0x0200, [1; 32], 0x0001, &[]),
            ),
            ("a ClientHello", {
                let mut m = message(0x0303, [1; 32], 0xc02f, &[]);
                m[0] = 1;
                m
            }),
        ];
        for (what, msg) in cases {
            assert!(parse_server_hello(&msg, 0x0303, 0).is_err(), "{what}");
        }
    }
}
