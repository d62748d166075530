//! JA3, JA3S and JA4 fingerprints, as pure methods over the owned summaries.
//!
//! JA3 (Salesforce) is `SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats`
//! in decimal, `-`-joined, GREASE left out, hashed with MD5; it matches what Wireshark
//! reports as `tls.handshake.ja3_full`. JA3S is `SSLVersion,Cipher,Extensions`.
//! JA4 follows FoxIO's `technical_details/JA4.md` text (see [`ClientHelloSummary::ja4`]).
//!
//! For an SSLv2-format hello (which neither JA3 nor JA4 defines) the same recipes are
//! applied to what the hello has: its version, its cipher specs (3-byte specs as their
//! numeric value in JA3 and as 6 hex digits in JA4, `0x00XXXX` as a TLS suite), and no
//! extensions.
//!
//! Numbers are formatted by hand into one preallocated string: a hello has dozens of
//! them and `format!` per number would dominate the cost.

use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::client::ClientHelloSummary;
use super::ext::{EXT_ALPN, EXT_SERVER_NAME};
use super::grease::is_grease;
use super::server::ServerHelloSummary;

const HEX: &[u8; 16] = b"0123456789abcdef";
/// JA4's value for a list with nothing in it.
const JA4_EMPTY_HASH: &str = "000000000000";

impl ClientHelloSummary {
    /// The JA3 string, e.g. `771,4865-4866-49195,0-23-65281,29-23-24,0`.
    pub fn ja3(&self) -> String {
        let mut s = String::with_capacity(
            16 + 6 * (self.cipher_suites.len() + self.extensions.len() + self.groups.len())
                + 4 * self.point_formats.len(),
        );
        push_dec(&mut s, u32::from(self.client_version));
        s.push(',');
        push_dec_list(
            &mut s,
            self.cipher_suites.iter().copied().filter(|&c| !grease32(c)),
        );
        s.push(',');
        push_dec_list(&mut s, non_grease(&self.extensions).map(u32::from));
        s.push(',');
        push_dec_list(&mut s, non_grease(&self.groups).map(u32::from));
        s.push(',');
        push_dec_list(&mut s, self.point_formats.iter().copied().map(u32::from));
        s
    }

    /// MD5 of [`Self::ja3`], 32 lowercase hex digits.
    pub fn ja3_hash(&self) -> String {
        md5_hex(self.ja3().as_bytes())
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
        let parts = self.ja4_lists();
        let mut s = String::with_capacity(36);
        self.push_ja4_a(&mut s);
        s.push('_');
        if parts.ciphers.is_empty() {
            s.push_str(JA4_EMPTY_HASH);
        } else {
            push_sha256_12(&mut s, parts.ciphers.as_bytes());
        }
        s.push('_');
        if parts.extensions.is_empty() {
            s.push_str(JA4_EMPTY_HASH);
        } else {
            push_sha256_12(&mut s, parts.extensions.as_bytes());
        }
        s
    }

    /// JA4_r, the raw form of [`Self::ja4`]: the same `a` part, then the strings that
    /// JA4 hashes (`a_ciphers_extensions_sigalgs`, the last part only when non-empty).
    pub fn ja4_r(&self) -> String {
        let parts = self.ja4_lists();
        let mut s = String::with_capacity(16 + parts.ciphers.len() + parts.extensions.len());
        self.push_ja4_a(&mut s);
        s.push('_');
        s.push_str(&parts.ciphers);
        s.push('_');
        s.push_str(&parts.extensions);
        s
    }

    fn push_ja4_a(&self, s: &mut String) {
        s.push('t');
        s.push_str(ja4_version(self.max_version()));
        let sni = self.extensions.contains(&EXT_SERVER_NAME);
        s.push(if sni { 'd' } else { 'i' });
        let ciphers = self.cipher_suites.iter().filter(|&&c| !grease32(c)).count();
        push_count99(s, ciphers);
        push_count99(s, non_grease(&self.extensions).count());
        push_ja4_alpn(s, self.alpn_first_raw.as_deref());
    }

    /// The strings JA4 hashes: sorted suites; sorted extensions (no SNI, no ALPN), then
    /// `_` and the signature algorithms when there are any. Empty when the sorted list is.
    fn ja4_lists(&self) -> Ja4Lists {
        let mut ciphers: Vec<u32> = self
            .cipher_suites
            .iter()
            .copied()
            .filter(|&c| !grease32(c))
            .collect();
        ciphers.sort_unstable();
        let mut cipher_str = String::with_capacity(5 * ciphers.len());
        for (i, &c) in ciphers.iter().enumerate() {
            if i > 0 {
                cipher_str.push(',');
            }
            match u16::try_from(c) {
                Ok(c) => push_hex4(&mut cipher_str, c),
                Err(_) => push_hex6(&mut cipher_str, c),
            }
        }

        let mut exts: Vec<u16> = non_grease(&self.extensions)
            .filter(|&e| e != EXT_SERVER_NAME && e != EXT_ALPN)
            .collect();
        exts.sort_unstable();
        let mut ext_str = String::with_capacity(5 * (exts.len() + self.signature_algorithms.len()));
        if !exts.is_empty() {
            push_hex4_list(&mut ext_str, exts.iter().copied());
            let mut sigs = non_grease(&self.signature_algorithms).peekable();
            if sigs.peek().is_some() {
                ext_str.push('_');
                push_hex4_list(&mut ext_str, sigs);
            }
        }
        Ja4Lists {
            ciphers: cipher_str,
            extensions: ext_str,
        }
    }
}

struct Ja4Lists {
    ciphers: String,
    extensions: String,
}

impl ServerHelloSummary {
    /// The JA3S string: `SSLVersion,Cipher,Extensions` (legacy version, decimal).
    pub fn ja3s(&self) -> String {
        let mut s = String::with_capacity(16 + 6 * self.extensions.len());
        push_dec(&mut s, u32::from(self.legacy_version));
        s.push(',');
        push_dec(&mut s, u32::from(self.cipher_suite));
        s.push(',');
        push_dec_list(&mut s, non_grease(&self.extensions).map(u32::from));
        s
    }

    /// MD5 of [`Self::ja3s`], 32 lowercase hex digits.
    pub fn ja3s_hash(&self) -> String {
        md5_hex(self.ja3s().as_bytes())
    }
}

fn ja4_version(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

fn push_ja4_alpn(s: &mut String, first: Option<&[u8]>) {
    let (Some(&first), Some(&last)) = (first.and_then(<[u8]>::first), first.and_then(<[u8]>::last))
    else {
        s.push_str("00");
        return;
    };
    if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
        s.push(char::from(first));
        s.push(char::from(last));
    } else {
        s.push(hex_digit(first >> 4));
        s.push(hex_digit(last & 0x0f));
    }
}

fn grease32(v: u32) -> bool {
    u16::try_from(v).is_ok_and(is_grease)
}

fn non_grease(list: &[u16]) -> impl Iterator<Item = u16> + '_ {
    list.iter().copied().filter(|&v| !is_grease(v))
}

fn push_count99(s: &mut String, n: usize) {
    let n = n.min(99) as u8;
    s.push(char::from(b'0' + n / 10));
    s.push(char::from(b'0' + n % 10));
}

fn push_dec(s: &mut String, mut v: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    for &d in digits.get(i..).unwrap_or_default() {
        s.push(char::from(d));
    }
}

fn push_dec_list(s: &mut String, items: impl Iterator<Item = u32>) {
    for (i, v) in items.enumerate() {
        if i > 0 {
            s.push('-');
        }
        push_dec(s, v);
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(HEX.get(usize::from(nibble & 0x0f)).copied().unwrap_or(b'0'))
}

fn push_hex4(s: &mut String, v: u16) {
    for shift in [12, 8, 4, 0] {
        s.push(hex_digit((v >> shift) as u8));
    }
}

fn push_hex6(s: &mut String, v: u32) {
    for shift in [20, 16, 12, 8, 4, 0] {
        s.push(hex_digit((v >> shift) as u8));
    }
}

fn push_hex4_list(s: &mut String, items: impl Iterator<Item = u16>) {
    for (i, v) in items.enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_hex4(s, v);
    }
}

fn push_hex_bytes(s: &mut String, bytes: &[u8]) {
    for &b in bytes {
        s.push(hex_digit(b >> 4));
        s.push(hex_digit(b));
    }
}

fn md5_hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(32);
    push_hex_bytes(&mut s, &Md5::digest(data));
    s
}

fn push_sha256_12(s: &mut String, data: &[u8]) {
    let digest = Sha256::digest(data);
    push_hex_bytes(s, digest.get(..6).unwrap_or_default());
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
            let mut s = String::new();
            push_ja4_alpn(&mut s, Some(alpn));
            assert_eq!(s, want, "{alpn:x?}");
        }
        let mut s = String::new();
        push_ja4_alpn(&mut s, None);
        assert_eq!(s, "00");
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
        let mut s = String::new();
        for v in [0, 9, 10, 65535, u32::MAX] {
            push_dec(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "0 9 10 65535 4294967295 ");
        let mut s = String::new();
        push_hex4(&mut s, 0xc02f);
        push_hex6(&mut s, 0x0700c0);
        assert_eq!(s, "c02f0700c0");
    }
}
