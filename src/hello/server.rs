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
    if tail.is_empty() {
        return Ok(s);
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
    Ok(s)
}
