//! The ClientHello summary: an owned copy of what tlspeek reports about a hello, and the
//! parser that fills it from one whole TLS handshake message.
//!
//! tls-parser's `parse_tls_message_handshake` reads the fixed part (version, random,
//! session id, suites, compression). It ignores bytes after the extension block and turns
//! a lying extension-block length into "no extensions", so the body length is re-checked
//! here; extensions are walked by [`super::ext`], which keeps their exact types.

use tls_parser::{TlsMessage, TlsMessageHandshake, parse_tls_message_handshake};

use super::Malformed;
use super::ext::parse_client_extensions;
use super::grease::is_grease;
use super::suites::{SuiteClass, class};

/// Wire format of the hello: the event `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HelloFormat {
    /// A TLS handshake record (SSL 3.0 to TLS 1.3).
    Tls,
    /// An SSLv2-format CLIENT-HELLO (SSLv2 itself, or the SSLv2-compatible hello of old
    /// SSL 3.0/TLS 1.0 stacks).
    Sslv2,
}

impl HelloFormat {
    /// `"tls"` or `"sslv2"`, the `kind` value of events and labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            HelloFormat::Tls => "tls",
            HelloFormat::Sslv2 => "sslv2",
        }
    }
}

impl std::fmt::Display for HelloFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything tlspeek keeps from a ClientHello. Owned: it outlives the buffer. Lists are
/// in wire order with GREASE values left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHelloSummary {
    pub format: HelloFormat,
    /// Version of the first record carrying the hello; `0x0002` for an SSLv2 record.
    pub record_version: u16,
    /// The hello's legacy `client_version`.
    pub client_version: u16,
    /// Extension 43 (`supported_versions`).
    pub supported_versions: Vec<u16>,
    /// TLS suites; for an SSLv2-format hello the 3-byte cipher specs (TLS suites appear
    /// there as `0x00XXXX`, i.e. with the same value).
    pub cipher_suites: Vec<u32>,
    /// Extension types.
    pub extensions: Vec<u16>,
    /// The first `host_name` entry of `server_name`, as sent (invalid UTF-8 replaced);
    /// the caller validates and normalizes it.
    pub sni: Option<String>,
    /// The SNI was longer than `MAX_SNI_BYTES` and `sni` holds its start (an anomaly).
    pub sni_cut: bool,
    /// ALPN protocol names, UTF-8 with invalid bytes replaced by U+FFFD.
    pub alpn: Vec<String>,
    /// Raw bytes of the first ALPN name (JA4 looks at its bytes, not its text).
    pub alpn_first_raw: Option<Vec<u8>>,
    /// Encrypted Client Hello (extension `0xfe0d`) present: `sni` is then only the outer,
    /// public name.
    pub ech: bool,
    /// `supported_groups` (extension 10).
    pub groups: Vec<u16>,
    /// `ec_point_formats` (extension 11).
    pub point_formats: Vec<u8>,
    /// `signature_algorithms` (extension 13), in wire order.
    pub signature_algorithms: Vec<u16>,
    /// Bytes of the input the hello's records took (the bytes to replay upstream).
    pub hello_len: usize,
    /// Where GREASE values stood (RFC 8701; left out of the lists above): their indices
    /// in the cipher, extension and group lists as sent. BoringSSL puts them in places of
    /// its own, which the TLS-library classifier reads.
    pub grease: GreasePositions,
}

/// Positions of GREASE values in a hello's lists, as sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GreasePositions {
    pub ciphers: Vec<u8>,
    pub extensions: Vec<u8>,
    pub groups: Vec<u8>,
}

/// The positions of GREASE values in `values`, as sent (at most 255 kept).
pub(crate) fn grease_positions(values: impl Iterator<Item = u16>) -> Vec<u8> {
    values
        .enumerate()
        .filter(|(_, v)| is_grease(*v))
        .filter_map(|(i, _)| u8::try_from(i).ok())
        .collect()
}

impl ClientHelloSummary {
    /// An empty summary to fill in.
    pub(crate) fn empty(format: HelloFormat, record_version: u16, client_version: u16) -> Self {
        ClientHelloSummary {
            format,
            record_version,
            client_version,
            supported_versions: Vec::new(),
            cipher_suites: Vec::new(),
            extensions: Vec::new(),
            sni: None,
            sni_cut: false,
            alpn: Vec::new(),
            alpn_first_raw: None,
            ech: false,
            groups: Vec::new(),
            point_formats: Vec::new(),
            signature_algorithms: Vec::new(),
            hello_len: 0,
            grease: GreasePositions::default(),
        }
    }

    /// Highest offered version: the highest non-GREASE `supported_versions` entry, else
    /// `client_version` (also when the extension held only GREASE). Numeric order, so a
    /// TLS 1.3 draft (`0x7fXX`) counts as above TLS 1.2.
    pub fn max_version(&self) -> u16 {
        self.supported_versions
            .iter()
            .copied()
            .filter(|&v| !is_grease(v))
            .max()
            .unwrap_or(self.client_version)
    }

    /// True when any offered suite is a 3DES suite.
    pub fn offers_3des(&self) -> bool {
        self.cipher_suites
            .iter()
            .any(|&s| class(s) == SuiteClass::TripleDes)
    }

    /// Suites as `"0x002f"`; SSLv2 cipher specs as `"0x0700c0"`, except TLS suites carried
    /// as `0x00XXXX`, which are written like any other suite.
    pub fn cipher_suites_hex(&self) -> Vec<String> {
        self.cipher_suites
            .iter()
            .map(|&s| SuiteHex(s).to_string())
            .collect()
    }
}

/// A suite written as hex: `0x1301`, or `0x010080` for a 3-byte SSLv2 cipher spec.
pub struct SuiteHex(pub u32);

impl SuiteHex {
    /// The text in `buf`: `0x` and at least four lowercase hex digits (at least six for
    /// an SSLv2 spec above 0xffff), written by hand: every event line writes one per
    /// offered suite.
    pub fn encode(self, buf: &mut [u8; 10]) -> &str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let needed = (32 - self.0.leading_zeros() as usize).div_ceil(4);
        let digits = needed.max(if self.0 > 0xffff { 6 } else { 4 });
        buf[0] = b'0';
        buf[1] = b'x';
        for i in 0..digits {
            let nibble = (self.0 >> (4 * (digits - 1 - i))) & 0xf;
            buf[2 + i] = DIGITS[nibble as usize];
        }
        // Only ASCII was written.
        std::str::from_utf8(&buf[..2 + digits]).unwrap_or_default()
    }
}

impl std::fmt::Display for SuiteHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(SuiteHex(self.0).encode(&mut [0; 10]))
    }
}

/// Parses one whole ClientHello handshake message (4-byte header included).
pub(crate) fn parse_tls_client_hello(
    message: &[u8],
    record_version: u16,
    hello_len: usize,
) -> Result<ClientHelloSummary, Malformed> {
    let body_len = message
        .len()
        .checked_sub(4)
        .ok_or(Malformed("handshake header"))?;
    let (rest, parsed) =
        parse_tls_message_handshake(message).map_err(|_| Malformed("client hello"))?;
    let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) = parsed else {
        return Err(Malformed("not a client hello"));
    };
    if !rest.is_empty() {
        return Err(Malformed("handshake length"));
    }
    let session_id_len = ch.session_id.map_or(0, <[u8]>::len);
    let expected = 2 + 32 + 1 + session_id_len + 2 + 2 * ch.ciphers.len() + 1 + ch.comp.len();
    let expected = expected + ch.ext.map_or(0, |e| 2 + e.len());
    if expected != body_len {
        return Err(Malformed("body length"));
    }
    if ch.ciphers.is_empty() {
        return Err(Malformed("no cipher suites"));
    }
    let mut h = ClientHelloSummary::empty(HelloFormat::Tls, record_version, ch.version.0);
    h.grease.ciphers = grease_positions(ch.ciphers.iter().map(|c| c.0));
    h.cipher_suites.reserve_exact(ch.ciphers.len());
    h.cipher_suites.extend(
        ch.ciphers
            .iter()
            .map(|c| c.0)
            .filter(|&c| !is_grease(c))
            .map(u32::from),
    );
    if let Some(block) = ch.ext {
        parse_client_extensions(block, &mut h)?;
    }
    h.hello_len = hello_len;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_hex_writes_what_the_format_wrote() {
        let mut values: Vec<u32> = vec![0, 1, 0x2f, 0x1301, 0xffff, 0x1_0000, 0x0700c0];
        values.extend([0xff_ffff, 0x100_0000, u32::MAX]);
        values.extend((0..5000u32).map(|i| i.wrapping_mul(2_654_435_761) >> (i % 29)));
        for v in values {
            let old = if v > 0xffff {
                format!("{v:#08x}")
            } else {
                format!("{v:#06x}")
            };
            assert_eq!(SuiteHex(v).encode(&mut [0; 10]), old);
            assert_eq!(SuiteHex(v).to_string(), old);
        }
    }

    fn summary() -> ClientHelloSummary {
        ClientHelloSummary::empty(HelloFormat::Tls, 0x0301, 0x0303)
    }

    #[test]
    fn max_version_prefers_supported_versions() {
        let mut h = summary();
        assert_eq!(h.max_version(), 0x0303);
        h.supported_versions = vec![0x0303, 0x0304, 0x0302];
        assert_eq!(h.max_version(), 0x0304);
        h.supported_versions = vec![0x0a0a];
        assert_eq!(
            h.max_version(),
            0x0303,
            "GREASE only: fall back to client_version"
        );
    }

    #[test]
    fn hex_codes() {
        let mut h = summary();
        h.cipher_suites = vec![0x002f, 0xc02f, 0x0700c0, 0x00000a, 0x010080];
        assert_eq!(
            h.cipher_suites_hex(),
            ["0x002f", "0xc02f", "0x0700c0", "0x000a", "0x010080"]
        );
    }

    #[test]
    fn offers_3des() {
        let mut h = summary();
        h.cipher_suites = vec![0xc02f, 0x002f];
        assert!(!h.offers_3des());
        h.cipher_suites.push(0x000a);
        assert!(h.offers_3des());
        h.cipher_suites = vec![0x0700c0];
        assert!(h.offers_3des());
    }

    #[test]
    fn format_names() {
        assert_eq!(HelloFormat::Tls.as_str(), "tls");
        assert_eq!(HelloFormat::Sslv2.to_string(), "sslv2");
    }
}
