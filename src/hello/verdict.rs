//! The legacy verdict, mirroring what Azure AD refuses (`AADSTS1002016`).
//!
//! A connection is legacy when it *negotiates* SSL 3.0, TLS 1.0, TLS 1.1 or a 3DES suite.
//! Before the ServerHello is seen, a ClientHello is judged on what it offers: its highest
//! version is below TLS 1.2, or every suite it offers for TLS 1.2 and below is 3DES or
//! weaker. Once a ServerHello is parsed, the negotiated reasons replace the hello-time
//! ones: a modern hello served TLS 1.0 is legacy, an old-looking hello that ends up on
//! TLS 1.2 with AES is not.

use serde::{Serialize, Serializer};

use super::client::ClientHelloSummary;
use super::server::ServerHelloSummary;
use super::suites::{SuiteClass, class};

/// Why a connection is legacy. The order of the variants is their priority: negotiated
/// reasons before offered ones, the oldest version first (the first reason of a connection
/// labels `tlspeek_legacy_connections_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LegacyReason {
    NegotiatedSsl3,
    NegotiatedTls10,
    NegotiatedTls11,
    Negotiated3des,
    MaxVersionBelowTls12,
    Only3desCiphers,
}

impl LegacyReason {
    /// Every reason, in priority order.
    pub const ALL: [LegacyReason; 6] = [
        LegacyReason::NegotiatedSsl3,
        LegacyReason::NegotiatedTls10,
        LegacyReason::NegotiatedTls11,
        LegacyReason::Negotiated3des,
        LegacyReason::MaxVersionBelowTls12,
        LegacyReason::Only3desCiphers,
    ];

    /// The contract string: `negotiated_ssl3`, …, `only_3des_ciphers`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LegacyReason::NegotiatedSsl3 => "negotiated_ssl3",
            LegacyReason::NegotiatedTls10 => "negotiated_tls10",
            LegacyReason::NegotiatedTls11 => "negotiated_tls11",
            LegacyReason::Negotiated3des => "negotiated_3des",
            LegacyReason::MaxVersionBelowTls12 => "max_version_below_tls12",
            LegacyReason::Only3desCiphers => "only_3des_ciphers",
        }
    }
}

impl std::fmt::Display for LegacyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for LegacyReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A verdict: `legacy` is true exactly when `reasons` is non-empty; reasons are sorted by
/// priority.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub legacy: bool,
    pub reasons: Vec<LegacyReason>,
}

impl Verdict {
    fn from_reasons(mut reasons: Vec<LegacyReason>) -> Self {
        reasons.sort_unstable();
        reasons.dedup();
        Verdict {
            legacy: !reasons.is_empty(),
            reasons,
        }
    }

    /// The reason that labels the connection (highest priority), if legacy.
    pub fn first_reason(&self) -> Option<LegacyReason> {
        self.reasons.first().copied()
    }
}

/// Hello-time verdict: `max_version_below_tls12` when the highest offered version is below
/// TLS 1.2; `only_3des_ciphers` when at least one suite is offered for TLS 1.2 and below
/// and all of them are 3DES or weaker (signalling values and TLS 1.3 suites not counted).
/// A TLS 1.3-only hello is therefore not legacy.
pub fn classify_client_hello(h: &ClientHelloSummary) -> Verdict {
    let mut reasons = Vec::new();
    if h.max_version() < 0x0303 {
        reasons.push(LegacyReason::MaxVersionBelowTls12);
    }
    if only_3des_or_weaker(&h.cipher_suites) {
        reasons.push(LegacyReason::Only3desCiphers);
    }
    Verdict::from_reasons(reasons)
}

fn only_3des_or_weaker(suites: &[u32]) -> bool {
    let mut counted = false;
    for &s in suites {
        match class(s) {
            SuiteClass::NotCounted => {}
            SuiteClass::TripleDes | SuiteClass::Weak => counted = true,
            SuiteClass::Other => return false,
        }
    }
    counted
}

/// Final verdict once the ServerHello is known. Whether a connection is legacy depends
/// only on what was negotiated (`negotiated_ssl3`/`_tls10`/`_tls11` from the negotiated
/// version, `negotiated_3des` from the chosen suite), as Azure AD judges it: a hello that
/// offered little but negotiated TLS 1.2 with AES is fine, and a modern hello served TLS 1.0
/// is legacy. When it is legacy, the hello-time reasons of `client` (if known) follow the
/// negotiated ones: they tell whether the caller itself is limited (`max_version_below_tls12`)
/// or only the server chose an old version.
pub fn classify_negotiated(
    client: Option<&ClientHelloSummary>,
    server: &ServerHelloSummary,
) -> Verdict {
    let mut reasons = Vec::new();
    match server.negotiated_version {
        0x0300 => reasons.push(LegacyReason::NegotiatedSsl3),
        0x0301 => reasons.push(LegacyReason::NegotiatedTls10),
        0x0302 => reasons.push(LegacyReason::NegotiatedTls11),
        _ => {}
    }
    if class(u32::from(server.cipher_suite)) == SuiteClass::TripleDes {
        reasons.push(LegacyReason::Negotiated3des);
    }
    if !reasons.is_empty() {
        if let Some(h) = client {
            reasons.extend(classify_client_hello(h).reasons);
        }
    }
    Verdict::from_reasons(reasons)
}

#[cfg(test)]
mod tests {
    use super::super::client::HelloFormat;
    use super::*;
    use LegacyReason::*;

    fn hello(client_version: u16, versions: &[u16], suites: &[u32]) -> ClientHelloSummary {
        let mut h = ClientHelloSummary::empty(HelloFormat::Tls, 0x0301, client_version);
        h.supported_versions = versions.to_vec();
        h.cipher_suites = suites.to_vec();
        h
    }

    fn server(version: u16, suite: u16) -> ServerHelloSummary {
        ServerHelloSummary {
            record_version: 0x0303,
            legacy_version: version.min(0x0303),
            negotiated_version: version,
            cipher_suite: suite,
            extensions: Vec::new(),
            hello_retry_request: false,
            hello_len: 0,
        }
    }

    #[test]
    fn reason_strings_and_priority() {
        let all = [
            (NegotiatedSsl3, "negotiated_ssl3"),
            (NegotiatedTls10, "negotiated_tls10"),
            (NegotiatedTls11, "negotiated_tls11"),
            (Negotiated3des, "negotiated_3des"),
            (MaxVersionBelowTls12, "max_version_below_tls12"),
            (Only3desCiphers, "only_3des_ciphers"),
        ];
        for w in all.windows(2) {
            assert!(w[0].0 < w[1].0);
        }
        for (r, s) in all {
            assert_eq!(r.as_str(), s);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn hello_time_verdicts() {
        let cases: &[(&str, ClientHelloSummary, &[LegacyReason])] = &[
            (
                "TLS1.0 max",
                hello(0x0301, &[], &[0x002f, 0x000a]),
                &[MaxVersionBelowTls12],
            ),
            (
                "TLS1.1 max",
                hello(0x0302, &[], &[0xc013]),
                &[MaxVersionBelowTls12],
            ),
            (
                "SSL3 max",
                hello(0x0300, &[], &[0x0005]),
                &[MaxVersionBelowTls12, Only3desCiphers],
            ),
            (
                "TLS1.2 modern",
                hello(0x0303, &[], &[0xc02f, 0x000a, 0x00ff]),
                &[],
            ),
            (
                "TLS1.2 3DES only",
                hello(0x0303, &[], &[0xc012, 0x000a, 0x00ff]),
                &[Only3desCiphers],
            ),
            (
                "3DES and RC4",
                hello(0x0303, &[], &[0x000a, 0x0005, 0x5600]),
                &[Only3desCiphers],
            ),
            (
                "TLS1.3 only",
                hello(0x0303, &[0x0304], &[0x1301, 0x1302]),
                &[],
            ),
            (
                "1.3 suites + 3DES",
                hello(0x0303, &[0x0304, 0x0303], &[0x1301, 0x000a]),
                &[Only3desCiphers],
            ),
            (
                "both reasons",
                hello(0x0301, &[], &[0x000a, 0x00ff]),
                &[MaxVersionBelowTls12, Only3desCiphers],
            ),
            ("only SCSV", hello(0x0303, &[], &[0x00ff]), &[]),
            (
                "GREASE-only versions",
                hello(0x0302, &[], &[0xc02f]),
                &[MaxVersionBelowTls12],
            ),
            (
                "supported_versions wins",
                hello(0x0301, &[0x0304, 0x0303], &[0xc02f]),
                &[],
            ),
            (
                "SSLv2 compat TLS1.0",
                hello(0x0301, &[], &[0x000039, 0x0700c0]),
                &[MaxVersionBelowTls12],
            ),
            (
                "SSLv2 specs only",
                hello(0x0303, &[], &[0x0700c0, 0x010080]),
                &[Only3desCiphers],
            ),
        ];
        for (what, h, want) in cases {
            let v = classify_client_hello(h);
            assert_eq!(v.reasons, *want, "{what}");
            assert_eq!(v.legacy, !want.is_empty(), "{what}");
        }
    }

    #[test]
    fn negotiated_reasons_decide() {
        let modern = hello(0x0303, &[0x0304, 0x0303, 0x0302, 0x0301], &[0x1301, 0xc02f]);
        let old = hello(0x0301, &[], &[0x000a, 0x0005]);
        let v = classify_negotiated(Some(&modern), &server(0x0301, 0xc013));
        assert_eq!(v.reasons, [NegotiatedTls10], "the server chose TLS 1.0");
        assert_eq!(v.first_reason(), Some(NegotiatedTls10));
        let v = classify_negotiated(Some(&old), &server(0x0301, 0x000a));
        assert_eq!(
            v.reasons,
            [
                NegotiatedTls10,
                Negotiated3des,
                MaxVersionBelowTls12,
                Only3desCiphers
            ],
            "the caller itself is limited"
        );
        let tls12_3des_only = hello(0x0303, &[], &[0x000a, 0x0005]);
        let v = classify_negotiated(Some(&tls12_3des_only), &server(0x0303, 0x0005));
        assert_eq!(
            v,
            Verdict::default(),
            "old-looking hello, TLS1.2 without 3DES"
        );
        let v = classify_negotiated(None, &server(0x0302, 0x000a));
        assert_eq!(v.reasons, [NegotiatedTls11, Negotiated3des]);
        assert!(v.legacy);
        let v = classify_negotiated(None, &server(0x0300, 0x0005));
        assert_eq!(v.reasons, [NegotiatedSsl3]);
        let v = classify_negotiated(None, &server(0x0303, 0xc012));
        assert_eq!(v.reasons, [Negotiated3des]);
        let v = classify_negotiated(None, &server(0x0304, 0x1301));
        assert!(!v.legacy);
    }
}
