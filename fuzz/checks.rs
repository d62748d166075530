//! The invariants the fuzz targets check, shared with the normal test suite: each fuzz
//! target calls one of these on its input, and `tests/properties.rs` includes this file
//! (`#[path]`) to replay every file under `tests/fixtures/regressions/<target>/` through
//! the same function. Each panics when an invariant breaks.
#![allow(dead_code)]

use tlspeek::config::Config;
use tlspeek::hello::{
    Detection, MAX_HELLO_BYTES, ServerDetection, alert_name, cipher_name, classify_client_hello,
    classify_negotiated, detect_client_hello, detect_server_hello, version_name,
};
use tlspeek::proxy::authority::{Host, parse_authority};
use tlspeek::proxy::request::{MAX_HEAD_BYTES, parse_head};

/// ClientHello framing and parsing, then everything derived from a hello. Besides "no
/// panic": a hello never claims more bytes than it was given, nor more than `max`; the
/// hello alone gives the same summary; an answer other than NeedMore does not change when
/// more bytes arrive (the proxy stops reading on it).
pub fn client_hello(data: &[u8]) {
    let d = detect_client_hello(data, MAX_HELLO_BYTES);
    if let Detection::Hello(h) = &d {
        assert!(
            h.hello_len > 0 && h.hello_len <= data.len(),
            "hello_len past the input"
        );
        let (ja3, ja3_hash) = h.ja3_with_hash();
        assert!(!ja3.is_empty());
        assert_eq!(ja3_hash.len(), 32);
        let ja4 = h.ja4();
        assert_eq!(ja4.len(), 36, "JA4 {ja4:?}");
        assert!(ja4.is_ascii(), "JA4 {ja4:?}");
        let _ = h.ja4_r();
        let v = classify_client_hello(h);
        assert_eq!(v.legacy, !v.reasons.is_empty());
        assert_eq!(h.cipher_suites_hex().len(), h.cipher_suites.len());
        let _ = version_name(h.max_version());
        let _ = h.offers_3des();
        let alone = detect_client_hello(&data[..h.hello_len], MAX_HELLO_BYTES);
        assert_eq!(alone, d, "bytes after the hello changed it");
    }
    if d != Detection::NeedMore {
        let mut more = data.to_vec();
        more.extend_from_slice(&[0x16, 0x03, 0x01, 0x00]);
        assert_eq!(
            detect_client_hello(&more, MAX_HELLO_BYTES),
            d,
            "the answer changed with more bytes"
        );
    }
    // A small bound taken from the input: a hello found under it fits in it, and a hello
    // larger than it is TooLarge under it.
    let max = usize::from(data.first().copied().unwrap_or(0)) * 4;
    match (detect_client_hello(data, max), &d) {
        (Detection::Hello(h), _) => assert!(h.hello_len <= max, "hello_len over max {max}"),
        (small, Detection::Hello(h)) => {
            assert!(h.hello_len > max);
            assert_eq!(small, Detection::TooLarge, "max {max} not respected");
        }
        _ => {}
    }
}

/// ServerHello framing and parsing, JA3S and the negotiated verdict.
pub fn server_hello(data: &[u8]) {
    let d = detect_server_hello(data, MAX_HELLO_BYTES);
    match &d {
        ServerDetection::Hello(s) => {
            assert!(
                s.hello_len > 0 && s.hello_len <= data.len(),
                "hello_len past the input"
            );
            let _ = s.ja3s();
            assert_eq!(s.ja3s_hash().len(), 32);
            let v = classify_negotiated(None, s);
            assert_eq!(v.legacy, !v.reasons.is_empty());
            let _ = cipher_name(s.cipher_suite);
            let _ = version_name(s.negotiated_version);
        }
        ServerDetection::Alert { description, .. } => {
            let _ = alert_name(*description);
        }
        _ => {}
    }
    if d != ServerDetection::NeedMore {
        let mut more = data.to_vec();
        more.extend_from_slice(&[0x16, 0x03, 0x03, 0x00]);
        assert_eq!(
            detect_server_hello(&more, MAX_HELLO_BYTES),
            d,
            "the answer changed with more bytes"
        );
    }
}

fn authority(s: &str) {
    if let Ok(a) = parse_authority(s) {
        assert!(a.port > 0);
        if let Host::Name(n) = &a.host {
            let text = n.to_string();
            assert!(
                !text.is_empty()
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
                "host name {text:?} from {s:?}"
            );
        }
    }
}

/// The request head parser and the CONNECT authority parser. Besides "no panic": the
/// bytes after a head are a suffix of the input, a head is never accepted past the size
/// bound, and an accepted host name holds only host-name characters (no CR/LF, spaces).
pub fn connect_request(data: &[u8]) {
    if let Ok(Some(head)) = parse_head(data) {
        assert!(data.ends_with(&head.rest));
        assert!(data.len() - head.rest.len() <= MAX_HEAD_BYTES);
        assert!(
            !head
                .target
                .bytes()
                .any(|b| b == b'\r' || b == b'\n' || b == b' ')
        );
        authority(&head.target);
        let _ = head.header("host");
    }
    authority(&String::from_utf8_lossy(data));
}

/// The config parser and validator, over the embedded default. A config that validates
/// prints (`check-config`) as TOML that validates again to the same text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::from_toml_str(text) {
        let printed = cfg.to_toml();
        match Config::from_toml_str(&printed) {
            Ok(again) => assert_eq!(again.to_toml(), printed, "printing is not stable"),
            Err(e) => panic!("the printed config does not validate: {e}\n{printed}"),
        }
    }
}

/// The whole offline analysis of a capture, with small limits so eviction, expiry and the
/// buffer budget are reached too. Besides "no panic": no more connections than TCP
/// segments, no more TCP segments than packets, every verdict consistent with its
/// reasons, every connection with an inventory observation has a JA4.
pub fn capture(cfg: &Config, data: &[u8]) {
    let limits = tlspeek::analyze::flows::Limits {
        max_flows: 64,
        idle: 60_000_000_000,
        buffer_budget: 1 << 20,
    };
    if let Ok((conns, stats)) = tlspeek::analyze::analyze_bytes(data, cfg, limits) {
        assert!(conns.len() as u64 <= stats.tcp_segments);
        assert!(stats.tcp_segments <= stats.packets);
        for c in conns {
            let r = &c.record;
            assert_eq!(r.legacy, !r.legacy_reasons.is_empty());
            assert!(r.kind.is_some());
            assert!(c.observation.is_none() || r.ja4.is_some());
            let _ = r.to_json();
        }
    }
}
