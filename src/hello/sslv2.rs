//! SSLv2-format CLIENT-HELLO: SSLv2 itself and the "SSLv2-compatible" hello that SSL 3.0
//! and TLS 1.0 stacks of the 1990s–2000s sent (RFC 5246 appendix E.2).
//!
//! Layout after the 2-byte record header (high bit of byte 0 set, 15-bit length):
//! `msg_type = 1`, `version(2)`, `cipher_spec_length(2)`, `session_id_length(2)`,
//! `challenge_length(2)`, then the 3-byte cipher specs, session id and challenge. Every
//! field is checked as soon as its bytes arrive, and the record length must equal the sum
//! of the parts, so a non-hello that starts with a high bit fails fast and a lying length
//! is caught before any slicing.
//!
//! The 3-byte-header form (high bit clear, a padding byte) is not recognised: OpenSSL's
//! SSLv23 servers only ever accepted the 2-byte form, so no working client sends it, and
//! accepting it would make any stream starting with a byte below 0x40 look like a prefix
//! of a hello.

use super::Detection;
use super::client::{ClientHelloSummary, HelloFormat};
use super::grease::is_grease;

/// SSLv2 `record_version` (it is also SSLv2's own `version` value).
pub const SSL2_VERSION: u16 = 0x0002;

const MSG_CLIENT_HELLO: u8 = 0x01;
/// msg_type + version + three length fields.
const FIXED_LEN: usize = 9;

/// Looks at a buffer whose first byte has its high bit set.
pub(crate) fn detect(buf: &[u8], max: usize) -> Detection {
    match check(buf, max) {
        Check::NeedMore => Detection::NeedMore,
        Check::NotTls => Detection::NotTls,
        Check::TooLarge => Detection::TooLarge,
        Check::Complete { len, version } => match parse(buf, len, version) {
            Some(h) => Detection::Hello(Box::new(h)),
            None => Detection::NotTls,
        },
    }
}

enum Check {
    NeedMore,
    NotTls,
    TooLarge,
    Complete { len: usize, version: u16 },
}

fn check(buf: &[u8], max: usize) -> Check {
    let byte = |i: usize| buf.get(i).copied();
    let pair = |i: usize| Some(u16::from_be_bytes([byte(i)?, byte(i + 1)?]));
    let Some(b0) = byte(0) else {
        return Check::NeedMore;
    };
    if b0 & 0x80 == 0 {
        return Check::NotTls;
    }
    let Some(b1) = byte(1) else {
        return Check::NeedMore;
    };
    let len = usize::from(u16::from_be_bytes([b0 & 0x7f, b1]));
    // At least one cipher spec and a 16-byte challenge.
    if len < FIXED_LEN + 3 + 16 {
        return Check::NotTls;
    }
    match byte(2) {
        None => return Check::NeedMore,
        Some(MSG_CLIENT_HELLO) => {}
        Some(_) => return Check::NotTls,
    }
    if len + 2 > max {
        return Check::TooLarge;
    }
    match byte(3) {
        None => return Check::NeedMore,
        Some(0x00 | 0x03) => {}
        Some(_) => return Check::NotTls,
    }
    let Some(version) = pair(3) else {
        return Check::NeedMore;
    };
    if version != SSL2_VERSION && !(0x0300..=0x0304).contains(&version) {
        return Check::NotTls;
    }
    let Some(specs) = pair(5) else {
        return Check::NeedMore;
    };
    if specs == 0 || specs % 3 != 0 {
        return Check::NotTls;
    }
    let Some(session_id) = pair(7) else {
        return Check::NeedMore;
    };
    // SSLv2 says 0 or 16; up to 32 (an SSL 3.0 session id) is tolerated.
    if session_id > 32 {
        return Check::NotTls;
    }
    let Some(challenge) = pair(9) else {
        return Check::NeedMore;
    };
    if !(16..=32).contains(&challenge) {
        return Check::NotTls;
    }
    let parts = FIXED_LEN + usize::from(specs) + usize::from(session_id) + usize::from(challenge);
    if parts != len {
        return Check::NotTls;
    }
    if buf.len() < len + 2 {
        return Check::NeedMore;
    }
    Check::Complete { len, version }
}

fn parse(buf: &[u8], len: usize, version: u16) -> Option<ClientHelloSummary> {
    let specs_len = usize::from(u16::from_be_bytes([*buf.get(5)?, *buf.get(6)?]));
    let specs = buf.get(11..11 + specs_len)?;
    let mut h = ClientHelloSummary::empty(HelloFormat::Sslv2, SSL2_VERSION, version);
    h.cipher_suites = specs
        .chunks_exact(3)
        .filter_map(|c| match c {
            &[a, b, c] => Some(u32::from_be_bytes([0, a, b, c])),
            _ => None,
        })
        .filter(|&s| !(s <= 0xffff && is_grease(s as u16)))
        .collect();
    h.hello_len = len + 2;
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SSLv2-compatible hello as OpenSSL 0.9.8 sent it with `-ssl2 -ssl3 -tls1`
    /// allowed: version TLS 1.0, TLS suites as `0x00XXXX` specs mixed with native SSLv2
    /// specs, no session id, a 16-byte challenge.
    fn compat_hello() -> Vec<u8> {
        let specs: &[u32] = &[
            0x000039, // TLS_DHE_RSA_WITH_AES_256_CBC_SHA
            0x000035, // TLS_RSA_WITH_AES_256_CBC_SHA
            0x00000a, // TLS_RSA_WITH_3DES_EDE_CBC_SHA
            0x0700c0, // SSL_CK_DES_192_EDE3_CBC_WITH_MD5
            0x000005, // TLS_RSA_WITH_RC4_128_SHA
            0x010080, // SSL_CK_RC4_128_WITH_MD5
            0x000a0a, // a GREASE value carried as a spec
        ];
        let mut body = vec![MSG_CLIENT_HELLO, 0x03, 0x01];
        body.extend_from_slice(&((specs.len() * 3) as u16).to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
        body.extend_from_slice(&16u16.to_be_bytes());
        for s in specs {
            body.extend_from_slice(&s.to_be_bytes()[1..]);
        }
        body.extend_from_slice(&[0x5a; 16]);
        let mut rec = (0x8000u16 | body.len() as u16).to_be_bytes().to_vec();
        rec.extend(body);
        rec
    }

    fn detect_all(buf: &[u8]) -> Detection {
        detect(buf, 64 * 1024)
    }

    #[test]
    fn parses_a_compat_hello() {
        let buf = compat_hello();
        let Detection::Hello(h) = detect_all(&buf) else {
            panic!("not a hello");
        };
        assert_eq!(h.format, HelloFormat::Sslv2);
        assert_eq!(h.record_version, 0x0002);
        assert_eq!(h.client_version, 0x0301);
        assert_eq!(
            h.cipher_suites,
            [0x39, 0x35, 0x0a, 0x0700c0, 0x05, 0x010080]
        );
        assert_eq!(h.hello_len, buf.len());
        assert!(h.extensions.is_empty() && h.sni.is_none());
    }

    #[test]
    fn every_prefix_needs_more() {
        let buf = compat_hello();
        for n in 0..buf.len() {
            assert!(
                matches!(detect_all(&buf[..n]), Detection::NeedMore),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn inconsistent_lengths_are_not_tls() {
        let good = compat_hello();
        let patch = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            b
        };
        let cases = [
            ("record length vs parts", patch(1, good[1] + 1)),
            ("not CLIENT-HELLO", patch(2, 0x04)),
            ("version major", patch(3, 0x02)),
            ("version minor", patch(4, 0x09)),
            ("specs not a multiple of 3", patch(6, 20)),
            ("session id too long", patch(8, 33)),
            ("challenge too short", patch(10, 15)),
            ("tiny record", vec![0x80, 0x05, 0x01]),
        ];
        for (what, buf) in cases {
            assert!(matches!(detect_all(&buf), Detection::NotTls), "{what}");
        }
    }

    #[test]
    fn too_large_for_max() {
        let buf = compat_hello();
        assert!(matches!(detect(&buf, buf.len() - 1), Detection::TooLarge));
        assert!(matches!(detect(&buf, buf.len()), Detection::Hello(_)));
    }
}
