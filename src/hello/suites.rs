//! Strength class of each cipher suite, as the legacy verdict needs it.
//!
//! Azure AD refuses 3DES; a hello is legacy when every suite it offers for TLS 1.2 and
//! below is 3DES "or weaker" (RC4, single DES, RC2/EXPORT, NULL encryption,
//! anonymous). The classes come from tls-parser's copy of the IANA registry (its `enc` and
//! `au` columns), plus the unregistered suites old stacks send, and are put in a 64 Ki
//! table on first use so that classifying a hello costs one array read per suite.

use std::sync::OnceLock;

use tls_parser::{CIPHERS, TlsCipherAu, TlsCipherEnc, TlsCipherKx, TlsCipherSuite};

use super::names::UNREGISTERED_SUITES;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SuiteClass {
    /// Not a suite for TLS 1.2 and below: the signalling values `0x00ff` and `0x5600`, and
    /// TLS 1.3 suites (`0x1301..=0x1305`, and every registry entry whose key exchange is
    /// TLS 1.3's: SM4, AEGIS, the integrity-only `0xc0b4`/`0xc0b5`).
    NotCounted,
    /// A 3DES (DES-EDE3) suite, including the SSLv2 spec `0x0700c0`.
    TripleDes,
    /// Weaker than 3DES: RC4, single DES, RC2, EXPORT, NULL encryption, anonymous; and
    /// every native SSLv2 cipher spec other than 3DES.
    Weak,
    /// Anything else, including values no registry knows (they are given the benefit of
    /// the doubt: an unknown suite is not evidence of a legacy client).
    Other,
}

fn registry_class(suite: &TlsCipherSuite) -> SuiteClass {
    if suite.kx == TlsCipherKx::Tls13 {
        return SuiteClass::NotCounted;
    }
    match suite.enc {
        TlsCipherEnc::TripleDes => SuiteClass::TripleDes,
        TlsCipherEnc::Null | TlsCipherEnc::Des | TlsCipherEnc::Rc2 | TlsCipherEnc::Rc4 => {
            SuiteClass::Weak
        }
        _ if suite.au == TlsCipherAu::Null => SuiteClass::Weak,
        _ => SuiteClass::Other,
    }
}

/// One class per 16-bit suite value, built once from the ~350 registry entries.
fn build_table() -> Box<[SuiteClass]> {
    let mut table = vec![SuiteClass::Other; 1 << 16].into_boxed_slice();
    let mut set = |id: u16, class: SuiteClass| {
        if let Some(slot) = table.get_mut(usize::from(id)) {
            *slot = class;
        }
    };
    for (&id, suite) in CIPHERS.entries() {
        set(id, registry_class(suite));
    }
    for &(id, name) in UNREGISTERED_SUITES {
        let class = if name.contains("3DES") {
            SuiteClass::TripleDes
        } else {
            SuiteClass::Weak
        };
        set(id, class);
    }
    for id in [0x00ff, 0x5600, 0x1301, 0x1302, 0x1303, 0x1304, 0x1305] {
        set(id, SuiteClass::NotCounted);
    }
    table
}

fn table() -> &'static [SuiteClass] {
    static TABLE: OnceLock<Box<[SuiteClass]>> = OnceLock::new();
    TABLE.get_or_init(build_table)
}

/// Class of a suite as stored in `ClientHelloSummary::cipher_suites`: a TLS suite, or a
/// 3-byte SSLv2 cipher spec (`0x00XXXX` specs are TLS suites).
pub(crate) fn class(suite: u32) -> SuiteClass {
    match u16::try_from(suite) {
        Ok(id) => table()
            .get(usize::from(id))
            .copied()
            .unwrap_or(SuiteClass::Other),
        Err(_) if suite == 0x07_00c0 => SuiteClass::TripleDes,
        Err(_) => SuiteClass::Weak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_suites() {
        use SuiteClass::*;
        let cases: &[(u32, SuiteClass)] = &[
            (0x000a, TripleDes), // TLS_RSA_WITH_3DES_EDE_CBC_SHA
            (0xc012, TripleDes), // TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA
            (0x001b, TripleDes), // TLS_DH_anon_WITH_3DES_EDE_CBC_SHA: 3DES first
            (0x0005, Weak),      // RC4
            (0x0009, Weak),      // single DES
            (0x0003, Weak),      // EXPORT RC4_40
            (0x0006, Weak),      // EXPORT RC2
            (0x0002, Weak),      // NULL_SHA
            (0x0034, Weak),      // DH_anon AES
            (0xc018, Weak),      // ECDH_anon AES
            (0x0064, Weak),      // EXPORT1024 RC4_56 (draft suite)
            (0xfeff, TripleDes), // Netscape FIPS 3DES (unregistered)
            (0x002f, Other),
            (0xc02f, Other),
            (0xcca8, Other),
            (0x0007, Other), // IDEA is not counted as weaker than 3DES
            (0x00ff, NotCounted),
            (0x5600, NotCounted),
            (0x1301, NotCounted),
            (0x1305, NotCounted),
            (0xc0b4, NotCounted), // TLS_SHA256_SHA256, TLS 1.3 only
            (0x0a0a, Other),      // GREASE never reaches here; unknown = Other
            (0x0700c0, TripleDes),
            (0x010080, Weak),
            (0x050080, Weak), // SSLv2 IDEA: SSLv2 itself is broken
            (0x00000a, TripleDes),
        ];
        for &(suite, want) in cases {
            assert_eq!(class(suite), want, "{suite:#08x}");
        }
    }

    #[test]
    fn every_registry_3des_suite_is_tripledes() {
        for (id, suite) in CIPHERS.entries() {
            if suite.name.contains("3DES") {
                assert_eq!(
                    class(u32::from(*id)),
                    SuiteClass::TripleDes,
                    "{}",
                    suite.name
                );
            }
            if suite.name.contains("_anon_") && !suite.name.contains("3DES") {
                assert_eq!(class(u32::from(*id)), SuiteClass::Weak, "{}", suite.name);
            }
        }
    }
}
