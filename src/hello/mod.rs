//! Pure TLS hello core: bytes in, values out, no I/O.
//!
//! [`detect_client_hello`] looks at the first bytes a client sent (everything received so
//! far) and answers read more / here is the hello / not TLS / too large; the owned
//! [`ClientHelloSummary`] it returns is then fingerprinted ([`ClientHelloSummary::ja3`],
//! [`ClientHelloSummary::ja4`]) and judged ([`classify_client_hello`]) by pure functions.
//! [`detect_server_hello`] does the same for the server's answer, and
//! [`classify_negotiated`] gives the final verdict. The proxy, the offline pcap analysis,
//! the tests, benches and fuzzers all share this module.
//!
//! Layout: `record` (TLS record framing and reassembly), `sslv2` (SSLv2-format hello),
//! `client` / `ext` (ClientHello summary), `server` (ServerHello summary), `names`,
//! `suites` (cipher strength classes), `fingerprint` (JA3/JA3S/JA4), `verdict`, `grease`.

pub mod alert;
mod client;
mod ext;
mod fingerprint;
mod grease;
mod names;
mod reader;
mod record;
mod server;
mod sslv2;
pub mod stack;
mod suites;
mod verdict;

pub use alert::{alert_record, block_alert};
pub use client::{ClientHelloSummary, HelloFormat, SuiteHex};
pub use ext::MAX_SNI_BYTES;
pub use grease::is_grease;
pub use names::{alert_name, cipher_label, cipher_name, sslv2_cipher_name, version_name};
pub use server::ServerHelloSummary;
pub use sslv2::SSL2_VERSION;
pub use stack::{StackConfidence, StackVerdict, TlsLibrary, classify_stack};
pub use verdict::{LegacyReason, Verdict, classify_client_hello, classify_negotiated};

use record::{Framed, Side};

/// Reads the embedded tables (cipher-suite classes, the TLS-library table with its
/// prepared lists) now, so the first hello does not wait for them and what they hold is
/// part of the process's start, not of its first connections. Idempotent.
pub fn load_tables() {
    suites::class(0);
    stack::StackTable::embedded();
}

/// Bound on the bytes held while waiting for a hello.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const HANDSHAKE_SERVER_HELLO: u8 = 0x02;

/// Why bytes were rejected as a hello; internal, for tests and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

/// Result of looking at the client's first bytes (everything received so far).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detection {
    /// A valid prefix of a TLS or SSLv2 hello: read more.
    NeedMore,
    /// One whole ClientHello (the buffer may hold more bytes after it:
    /// `hello_len` says where it ends).
    Hello(Box<ClientHelloSummary>),
    /// Not a TLS handshake record, not an SSLv2 hello, or a malformed hello.
    NotTls,
    /// The hello would exceed `max` bytes (or a record exceeds 2^14 + 2048).
    TooLarge,
}

impl Detection {
    /// The event/label `kind` this answer stands for if it is the last one: `tls` or
    /// `sslv2` for a hello, `not_tls`, `too_large`, and `truncated` for `NeedMore` (the
    /// client stopped or timed out mid-hello). A caller that received no byte at all
    /// reports `none` instead.
    pub fn kind(&self) -> &'static str {
        match self {
            Detection::NeedMore => "truncated",
            Detection::Hello(h) => h.format.as_str(),
            Detection::NotTls => "not_tls",
            Detection::TooLarge => "too_large",
        }
    }
}

/// Looks at the client's first bytes. Any prefix of a valid hello gives `NeedMore`; the
/// answer depends only on `buf` and `max`, so calling again with more bytes is correct.
pub fn detect_client_hello(buf: &[u8], max: usize) -> Detection {
    match buf.first() {
        None => Detection::NeedMore,
        Some(b) if b & 0x80 != 0 => sslv2::detect(buf, max),
        Some(_) => {
            match record::first_handshake_message(buf, max, HANDSHAKE_CLIENT_HELLO, Side::Client) {
                Framed::NeedMore => Detection::NeedMore,
                Framed::NotTls | Framed::Alert { .. } => Detection::NotTls,
                Framed::TooLarge => Detection::TooLarge,
                Framed::Message {
                    record_version,
                    message,
                    consumed,
                } => match client::parse_tls_client_hello(&message, record_version, consumed) {
                    Ok(h) => Detection::Hello(Box::new(h)),
                    Err(_) => Detection::NotTls,
                },
            }
        }
    }
}

/// Result of looking at the server's first bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerDetection {
    /// A valid prefix of a ServerHello: read more.
    NeedMore,
    /// One whole ServerHello (`hello_len` says where its records end).
    Hello(Box<ServerHelloSummary>),
    /// The server answered with an alert record before any ServerHello.
    Alert { level: u8, description: u8 },
    /// Not a TLS handshake or alert record, or a malformed ServerHello.
    NotTls,
    /// The ServerHello would exceed `max` bytes.
    TooLarge,
}

/// Looks at the server's first bytes (everything received so far), like
/// [`detect_client_hello`].
pub fn detect_server_hello(buf: &[u8], max: usize) -> ServerDetection {
    match record::first_handshake_message(buf, max, HANDSHAKE_SERVER_HELLO, Side::Server) {
        Framed::NeedMore => ServerDetection::NeedMore,
        Framed::NotTls => ServerDetection::NotTls,
        Framed::TooLarge => ServerDetection::TooLarge,
        Framed::Alert { level, description } => ServerDetection::Alert { level, description },
        Framed::Message {
            record_version,
            message,
            consumed,
        } => match server::parse_server_hello(&message, record_version, consumed) {
            Ok(s) => ServerDetection::Hello(Box::new(s)),
            Err(_) => ServerDetection::NotTls,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(Detection::NeedMore.kind(), "truncated");
        assert_eq!(Detection::NotTls.kind(), "not_tls");
        assert_eq!(Detection::TooLarge.kind(), "too_large");
        let h = ClientHelloSummary::empty(HelloFormat::Sslv2, SSL2_VERSION, 0x0301);
        assert_eq!(Detection::Hello(Box::new(h)).kind(), "sslv2");
        assert_eq!(
            detect_client_hello(b"", MAX_HELLO_BYTES),
            Detection::NeedMore
        );
        assert_eq!(
            detect_server_hello(b"", MAX_HELLO_BYTES),
            ServerDetection::NeedMore
        );
    }
}
