//! JA3, JA3S and JA4 fingerprints, as pure methods over the owned summaries.
//!
//! JA3 (Salesforce) is `SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats`
//! in decimal, `-`-joined, GREASE left out, hashed with MD5; it matches what Wireshark
//! reports as `tls.handshake.ja3_full`. JA3S is `SSLVersion,Cipher,Extensions`.
//! JA4 follows FoxIO's `technical_details/JA4.md` text (see [`ClientHelloSummary::ja4`]).
//!
//! For an SSLv2-format hello (which neither JA3 nor JA4 defines) the same recipes are
//! applied to what the hello has: its version, its cipher specs (3-byte specs as their
//! numeric value in JA3 and as 6 hex digits in JA4, sorted numerically; `0x00XXXX` is a
//! TLS suite), and no extensions.
//!
//! Text is built as ASCII bytes in one preallocated buffer: a hello has dozens of numbers,
//! and `format!` or `String::push` per character would cost more than the hashing.

use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::client::ClientHelloSummary;
use super::ext::{EXT_ALPN, EXT_SERVER_NAME};
use super::grease::is_grease;
use super::server::ServerHelloSummary;

/// JA4's value for a list with nothing in it.
const JA4_EMPTY_HASH: &[u8] = b"000000000000";

impl ClientHelloSummary {
    /// The JA3 string, e.g. `771,4865-4866-49195,0-23-65281,29-23-24,0`.
    pub fn ja3(&self) -> String {
        self.ja3_text().into_string()
    }

    /// MD5 of [`Self::ja3`], 32 lowercase hex digits.
    pub fn ja3_hash(&self) -> String {
        md5_hex(&self.ja3_text().0)
    }

    /// [`Self::ja3`] and [`Self::ja3_hash`] together, building the string once.
    pub fn ja3_with_hash(&self) -> (String, String) {
        let text = self.ja3_text();
        let hash = md5_hex(&text.0);
        (text.into_string(), hash)
    }

    fn ja3_text(&self) -> Text {
        let mut t = Text::with_capacity(
            16 + 6 * (self.cipher_suites.len() + self.extensions.len() + self.groups.len())
                + 4 * self.point_formats.len(),
        );
        t.dec(u32::from(self.client_version));
        t.byte(b',');
        t.dec_list(self.cipher_suites.iter().copied().filter(|&c| !grease32(c)));
        t.byte(b',');
        t.dec_list(non_grease(&self.extensions).map(u32::from));
        t.byte(b',');
        t.dec_list(non_grease(&self.groups).map(u32::from));
        t.byte(b',');
        t.dec_list(self.point_formats.iter().copied().map(u32::from));
        t
    }

    /// The JA4 fingerprint, e.g. `t13d1516h2_8daaf6152771_e5627efa2ab1`:
    /// - `t`, then the version of [`Self::max_version`] (`13`, `12`, `11`, `10`, `s3`,
    ///   `s2`, `d1`/`d2`/`d3`, else `00`);
    /// - `d` when the `server_name` extension is present, else `i`;
    /// - suite count and extension count (SNI and ALPN included), 2 digits, capped at 99;
    /// - first and last character of the first ALPN name, or — when its first or last
    ///   byte is not ASCII alphanumeric — the first and last character of its hex form;
    ///   `00` without ALPN or with an empty first name;
    /// - `_` + the first 12 hex digits of SHA-256 over the sorted 4-hex-digit suites,
    ///   comma-joined (`000000000000` when there are none);
    /// - `_` + the same over the sorted extensions without SNI and ALPN, then `_` and the
    ///   signature algorithms in wire order when there are any (`000000000000` when the
    ///   sorted extension list is empty).
    pub fn ja4(&self) -> String {
        let (ciphers, extensions) = self.ja4_lists();
        let mut t = Text::with_capacity(36);
        self.ja4_a(&mut t);
        for list in [ciphers, extensions] {
            t.byte(b'_');
            if list.0.is_empty() {
                t.bytes(JA4_EMPTY_HASH);
            } else {
                t.hex_bytes(Sha256::digest(&list.0).get(..6).unwrap_or_default());
            }
        }
        t.into_string()
    }

    /// JA4_r, the raw form of [`Self::ja4`]: the same `a` part, then the strings that
    /// JA4 hashes (`a_ciphers_extensions_sigalgs`, the last part only when non-empty).
    pub fn ja4_r(&self) -> String {
        let (ciphers, extensions) = self.ja4_lists();
        let mut t = Text::with_capacity(16 + ciphers.0.len() + extensions.0.len());
        self.ja4_a(&mut t);
        for list in [ciphers, extensions] {
            t.byte(b'_');
            t.bytes(&list.0);
        }
        t.into_string()
    }

    fn ja4_a(&self, t: &mut Text) {
        t.byte(b't');
        t.bytes(ja4_version(self.max_version()));
        let sni = self.extensions.contains(&EXT_SERVER_NAME);
        t.byte(if sni { b'd' } else { b'i' });
        let ciphers = self.cipher_suites.iter().filter(|&&c| !grease32(c)).count();
        t.count99(ciphers);
        t.count99(non_grease(&self.extensions).count());
        ja4_alpn(t, self.alpn_first_raw.as_deref());
    }

    /// The texts JA4 hashes: the sorted suites; the sorted extensions (no SNI, no ALPN),
    /// then `_` and the signature algorithms when there are any (empty when the sorted
    /// extension list is).
    fn ja4_lists(&self) -> (Text, Text) {
        let mut ciphers: Vec<u32> = Vec::with_capacity(self.cipher_suites.len());
        ciphers.extend(self.cipher_suites.iter().copied().filter(|&c| !grease32(c)));
        ciphers.sort_unstable();
        let mut cipher_text = Text::with_capacity(5 * ciphers.len());
        for (i, &c) in ciphers.iter().enumerate() {
            if i > 0 {
                cipher_text.byte(b',');
            }
            match u16::try_from(c) {
                Ok(c) => cipher_text.hex4(c),
                Err(_) => cipher_text.hex6(c),
            }
        }

        let mut exts: Vec<u16> = Vec::with_capacity(self.extensions.len());
        exts.extend(
            non_grease(&self.extensions).filter(|&e| e != EXT_SERVER_NAME && e != EXT_ALPN),
        );
        exts.sort_unstable();
        let mut ext_text = Text::with_capacity(5 * (exts.len() + self.signature_algorithms.len()));
        if !exts.is_empty() {
            ext_text.hex4_list(exts.iter().copied());
            let mut sigs = non_grease(&self.signature_algorithms).peekable();
            if sigs.peek().is_some() {
                ext_text.byte(b'_');
                ext_text.hex4_list(sigs);
            }
        }
        (cipher_text, ext_text)
    }
}

impl ServerHelloSummary {
    /// The JA3S string: `SSLVersion,Cipher,Extensions` (legacy version, decimal).
    pub fn ja3s(&self) -> String {
        self.ja3s_text().into_string()
    }

    /// MD5 of [`Self::ja3s`], 32 lowercase hex digits.
    pub fn ja3s_hash(&self) -> String {
        md5_hex(&self.ja3s_text().0)
    }

    fn ja3s_text(&self) -> Text {
        let mut t = Text::with_capacity(16 + 6 * self.extensions.len());
        t.dec(u32::from(self.legacy_version));
        t.byte(b',');
        t.dec(u32::from(self.cipher_suite));
        t.byte(b',');
        t.dec_list(non_grease(&self.extensions).map(u32::from));
        t
    }
}

fn ja4_version(v: u16) -> &'static [u8] {
    match v {
        0x0304 => b"13",
        0x0303 => b"12",
        0x0302 => b"11",
        0x0301 => b"10",
        0x0300 => b"s3",
        0x0002 => b"s2",
        0xfeff => b"d1",
        0xfefd => b"d2",
        0xfefc => b"d3",
        _ => b"00",
    }
}

fn ja4_alpn(t: &mut Text, first: Option<&[u8]>) {
    let (Some(&first), Some(&last)) = (first.and_then(<[u8]>::first), first.and_then(<[u8]>::last))
    else {
        t.bytes(b"00");
        return;
    };
    if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
        t.bytes(&[first, last]);
    } else {
        t.bytes(&[hex_digit(first >> 4), hex_digit(last)]);
    }
}

fn grease32(v: u32) -> bool {
    u16::try_from(v).is_ok_and(is_grease)
}

fn non_grease(list: &[u16]) -> impl Iterator<Item = u16> + '_ {
    list.iter().copied().filter(|&v| !is_grease(v))
}

fn md5_hex(data: &[u8]) -> String {
    let mut t = Text::with_capacity(32);
    t.hex_bytes(&Md5::digest(data));
    t.into_string()
}

/// Lowercase hex digit of the low nibble.
fn hex_digit(v: u8) -> u8 {
    match v & 0x0f {
        n @ 0..=9 => b'0' + n,
        n => b'a' + (n - 10),
    }
}

/// ASCII text under construction.
struct Text(Vec<u8>);

impl Text {
    fn with_capacity(n: usize) -> Self {
        Text(Vec::with_capacity(n))
    }

    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    fn dec(&mut self, mut v: u32) {
        let mut digits = [0u8; 10];
        let mut start = digits.len();
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
            start -= 1;
            if v == 0 {
                break;
            }
        }
        self.bytes(digits.get(start..).unwrap_or_default());
    }

    fn dec_list(&mut self, items: impl Iterator<Item = u32>) {
        for (i, v) in items.enumerate() {
            if i > 0 {
                self.byte(b'-');
            }
            self.dec(v);
        }
    }

    fn hex4(&mut self, v: u16) {
        let [hi, lo] = v.to_be_bytes();
        self.hex_bytes(&[hi, lo]);
    }

    fn hex6(&mut self, v: u32) {
        let [_, a, b, c] = v.to_be_bytes();
        self.hex_bytes(&[a, b, c]);
    }

    fn hex4_list(&mut self, items: impl Iterator<Item = u16>) {
        for (i, v) in items.enumerate() {
            if i > 0 {
                self.byte(b',');
            }
            self.hex4(v);
        }
    }

    fn hex_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.bytes(&[hex_digit(b >> 4), hex_digit(b)]);
        }
    }

    fn count99(&mut self, n: usize) {
        let n = n.min(99) as u8;
        self.bytes(&[b'0' + n / 10, b'0' + n % 10]);
    }

    /// Only ASCII is ever written, so the conversion cannot fail; lossy all the same
    /// rather than a panic path.
    fn into_string(self) -> String {
        String::from_utf8(self.0)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::HelloFormat;
    use super::*;

    /// The hello of JA4.md's worked example, rebuilt from the lists the spec prints
    /// (GREASE added to check that it is ignored).
    fn spec_example() -> ClientHelloSummary {
        let mut h = ClientHelloSummary::empty(HelloFormat::Tls, 0x0301, 0x0303);
        h.cipher_suites = vec![
            0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
            0x009c, 0x009d, 0x002f, 0x0035,
        ];
        h.extensions = vec![
            0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012,
            0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
        ];
        h.signature_algorithms = vec![
            0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
        ];
        h.supported_versions = vec![0x0304, 0x0303];
        h.alpn = vec!["h2".into(), "http/1.1".into()];
        h.alpn_first_raw = Some(b"h2".to_vec());
        h.sni = Some("example.com".into());
        h
    }

    #[test]
    fn ja4_spec_example() {
        let h = spec_example();
        assert_eq!(h.ja4(), "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(
            h.ja4_r(),
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
        );
        let mut g = h.clone();
        g.cipher_suites.insert(0, 0x2a2a);
        g.extensions.insert(0, 0x3a3a);
        g.extensions.push(0xfafa);
        assert_eq!(g.ja4(), h.ja4(), "GREASE is ignored");
    }

    #[test]
    fn ja4_spec_without_signature_algorithms() {
        // JA4.md: "If there are no signature algorithms … the string ends without an
        // underscore": 0005,…,ff01 = 6d807ffa2a79.
        let mut h = spec_example();
        h.signature_algorithms.clear();
        assert!(h.ja4().ends_with("_6d807ffa2a79"), "{}", h.ja4());
    }

    #[test]
    fn ja4_empty_lists() {
        let mut h = ClientHelloSummary::empty(HelloFormat::Tls, 0x0301, 0x0301);
        h.cipher_suites = vec![0x0a0a];
        h.extensions = vec![0x0000, 0x0010];
        assert_eq!(h.ja4(), "t10d000200_000000000000_000000000000");
    }

    #[test]
    fn ja4_alpn_rule() {
        // JA4.md's examples, plus the plain cases.
        let cases: &[(&[u8], &str)] = &[
            (b"h2", "h2"),
            (b"http/1.1", "h1"),
            (b"h", "hh"),
            (b"", "00"),
            (&[0xab], "ab"),
            (&[0xab, 0xcd], "ad"),
            (&[0x30, 0xab], "3b"),
            (&[0x30, 0x31, 0xab, 0xcd], "3d"),
            (&[0x30, 0xab, 0xcd, 0x31], "01"),
            (b"/x", "28"), // hex 2f78
        ];
        for &(alpn, want) in cases {
            let mut t = Text::with_capacity(2);
            ja4_alpn(&mut t, Some(alpn));
            assert_eq!(t.into_string(), want, "{alpn:x?}");
        }
        let mut t = Text::with_capacity(2);
        ja4_alpn(&mut t, None);
        assert_eq!(t.into_string(), "00");
    }

    #[test]
    fn ja4_version_fallback_and_caps() {
        let mut h = ClientHelloSummary::empty(HelloFormat::Tls, 0x0301, 0x0302);
        h.supported_versions = vec![]; // extension held only GREASE
        h.cipher_suites = (1..=120).collect();
        h.extensions = (100..=220).collect();
        let ja4 = h.ja4();
        assert!(ja4.starts_with("t11i999900_"), "{ja4}");
        h.client_version = 0x0300;
        assert!(h.ja4().starts_with("ts3i"));
        h.client_version = 0x7f1c;
        assert!(h.ja4().starts_with("t00i"));
    }

    #[test]
    fn ja4_sslv2_specs() {
        let mut h = ClientHelloSummary::empty(HelloFormat::Sslv2, 0x0002, 0x0002);
        h.cipher_suites = vec![0x0700c0, 0x00000a];
        assert_eq!(h.ja4_r(), "ts2i020000_000a,0700c0_");
    }

    #[test]
    fn ja3_strings() {
        let mut h = spec_example();
        h.groups = vec![0x001d, 0x0017];
        h.point_formats = vec![0];
        h.cipher_suites.push(0x1a1a);
        assert_eq!(
            h.ja3(),
            "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,\
             27-0-51-16-17513-23-45-13-5-35-18-43-65281-11-10-21,29-23,0"
        );
        assert_eq!(h.ja3_hash().len(), 32);
        assert_eq!(h.ja3_with_hash(), (h.ja3(), h.ja3_hash()));
        let empty = ClientHelloSummary::empty(HelloFormat::Tls, 0x0301, 0x0300);
        assert_eq!(empty.ja3(), "768,,,,");
        // The MD5 helper itself (RFC 1321 test vector).
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn ja3s_string() {
        let s = ServerHelloSummary {
            record_version: 0x0303,
            legacy_version: 0x0303,
            negotiated_version: 0x0304,
            cipher_suite: 0x1301,
            extensions: vec![0x002b, 0x0033],
            hello_retry_request: false,
            hello_len: 0,
        };
        assert_eq!(s.ja3s(), "771,4865,43-51");
        assert_eq!(s.ja3s_hash(), md5_hex(b"771,4865,43-51"));
    }

    #[test]
    fn decimal_and_hex_helpers() {
        let mut t = Text::with_capacity(0);
        for v in [0, 9, 10, 65535, u32::MAX] {
            t.dec(v);
            t.byte(b' ');
        }
        t.hex4(0xc02f);
        t.hex6(0x0700c0);
        t.count99(7);
        t.count99(123);
        assert_eq!(t.into_string(), "0 9 10 65535 4294967295 c02f0700c00799");
    }
}
