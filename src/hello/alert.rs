//! TLS alert records tlspeek sends: the fatal alert that blocks a legacy ClientHello, and
//! the alerts upgrade mode answers with when it cannot terminate a client.

use super::{ClientHelloSummary, HelloFormat, LegacyReason, Verdict};

pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;
pub const ALERT_PROTOCOL_VERSION: u8 = 70;
pub const ALERT_INSUFFICIENT_SECURITY: u8 = 71;
pub const ALERT_INTERNAL_ERROR: u8 = 80;

/// A fatal TLS alert record answering `hello`: record version min(client_version, TLS 1.2),
/// TLS 1.0 for an SSLv2-compatible hello (a client that sent one reads TLS records next).
pub fn alert_record(hello: &ClientHelloSummary, description: u8) -> [u8; 7] {
    let version = match hello.format {
        HelloFormat::Sslv2 => 0x0301,
        HelloFormat::Tls => hello.client_version.clamp(0x0300, 0x0303),
    };
    let [major, minor] = version.to_be_bytes();
    [0x15, major, minor, 0x00, 0x02, 0x02, description]
}

/// The alert that blocks a legacy hello: `protocol_version` for an old version,
/// `insufficient_security` when only 3DES (or weaker) is offered.
pub fn block_alert(verdict: &Verdict) -> u8 {
    if verdict
        .reasons
        .contains(&LegacyReason::MaxVersionBelowTls12)
    {
        ALERT_PROTOCOL_VERSION
    } else {
        ALERT_INSUFFICIENT_SECURITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_answer_in_the_clients_version() {
        use crate::hello::{Detection, HelloFormat, detect_client_hello};
        let h = |name: &str| match detect_client_hello(
            &std::fs::read(format!(
                "{}/tests/fixtures/{name}.bin",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
            1 << 16,
        ) {
            Detection::Hello(h) => *h,
            other => panic!("{other:?}"),
        };
        let tls10 = h("curl_tls10");
        let v = crate::hello::classify_client_hello(&tls10);
        assert_eq!(
            alert_record(&tls10, block_alert(&v)),
            [0x15, 3, 1, 0, 2, 2, 70]
        );
        let des = h("gnutls_3des");
        let v = crate::hello::classify_client_hello(&des);
        assert_eq!(
            alert_record(&des, block_alert(&v)),
            [0x15, 3, 3, 0, 2, 2, 71]
        );
        let mut v2 = tls10.clone();
        v2.format = HelloFormat::Sslv2;
        v2.client_version = 0x0002;
        assert_eq!(alert_record(&v2, 70)[1..3], [3, 1]);
    }
}
