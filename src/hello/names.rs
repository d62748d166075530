//! Human names for protocol numbers: versions, cipher suites and alerts.
//!
//! These strings are part of the contracts (event lines, metric labels, reports: the README's
//! "Event lines" and "Metrics"), so they are spelled out here and never derived from
//! `Debug` output.

use tls_parser::TlsCipherSuite;

/// `SSL2.0`, `SSL3.0`, `TLS1.0` … `TLS1.3`; `TLS1.3-draft` for the pre-standard TLS 1.3
/// drafts (`0x7f00`–`0x7fff`, browsers of 2016–2018; not legacy); `unknown` for anything
/// else (DTLS, GREASE, garbage).
pub fn version_name(v: u16) -> &'static str {
    match v {
        0x7f00..=0x7fff => "TLS1.3-draft",
        0x0002 => "SSL2.0",
        0x0300 => "SSL3.0",
        0x0301 => "TLS1.0",
        0x0302 => "TLS1.1",
        0x0303 => "TLS1.2",
        0x0304 => "TLS1.3",
        _ => "unknown",
    }
}

/// Suites that old Netscape/NSS stacks offered but that never made it into the IANA
/// registry, nor into tls-parser's copy of it (which does hold the 1024-bit EXPORT suites
/// of old Windows and Java, `0x0060..=0x0066`).
pub(crate) const UNREGISTERED_SUITES: &[(u16, &str)] = &[
    (0xfefe, "SSL_RSA_FIPS_WITH_DES_CBC_SHA"),
    (0xfeff, "SSL_RSA_FIPS_WITH_3DES_EDE_CBC_SHA"),
    (0xffe0, "SSL_RSA_OLDFIPS_WITH_3DES_EDE_CBC_SHA"),
    (0xffe1, "SSL_RSA_OLDFIPS_WITH_DES_CBC_SHA"),
];

/// A cipher suite as metrics and the inventory show it: the IANA name, else the hex code.
pub fn cipher_label(id: u16) -> String {
    cipher_name(id).map_or_else(|| format!("0x{id:04x}"), str::to_string)
}

/// IANA name of a TLS cipher suite (tls-parser's copy of the registry, plus the few
/// unregistered suites legacy stacks still send).
pub fn cipher_name(id: u16) -> Option<&'static str> {
    if let Some(suite) = TlsCipherSuite::from_id(id) {
        return Some(suite.name);
    }
    UNREGISTERED_SUITES
        .iter()
        .find(|(v, _)| *v == id)
        .map(|(_, name)| *name)
}

/// Name of a 3-byte cipher spec of an SSLv2-format hello. Specs `0x00XXXX` are TLS
/// suites and are named by [`cipher_name`].
pub fn sslv2_cipher_name(spec: u32) -> Option<&'static str> {
    Some(match spec {
        0x01_0080 => "SSL_CK_RC4_128_WITH_MD5",
        0x02_0080 => "SSL_CK_RC4_128_EXPORT40_WITH_MD5",
        0x03_0080 => "SSL_CK_RC2_128_CBC_WITH_MD5",
        0x04_0080 => "SSL_CK_RC2_128_CBC_EXPORT40_WITH_MD5",
        0x05_0080 => "SSL_CK_IDEA_128_CBC_WITH_MD5",
        0x06_0040 => "SSL_CK_DES_64_CBC_WITH_MD5",
        0x07_00c0 => "SSL_CK_DES_192_EDE3_CBC_WITH_MD5",
        0x08_0080 => "SSL_CK_RC4_64_WITH_MD5",
        s if s <= 0xffff => return u16::try_from(s).ok().and_then(cipher_name),
        _ => return None,
    })
}

/// TLS alert description names (IANA "TLS Alerts" registry); `unknown` otherwise.
pub fn alert_name(description: u8) -> &'static str {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "ech_required",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_match_the_contract() {
        let cases = [
            (0x0002, "SSL2.0"),
            (0x0300, "SSL3.0"),
            (0x0301, "TLS1.0"),
            (0x0302, "TLS1.1"),
            (0x0303, "TLS1.2"),
            (0x0304, "TLS1.3"),
            (0x0200, "unknown"),
            (0x7f00, "TLS1.3-draft"),
            (0x7f12, "TLS1.3-draft"),
            (0x7f1c, "TLS1.3-draft"),
            (0x7fff, "TLS1.3-draft"),
            (0x7e02, "unknown"),
            (0x0a0a, "unknown"),
            (0xfefd, "unknown"),
        ];
        for (v, name) in cases {
            assert_eq!(version_name(v), name, "{v:#06x}");
        }
    }

    #[test]
    fn cipher_names_from_the_registry_and_supplements() {
        assert_eq!(cipher_name(0x002f), Some("TLS_RSA_WITH_AES_128_CBC_SHA"));
        assert_eq!(cipher_name(0x000a), Some("TLS_RSA_WITH_3DES_EDE_CBC_SHA"));
        assert_eq!(cipher_name(0x1301), Some("TLS_AES_128_GCM_SHA256"));
        assert_eq!(
            cipher_name(0x00ff),
            Some("TLS_EMPTY_RENEGOTIATION_INFO_SCSV")
        );
        assert_eq!(
            cipher_name(0x0064),
            Some("TLS_RSA_EXPORT1024_WITH_RC4_56_SHA")
        );
        assert_eq!(cipher_name(0x0a0a), None);
        assert_eq!(
            sslv2_cipher_name(0x0700c0),
            Some("SSL_CK_DES_192_EDE3_CBC_WITH_MD5")
        );
        assert_eq!(
            sslv2_cipher_name(0x00000a),
            Some("TLS_RSA_WITH_3DES_EDE_CBC_SHA")
        );
        assert_eq!(sslv2_cipher_name(0xff0800), None);
    }

    #[test]
    fn supplements_are_really_missing_from_the_registry() {
        for (id, _) in UNREGISTERED_SUITES {
            assert!(
                TlsCipherSuite::from_id(*id).is_none(),
                "{id:#06x} is registered now"
            );
        }
    }

    #[test]
    fn alert_names() {
        assert_eq!(alert_name(70), "protocol_version");
        assert_eq!(alert_name(40), "handshake_failure");
        assert_eq!(alert_name(71), "insufficient_security");
        assert_eq!(alert_name(112), "unrecognized_name");
        assert_eq!(alert_name(255), "unknown");
    }
}
