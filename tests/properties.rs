//! Properties of the pure parsers (proptest, bounded case counts so the file runs in
//! seconds), and the replay of every fuzz finding kept in `tests/fixtures/regressions/`.
//!
//! - The hello parsers never panic on arbitrary or mutated bytes, never claim bytes past
//!   their input or past `max` (a hello larger than a small `max` is `TooLarge`), and an
//!   answer other than `NeedMore` is final (the proxy stops reading on it).
//! - A real hello split into reads at any byte boundaries, and re-framed into several TLS
//!   records, gives the same summary; every read before the last answers `NeedMore`.
//! - The same for request heads: split anywhere, the head is the same, `None` before.
//!
//! The fuzz targets check the same invariants (`fuzz/checks.rs`, included here), so a
//! fuzz finding copied into `tests/fixtures/regressions/<target>/` fails here until fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

#[path = "../fuzz/checks.rs"]
mod checks;

use proptest::prelude::*;
use tlspeek::hello::{
    ClientHelloSummary, Detection, HelloFormat, MAX_HELLO_BYTES, ServerDetection,
    detect_client_hello, detect_server_hello,
};
use tlspeek::proxy::request::parse_head;

const CLIENT_FIXTURES: &[(&str, &[u8])] = &[
    ("curl_tls10", include_bytes!("fixtures/curl_tls10.bin")),
    ("curl_tls11", include_bytes!("fixtures/curl_tls11.bin")),
    ("curl_tls12", include_bytes!("fixtures/curl_tls12.bin")),
    ("curl_tls13", include_bytes!("fixtures/curl_tls13.bin")),
    (
        "openssl_tls10",
        include_bytes!("fixtures/openssl_tls10.bin"),
    ),
    (
        "openssl_tls13",
        include_bytes!("fixtures/openssl_tls13.bin"),
    ),
    (
        "python_default",
        include_bytes!("fixtures/python_default.bin"),
    ),
    ("gnutls_3des", include_bytes!("fixtures/gnutls_3des.bin")),
    ("chromium", include_bytes!("fixtures/chromium.bin")),
];

const SERVER_FIXTURES: &[&[u8]] = &[
    include_bytes!("fixtures/server_openssl_tls10.bin"),
    include_bytes!("fixtures/server_openssl_tls11.bin"),
    include_bytes!("fixtures/server_openssl_tls12.bin"),
    include_bytes!("fixtures/server_openssl_tls13.bin"),
    include_bytes!("fixtures/server_gnutls_3des.bin"),
    include_bytes!("fixtures/server_openssl_alert.bin"),
];

/// An SSLv2-compatible CLIENT-HELLO (TLS 1.0, three TLS suites and the native 3DES spec,
/// no session id, 16-byte challenge).
fn sslv2_hello() -> Vec<u8> {
    let specs: &[u8] = &[
        0x00, 0x00, 0x35, 0x00, 0x00, 0x2f, 0x07, 0x00, 0xc0, 0x00, 0x00, 0xff,
    ];
    let mut body = vec![0x01, 0x03, 0x01];
    body.extend_from_slice(&(specs.len() as u16).to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&16u16.to_be_bytes());
    body.extend_from_slice(specs);
    body.extend_from_slice(&[0x5a; 16]);
    let mut out = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

fn the_hello(buf: &[u8]) -> ClientHelloSummary {
    match detect_client_hello(buf, MAX_HELLO_BYTES) {
        Detection::Hello(h) => *h,
        other => panic!("not a hello: {other:?}"),
    }
}

/// The handshake payload of a flight of TLS handshake records, and the first record's
/// 3-byte header (type and version).
fn payload_of(flight: &[u8]) -> ([u8; 3], Vec<u8>) {
    let header = [flight[0], flight[1], flight[2]];
    let mut payload = Vec::new();
    let mut rest = flight;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        payload.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    (header, payload)
}

/// Re-frames a handshake payload into records cut at `cuts` (offsets into the payload).
fn reframe(header: [u8; 3], payload: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| c % payload.len())
        .filter(|&c| c > 0)
        .collect();
    points.sort_unstable();
    points.dedup();
    points.push(payload.len());
    let mut out = Vec::new();
    let mut from = 0;
    for to in points {
        out.extend_from_slice(&header);
        out.extend_from_slice(&((to - from) as u16).to_be_bytes());
        out.extend_from_slice(&payload[from..to]);
        from = to;
    }
    out
}

/// Feeds `buf` to the detector read by read (cut at `cuts`, like a socket would deliver
/// it) the way the proxy's peek does: every answer before the last read is `NeedMore`.
fn detect_in_reads(buf: &[u8], cuts: &[usize]) -> Detection {
    let mut points: Vec<usize> = cuts.iter().map(|&c| c % buf.len()).collect();
    points.sort_unstable();
    points.dedup();
    for &p in &points {
        assert_eq!(
            detect_client_hello(&buf[..p], MAX_HELLO_BYTES),
            Detection::NeedMore,
            "a read of {p} of {} bytes did not answer NeedMore",
            buf.len()
        );
    }
    detect_client_hello(buf, MAX_HELLO_BYTES)
}

fn fixture() -> impl Strategy<Value = (&'static str, &'static [u8])> {
    (0..CLIENT_FIXTURES.len()).prop_map(|i| CLIENT_FIXTURES[i])
}

/// A fixture with a few bytes overwritten and possibly cut short: inputs that get past
/// the first checks, where random bytes would not.
fn mutated_client_flight() -> impl Strategy<Value = Vec<u8>> {
    (
        fixture(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|((_, bytes), edits, cut, tail)| {
            let mut v = bytes.to_vec();
            for (at, b) in edits {
                let i = at.index(v.len());
                v[i] = b;
            }
            if let Some(cut) = cut {
                v.truncate(cut.index(v.len() + 1));
            }
            v.extend_from_slice(&tail);
            v
        })
}

/// 256 cases per property (`PROPTEST_CASES` overrides), no persistence file.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hello_parser_never_panics_on_arbitrary_bytes(
        data in prop::collection::vec(any::<u8>(), 0..600),
        first in prop::sample::select(vec![0x16u8, 0x80, 0x81, 0x15, 0x00, 0xff]),
    ) {
        checks::client_hello(&data);
        checks::server_hello(&data);
        // Steer half of the inputs past the first byte check.
        let mut steered = data.clone();
        steered.insert(0, first);
        if steered.len() > 2 && first == 0x16 {
            steered[1] = 0x03;
        }
        checks::client_hello(&steered);
        checks::server_hello(&steered);
    }

    #[test]
    fn hello_parser_on_mutated_hellos_keeps_its_bounds(
        data in mutated_client_flight(),
        max in 0usize..3000,
    ) {
        checks::client_hello(&data);
        let full = detect_client_hello(&data, MAX_HELLO_BYTES);
        match (detect_client_hello(&data, max), full) {
            (Detection::Hello(h), full) => {
                prop_assert!(h.hello_len <= max && h.hello_len <= data.len());
                prop_assert_eq!(Detection::Hello(h), full);
            }
            (small, Detection::Hello(h)) => {
                prop_assert!(h.hello_len > max);
                prop_assert_eq!(small, Detection::TooLarge);
            }
            _ => {}
        }
    }

    #[test]
    fn server_parser_on_mutated_server_hellos(
        i in 0..SERVER_FIXTURES.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut v = SERVER_FIXTURES[i].to_vec();
        for (at, b) in edits {
            let k = at.index(v.len());
            v[k] = b;
        }
        v.truncate(cut.index(v.len() + 1).max(1));
        checks::server_hello(&v);
    }

    #[test]
    fn hello_split_into_reads_and_records_gives_the_same_summary(
        (name, bytes) in fixture(),
        record_cuts in prop::collection::vec(any::<usize>(), 0..6),
        read_cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = the_hello(bytes);
        let (header, payload) = payload_of(bytes);
        let flight = reframe(header, &payload, &record_cuts);
        let got = match detect_in_reads(&flight, &read_cuts) {
            Detection::Hello(h) => *h,
            other => panic!("{name}: {other:?}"),
        };
        prop_assert_eq!(got.hello_len, flight.len());
        let mut same = got.clone();
        same.hello_len = whole.hello_len;
        prop_assert_eq!(&same, &whole, "{}", name);
        prop_assert_eq!(got.ja3(), whole.ja3());
        prop_assert_eq!(got.ja4(), whole.ja4());
    }

    #[test]
    fn sslv2_hello_split_into_reads_gives_the_same_summary(
        read_cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let v2 = sslv2_hello();
        let whole = the_hello(&v2);
        prop_assert_eq!(whole.format, HelloFormat::Sslv2);
        prop_assert_eq!(detect_in_reads(&v2, &read_cuts), Detection::Hello(Box::new(whole)));
    }

    #[test]
    fn request_parser_never_panics(data in prop::collection::vec(any::<u8>(), 0..400)) {
        checks::connect_request(&data);
        let mut c = b"CONNECT ".to_vec();
        c.extend_from_slice(&data);
        checks::connect_request(&c);
    }

    #[test]
    fn request_head_split_into_reads_gives_the_same_head(
        host in "[a-z]([a-z0-9-]{0,18}[a-z0-9])?(\\.[a-z][a-z0-9]{0,10}){0,3}",
        port in 1u16..,
        headers in prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,40}"), 0..6),
        early in prop::collection::vec(any::<u8>(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut head = format!("CONNECT {host}:{port} HTTP/1.1\r\n");
        for (n, v) in &headers {
            head.push_str(&format!("{n}: {}\r\n", v.trim()));
        }
        head.push_str("\r\n");
        let mut buf = head.clone().into_bytes();
        buf.extend_from_slice(&early);
        let whole = parse_head(&buf).expect("valid head").expect("complete head");
        prop_assert_eq!(&whole.target, &format!("{host}:{port}"));
        prop_assert_eq!(&whole.rest, &early);
        let mut points: Vec<usize> = cuts.iter().map(|&c| c % head.len()).collect();
        points.sort_unstable();
        for p in points {
            prop_assert!(
                parse_head(&buf[..p]).expect("a prefix is not an error").is_none(),
                "prefix {} of {:?}", p, head
            );
        }
        for n in head.len()..=buf.len() {
            let h = parse_head(&buf[..n]).expect("valid").expect("complete");
            prop_assert_eq!(&h.method, &whole.method);
            prop_assert_eq!(&h.target, &whole.target);
            prop_assert_eq!(&h.headers, &whole.headers);
            prop_assert_eq!(&h.rest[..], &early[..n - head.len()]);
        }
        let a = tlspeek::proxy::authority::parse_authority(&whole.target);
        prop_assert!(a.is_ok(), "{:?}", a);
    }
}

/// Every file under `tests/fixtures/regressions/<target>/` (a fuzz finding, or a
/// hand-made hostile input) replayed through that target's checks.
#[test]
fn regressions_replay_through_the_fuzz_checks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/regressions");
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 4] = [
        ("client_hello", checks::client_hello),
        ("server_hello", checks::server_hello),
        ("connect_request", checks::connect_request),
        ("config", checks::config),
    ];
    let mut replayed = 0;
    for (name, check) in targets {
        let Ok(dir) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "regression {} fails its checks", path.display());
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no regression input found under {}",
        root.display()
    );
}

/// The hand-made hostile inputs among the regressions answer what the proxy relies on.
#[test]
fn hostile_regressions_answer_not_tls_or_too_large() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/regressions/client_hello");
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    assert_eq!(
        detect_client_hello(&read("sslv2_impossible_length.bin"), MAX_HELLO_BYTES),
        Detection::NotTls
    );
    assert_eq!(
        detect_client_hello(&read("record_claims_64k.bin"), MAX_HELLO_BYTES),
        Detection::TooLarge
    );
    assert_eq!(
        detect_client_hello(&read("hello_claims_16mib.bin"), MAX_HELLO_BYTES),
        Detection::TooLarge
    );
    assert_eq!(
        detect_server_hello(&read("hello_claims_16mib.bin"), MAX_HELLO_BYTES),
        ServerDetection::NotTls,
        "a ClientHello is not a ServerHello"
    );
}
