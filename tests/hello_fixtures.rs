//! The pure hello parser against real captured first flights (`tests/fixtures/*.bin`, see
//! its README for how each was made) and hand-built edge cases: every prefix, hellos split
//! over several records, GREASE, SSLv2, non-TLS, oversized claims, ServerHellos and alerts.
//! Expected JA3/JA3S strings are Wireshark 4.0's (`tshark -T fields -e tls.handshake.ja3_full`);
//! JA4 values agree with the spec's worked example and an independent implementation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

use tlspeek::hello::{
    ClientHelloSummary, Detection, HelloFormat, LegacyReason, MAX_HELLO_BYTES, ServerDetection,
    ServerHelloSummary, alert_name, cipher_name, classify_client_hello, classify_negotiated,
    detect_client_hello, detect_server_hello, version_name,
};

struct ClientFixture {
    name: &'static str,
    bytes: &'static [u8],
    version: &'static str,
    sni: Option<&'static str>,
    alpn: &'static [&'static str],
    ech: bool,
    offers_3des: bool,
    ja3: &'static str,
    ja3_hash: &'static str,
    ja4: &'static str,
    reasons: &'static [LegacyReason],
}

const MS: Option<&str> = Some("login.microsoftonline.com");
const H2: &[&str] = &["h2", "http/1.1"];

const CLIENTS: &[ClientFixture] = &[
    ClientFixture {
        name: "curl_tls10",
        bytes: include_bytes!("fixtures/curl_tls10.bin"),
        version: "TLS1.0",
        sni: MS,
        alpn: H2,
        ech: false,
        offers_3des: false,
        ja3: "769,49162-49172-57-49161-49171-51-53-47-255,0-11-10-16-22-23,29-23-30-25-24,0-1-2",
        ja3_hash: "147ef8a5dffeb8314533855613969f75",
        ja4: "t10d0906h2_c491f621fb4c_d4d584b446d3",
        reasons: &[LegacyReason::MaxVersionBelowTls12],
    },
    ClientFixture {
        name: "curl_tls11",
        bytes: include_bytes!("fixtures/curl_tls11.bin"),
        version: "TLS1.1",
        sni: MS,
        alpn: H2,
        ech: false,
        offers_3des: false,
        ja3: "770,49162-49172-57-49161-49171-51-53-47-255,0-11-10-16-22-23,29-23-30-25-24,0-1-2",
        ja3_hash: "ea502527edcb920e9d3676fda0761ee3",
        ja4: "t11d0906h2_c491f621fb4c_d4d584b446d3",
        reasons: &[LegacyReason::MaxVersionBelowTls12],
    },
    ClientFixture {
        name: "curl_tls12",
        bytes: include_bytes!("fixtures/curl_tls12.bin"),
        version: "TLS1.2",
        sni: MS,
        alpn: H2,
        ech: false,
        offers_3des: false,
        ja3: "771,49196-49200-159-52393-52392-52394-49195-49199-158-49188-49192-107-49187-49191-103-49162-49172-57-49161-49171-51-157-156-61-60-53-47-255,0-11-10-16-22-23-13,29-23-30-25-24,0-1-2",
        ja3_hash: "87b9bfc7da97115ed2276737b09f8d74",
        ja4: "t12d2807h2_d943125447b4_a44c6288192a",
        reasons: &[],
    },
    ClientFixture {
        name: "curl_tls13",
        bytes: include_bytes!("fixtures/curl_tls13.bin"),
        version: "TLS1.3",
        sni: MS,
        alpn: H2,
        ech: false,
        offers_3des: false,
        ja3: "771,4866-4867-4865-255,0-11-10-16-22-23-49-13-43-45-51-21,29-23-30-25-24-256-257-258-259-260,0-1-2",
        ja3_hash: "89dfc51e72bdcb94e4ba4622588002b1",
        ja4: "t13d0412h2_16476d049b0b_85302d7e289e",
        reasons: &[],
    },
    ClientFixture {
        name: "openssl_tls10",
        bytes: include_bytes!("fixtures/openssl_tls10.bin"),
        version: "TLS1.0",
        sni: MS,
        alpn: &[],
        ech: false,
        offers_3des: false,
        ja3: "769,49162-49172-57-49161-49171-51-53-47-255,0-11-10-35-22-23,29-23-30-25-24,0-1-2",
        ja3_hash: "c6dbf3152a545382a95425e390e2d2e8",
        ja4: "t10d090600_c491f621fb4c_195413a0cc0f",
        reasons: &[LegacyReason::MaxVersionBelowTls12],
    },
    ClientFixture {
        name: "openssl_tls13",
        bytes: include_bytes!("fixtures/openssl_tls13.bin"),
        version: "TLS1.3",
        sni: MS,
        alpn: &[],
        ech: false,
        offers_3des: false,
        ja3: "771,4866-4867-4865-255,0-11-10-35-22-23-13-43-45-51,29-23-30-25-24-256-257-258-259-260,0-1-2",
        ja3_hash: "f146948b4a599d4d7ddf071b74696983",
        ja4: "t13d041000_16476d049b0b_78f1d400d464",
        reasons: &[],
    },
    ClientFixture {
        name: "python_default",
        bytes: include_bytes!("fixtures/python_default.bin"),
        version: "TLS1.3",
        sni: MS,
        alpn: &[],
        ech: false,
        offers_3des: false,
        ja3: "771,4866-4867-4865-49196-49200-49195-49199-52393-52392-49188-49192-49187-49191-159-158-107-103-255,0-11-10-35-22-23-13-43-45-51-21,29-23-30-25-24-256-257-258-259-260,0-1-2",
        ja3_hash: "93c7d42c0df602fb91589311534831f5",
        ja4: "t13d181100_85036bcba153_d41ae481755e",
        reasons: &[],
    },
    ClientFixture {
        name: "gnutls_3des",
        bytes: include_bytes!("fixtures/gnutls_3des.bin"),
        version: "TLS1.2",
        sni: MS,
        alpn: &[],
        ech: false,
        offers_3des: true,
        ja3: "771,49160-49170-10-22,5-10-11-13-22-23-35-65281-0-28,23-24-25-29-30-256-257-258-259-260,0",
        ja3_hash: "8dfa71e740bef2d6d009de699c67d63f",
        ja4: "t12d041000_87cced34d5d0_577ffa9d9a5c",
        reasons: &[LegacyReason::Only3desCiphers],
    },
    ClientFixture {
        name: "chromium",
        bytes: include_bytes!("fixtures/chromium.bin"),
        version: "TLS1.3",
        sni: MS,
        alpn: H2,
        ech: true,
        offers_3des: false,
        ja3: "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,5-27-23-16-43-65037-51-65281-10-35-45-11-18-17613-51764-0-13,4588-29-23-24,0",
        ja3_hash: "4e5ab2af60f273e2b02566e2376a6bbc",
        ja4: "t13d1517h2_8daaf6152771_cb7bf5808d99",
        reasons: &[],
    },
];

fn hello(buf: &[u8]) -> Box<ClientHelloSummary> {
    match detect_client_hello(buf, MAX_HELLO_BYTES) {
        Detection::Hello(h) => h,
        other => panic!("expected a hello, got {other:?}"),
    }
}

fn server_hello(buf: &[u8]) -> Box<ServerHelloSummary> {
    match detect_server_hello(buf, MAX_HELLO_BYTES) {
        ServerDetection::Hello(s) => s,
        other => panic!("expected a ServerHello, got {other:?}"),
    }
}

#[test]
fn client_fixtures_summaries_and_fingerprints() {
    for f in CLIENTS {
        let h = hello(f.bytes);
        let name = f.name;
        assert_eq!(h.format, HelloFormat::Tls, "{name}");
        assert_eq!(detect_client_hello(f.bytes, MAX_HELLO_BYTES).kind(), "tls");
        assert_eq!(h.hello_len, f.bytes.len(), "{name}");
        assert_eq!(
            version_name(h.record_version),
            "TLS1.0",
            "{name}: record version"
        );
        assert_eq!(version_name(h.max_version()), f.version, "{name}");
        assert_eq!(h.sni.as_deref(), f.sni, "{name}");
        assert_eq!(h.alpn, f.alpn, "{name}");
        assert_eq!(h.ech, f.ech, "{name}");
        assert_eq!(h.offers_3des(), f.offers_3des, "{name}");
        assert_eq!(h.ja3(), f.ja3, "{name}");
        assert_eq!(h.ja3_hash(), f.ja3_hash, "{name}");
        assert_eq!(h.ja4(), f.ja4, "{name}");
        let v = classify_client_hello(&h);
        assert_eq!(v.reasons, f.reasons, "{name}");
        assert_eq!(v.legacy, !f.reasons.is_empty(), "{name}");
        for hex in h.cipher_suites_hex() {
            assert!(hex.len() == 6 && hex.starts_with("0x"), "{name}: {hex}");
        }
    }
}

#[test]
fn chromium_hello_is_large_post_quantum_and_greased() {
    let f = CLIENTS.iter().find(|f| f.name == "chromium").unwrap();
    assert!(
        f.bytes.len() > 1700,
        "a post-quantum key share makes it big"
    );
    let h = hello(f.bytes);
    assert_eq!(h.groups.first(), Some(&0x11ec), "X25519MLKEM768 first");
    // The wire has GREASE in suites and extensions (0x3a3a, 0xcaca… vary per run).
    assert!(
        f.bytes
            .windows(2)
            .any(|w| w[0] == w[1] && w[0] & 0x0f == 0x0a)
    );
    assert!(h.cipher_suites.iter().all(|&c| c & 0x0f0f != 0x0a0a));
    assert!(
        h.extensions.contains(&0xca34),
        "a recent extension, kept as is"
    );
    assert_eq!(h.supported_versions, [0x0304, 0x0303]);
}

#[test]
fn every_prefix_of_every_fixture_needs_more() {
    for f in CLIENTS {
        for n in 0..f.bytes.len() {
            let d = detect_client_hello(&f.bytes[..n], MAX_HELLO_BYTES);
            assert_eq!(d, Detection::NeedMore, "{} prefix {n}", f.name);
        }
    }
    for f in SERVERS {
        for n in 0..f.bytes.len() {
            let d = detect_server_hello(&f.bytes[..n], MAX_HELLO_BYTES);
            assert_eq!(d, ServerDetection::NeedMore, "{} prefix {n}", f.name);
        }
    }
}

#[test]
fn bytes_after_the_hello_are_not_part_of_it() {
    for f in CLIENTS {
        let mut buf = f.bytes.to_vec();
        buf.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17, 0x03]);
        let h = hello(&buf);
        assert_eq!(*h, *hello(f.bytes), "{}", f.name);
    }
}

/// Re-frames the handshake payload of a one-record flight into records of the given
/// payload sizes, in turn; a size of 0, or running out of sizes, puts the rest in one record.
fn refragment(flight: &[u8], sizes: &[usize]) -> Vec<u8> {
    let header = &flight[..3];
    let mut payload = &flight[5..];
    let mut sizes = sizes.iter();
    let mut out = Vec::new();
    while !payload.is_empty() {
        let size = match sizes.next() {
            Some(&n) if n > 0 => n.min(payload.len()),
            _ => payload.len(),
        };
        let (chunk, rest) = payload.split_at(size);
        out.extend_from_slice(header);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
        payload = rest;
    }
    out
}

#[test]
fn hello_split_over_two_and_four_records() {
    for f in CLIENTS {
        let whole = hello(f.bytes);
        let len = f.bytes.len() - 5;
        let splits: [Vec<usize>; 3] = [
            vec![len / 2, 0],
            vec![2, 40, len / 2, 0], // the 4-byte handshake header itself is split
            vec![1, 1, 1, 0],
        ];
        for sizes in splits {
            let buf = refragment(f.bytes, &sizes);
            let h = hello(&buf);
            assert_eq!(h.hello_len, buf.len(), "{} {sizes:?}", f.name);
            let mut same = (*h).clone();
            same.hello_len = whole.hello_len;
            assert_eq!(same, *whole, "{} {sizes:?}", f.name);
            assert_eq!(h.ja4(), f.ja4);
            for n in 0..buf.len() {
                assert_eq!(
                    detect_client_hello(&buf[..n], MAX_HELLO_BYTES),
                    Detection::NeedMore,
                    "{} {sizes:?} prefix {n}",
                    f.name
                );
            }
        }
    }
}

#[test]
fn hello_in_one_byte_records() {
    let f = &CLIENTS[0];
    let n = f.bytes.len() - 5;
    let buf = refragment(f.bytes, &vec![1; n]);
    assert_eq!(buf.len(), 6 * n);
    let h = hello(&buf);
    assert_eq!(h.ja3(), f.ja3);
}

/// A TLS ClientHello built from parts (a one-record flight).
struct Builder {
    version: u16,
    suites: Vec<u16>,
    /// `None`: no extension block at all (SSL 3.0 style).
    extensions: Option<Vec<(u16, Vec<u8>)>>,
}

impl Builder {
    fn message(&self) -> Vec<u8> {
        let mut body = self.version.to_be_bytes().to_vec();
        body.extend_from_slice(&[0x11; 32]);
        body.push(0);
        body.extend_from_slice(&((self.suites.len() * 2) as u16).to_be_bytes());
        for s in &self.suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        if let Some(exts) = &self.extensions {
            let mut block = Vec::new();
            for (ty, data) in exts {
                block.extend_from_slice(&ty.to_be_bytes());
                block.extend_from_slice(&(data.len() as u16).to_be_bytes());
                block.extend_from_slice(data);
            }
            body.extend_from_slice(&(block.len() as u16).to_be_bytes());
            body.extend(block);
        }
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    fn record(&self) -> Vec<u8> {
        let msg = self.message();
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend(msg);
        rec
    }
}

fn u16s(prefix_len: usize, items: &[u16]) -> Vec<u8> {
    let mut v = match prefix_len {
        1 => vec![(items.len() * 2) as u8],
        _ => ((items.len() * 2) as u16).to_be_bytes().to_vec(),
    };
    for i in items {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

fn modern(grease: bool) -> Builder {
    let g = |v: u16| if grease { vec![v] } else { vec![] };
    let list = |pre: Vec<u16>, items: &[u16]| [pre, items.to_vec()].concat();
    let mut exts = vec![];
    if grease {
        exts.push((0x0a0a, vec![]));
    }
    exts.extend([
        (0x0000, b"\x00\x0e\x00\x00\x0bexample.com".to_vec()),
        (0x000a, u16s(2, &list(g(0x2a2a), &[0x001d, 0x0017]))),
        (0x000b, vec![1, 0]),
        (0x000d, u16s(2, &list(g(0x5a5a), &[0x0403, 0x0804]))),
        (0x0010, b"\x00\x03\x02h2".to_vec()),
        (0x002b, u16s(1, &list(g(0x7a7a), &[0x0304, 0x0303]))),
    ]);
    if grease {
        exts.push((0xfafa, vec![0]));
    }
    Builder {
        version: 0x0303,
        suites: list(g(0x1a1a), &[0x1301, 0xc02f, 0x002f]),
        extensions: Some(exts),
    }
}

#[test]
fn grease_is_left_out_everywhere() {
    let plain = hello(&modern(false).record());
    let greased = hello(&modern(true).record());
    assert_eq!(greased.cipher_suites, plain.cipher_suites);
    assert_eq!(greased.extensions, plain.extensions);
    assert_eq!(greased.groups, plain.groups);
    assert_eq!(greased.signature_algorithms, plain.signature_algorithms);
    assert_eq!(greased.supported_versions, [0x0304, 0x0303]);
    assert_eq!(greased.ja3(), plain.ja3());
    assert_eq!(greased.ja4(), plain.ja4());
    assert_eq!(plain.ja3(), "771,4865-49199-47,0-10-11-13-16-43,29-23,0");
    assert_eq!(&plain.ja4()[..10], "t13d0306h2");
}

#[test]
fn supported_versions_holding_only_grease_falls_back() {
    let mut b = modern(false);
    b.version = 0x0302;
    if let Some(exts) = &mut b.extensions {
        exts.retain(|(t, _)| *t != 0x002b);
        exts.push((0x002b, u16s(1, &[0x3a3a])));
    }
    let h = hello(&b.record());
    assert!(h.supported_versions.is_empty());
    assert_eq!(h.max_version(), 0x0302);
    assert!(h.ja4().starts_with("t11d"));
    assert_eq!(
        classify_client_hello(&h).reasons,
        [LegacyReason::MaxVersionBelowTls12]
    );
}

#[test]
fn hellos_without_extensions() {
    let none = Builder {
        version: 0x0300,
        suites: vec![0x000a, 0x0005],
        extensions: None,
    };
    let h = hello(&none.record());
    assert!(h.extensions.is_empty() && h.sni.is_none());
    assert_eq!(h.ja3(), "768,10-5,,,");
    // sha256("0005,000a")[..12]; no extensions at all.
    assert_eq!(h.ja4(), "ts3i020000_ecbe99380d04_000000000000");
    assert_eq!(
        classify_client_hello(&h).reasons,
        [
            LegacyReason::MaxVersionBelowTls12,
            LegacyReason::Only3desCiphers
        ]
    );
    let empty = Builder {
        version: 0x0303,
        suites: vec![0xc02f],
        extensions: Some(vec![]),
    };
    let h = hello(&empty.record());
    assert!(h.extensions.is_empty());
    assert_eq!(h.ja3(), "771,49199,,,");
}

#[test]
fn malformed_hellos_are_not_tls() {
    let good = modern(false).message();
    let frame = |msg: &[u8]| {
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(msg);
        rec
    };
    // Extension block length one too long, with the handshake length still consistent:
    // tls-parser alone would report "no extensions".
    let mut lying = good.clone();
    let ext_len_at = 4 + 2 + 32 + 1 + 2 + 6 + 2;
    lying[ext_len_at + 1] += 1;
    // A byte after the extensions inside the handshake body.
    let mut trailing = good.clone();
    trailing.push(0);
    let body_len = (trailing.len() - 4) as u32;
    trailing[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
    // Handshake length shorter than the ClientHello's fixed part.
    let short = [1, 0, 0, 4, 3, 3, 0, 0];
    let no_suites = Builder {
        version: 0x0303,
        suites: vec![],
        extensions: None,
    }
    .message();
    for (what, msg) in [
        ("lying extension block", lying),
        ("byte after extensions", trailing),
        ("short body", short.to_vec()),
        ("no cipher suites", no_suites),
    ] {
        assert_eq!(
            detect_client_hello(&frame(&msg), MAX_HELLO_BYTES),
            Detection::NotTls,
            "{what}"
        );
    }
}

#[test]
fn not_tls_and_too_large() {
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x00\x00\x00\x00",
    ] {
        assert_eq!(
            detect_client_hello(junk, MAX_HELLO_BYTES),
            Detection::NotTls
        );
    }
    // A handshake record holding a ClientHello that claims 16 MiB.
    let claim = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff];
    assert_eq!(
        detect_client_hello(&claim, MAX_HELLO_BYTES),
        Detection::TooLarge
    );
    assert_eq!(
        detect_client_hello(&claim[..8], MAX_HELLO_BYTES),
        Detection::NeedMore
    );
    // A fixture against a bound smaller than itself.
    let f = CLIENTS.iter().find(|f| f.name == "chromium").unwrap();
    assert_eq!(detect_client_hello(f.bytes, 1024), Detection::TooLarge);
    assert!(matches!(
        detect_client_hello(f.bytes, f.bytes.len()),
        Detection::Hello(_)
    ));
}

/// An SSLv2-compatible CLIENT-HELLO, bytes written out: what a 2000s-era OpenSSL
/// (`SSLv23_client_method`) sent by default. 2-byte header `0x80 0x2e` (46 bytes follow),
/// msg_type 1, version 0x0301, cipher_spec_length 21, session_id_length 0,
/// challenge_length 16, seven specs, then the challenge.
const SSLV2_COMPAT_HELLO: &[u8] = &[
    0x80, 0x2e, // header: 2-byte form, length 46
    0x01, // CLIENT-HELLO
    0x03, 0x01, // version: TLS 1.0
    0x00, 0x15, 0x00, 0x00, 0x00, 0x10, // spec, session id, challenge lengths
    0x00, 0x00, 0x39, // TLS_DHE_RSA_WITH_AES_256_CBC_SHA
    0x00, 0x00, 0x35, // TLS_RSA_WITH_AES_256_CBC_SHA
    0x00, 0x00, 0x0a, // TLS_RSA_WITH_3DES_EDE_CBC_SHA
    0x07, 0x00, 0xc0, // SSL_CK_DES_192_EDE3_CBC_WITH_MD5
    0x00, 0x00, 0x05, // TLS_RSA_WITH_RC4_128_SHA
    0x01, 0x00, 0x80, // SSL_CK_RC4_128_WITH_MD5
    0x00, 0x00, 0xff, // TLS_EMPTY_RENEGOTIATION_INFO_SCSV
    0x8c, 0x2e, 0x59, 0x14, 0x0b, 0x4d, 0x60, 0x19, // challenge
    0x72, 0xa1, 0x09, 0xc3, 0x27, 0x3e, 0x55, 0x80,
];

#[test]
fn sslv2_compatible_hello() {
    let h = hello(SSLV2_COMPAT_HELLO);
    assert_eq!(h.format, HelloFormat::Sslv2);
    assert_eq!(h.format.as_str(), "sslv2");
    assert_eq!(version_name(h.record_version), "SSL2.0");
    assert_eq!(version_name(h.max_version()), "TLS1.0");
    assert_eq!(h.hello_len, SSLV2_COMPAT_HELLO.len());
    assert_eq!(
        h.cipher_suites_hex(),
        [
            "0x0039", "0x0035", "0x000a", "0x0700c0", "0x0005", "0x010080", "0x00ff"
        ]
    );
    assert!(h.offers_3des());
    assert_eq!(h.ja3(), "769,57-53-10-458944-5-65664-255,,,");
    assert!(h.ja4().starts_with("t10i070000_"), "{}", h.ja4());
    assert!(h.ja4().ends_with("_000000000000"));
    assert_eq!(
        classify_client_hello(&h).reasons,
        [LegacyReason::MaxVersionBelowTls12]
    );
    for n in 0..SSLV2_COMPAT_HELLO.len() {
        assert_eq!(
            detect_client_hello(&SSLV2_COMPAT_HELLO[..n], MAX_HELLO_BYTES),
            Detection::NeedMore
        );
    }
}

struct ServerFixture {
    name: &'static str,
    bytes: &'static [u8],
    negotiated: &'static str,
    cipher: &'static str,
    ja3s: &'static str,
    ja3s_hash: &'static str,
    reasons: &'static [LegacyReason],
}

const SERVERS: &[ServerFixture] = &[
    ServerFixture {
        name: "server_openssl_tls10",
        bytes: include_bytes!("fixtures/server_openssl_tls10.bin"),
        negotiated: "TLS1.0",
        cipher: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        ja3s: "769,49172,65281-11-22-23",
        ja3s_hash: "aa6d7b9ef470624d6742bdcd9d86e7a0",
        reasons: &[LegacyReason::NegotiatedTls10],
    },
    ServerFixture {
        name: "server_openssl_tls11",
        bytes: include_bytes!("fixtures/server_openssl_tls11.bin"),
        negotiated: "TLS1.1",
        cipher: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        ja3s: "770,49172,65281-11-22-23",
        ja3s_hash: "0de1e101dee09e557bb154de4d1d9a6d",
        reasons: &[LegacyReason::NegotiatedTls11],
    },
    ServerFixture {
        name: "server_openssl_tls12",
        bytes: include_bytes!("fixtures/server_openssl_tls12.bin"),
        negotiated: "TLS1.2",
        cipher: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ja3s: "771,49200,65281-11-23",
        ja3s_hash: "e54965894d6b45ecb4323c7ea3d6c115",
        reasons: &[],
    },
    ServerFixture {
        name: "server_openssl_tls13",
        bytes: include_bytes!("fixtures/server_openssl_tls13.bin"),
        negotiated: "TLS1.3",
        cipher: "TLS_AES_256_GCM_SHA384",
        ja3s: "771,4866,43-51",
        ja3s_hash: "15af977ce25de452b96affa2addb1036",
        reasons: &[],
    },
    ServerFixture {
        name: "server_gnutls_3des",
        bytes: include_bytes!("fixtures/server_gnutls_3des.bin"),
        negotiated: "TLS1.2",
        cipher: "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        ja3s: "771,49170,11-22-23-35-65281-28",
        ja3s_hash: "6a7dffc4ea06398f4a540bc673899138",
        reasons: &[LegacyReason::Negotiated3des],
    },
];

#[test]
fn server_fixtures() {
    for f in SERVERS {
        let s = server_hello(f.bytes);
        let name = f.name;
        assert_eq!(s.hello_len, f.bytes.len(), "{name}");
        assert_eq!(version_name(s.negotiated_version), f.negotiated, "{name}");
        assert_eq!(cipher_name(s.cipher_suite), Some(f.cipher), "{name}");
        assert_eq!(s.ja3s(), f.ja3s, "{name}");
        assert_eq!(s.ja3s_hash(), f.ja3s_hash, "{name}");
        assert!(!s.hello_retry_request, "{name}");
        assert_eq!(classify_negotiated(None, &s).reasons, f.reasons, "{name}");
    }
}

#[test]
fn negotiated_verdict_decides_and_keeps_the_hello_reasons() {
    let client = |n: &str| hello(CLIENTS.iter().find(|f| f.name == n).unwrap().bytes);
    let server = |n: &str| server_hello(SERVERS.iter().find(|f| f.name == n).unwrap().bytes);
    // curl's TLS 1.0 hello served TLS 1.0: legacy at hello time and after.
    let v = classify_negotiated(Some(&client("curl_tls10")), &server("server_openssl_tls10"));
    assert_eq!(v.first_reason(), Some(LegacyReason::NegotiatedTls10));
    // GnuTLS's 3DES-only hello, served 3DES at TLS 1.2.
    let c = client("gnutls_3des");
    assert!(classify_client_hello(&c).legacy);
    let v = classify_negotiated(Some(&c), &server("server_gnutls_3des"));
    assert_eq!(
        v.reasons,
        [LegacyReason::Negotiated3des, LegacyReason::Only3desCiphers]
    );
    // A modern hello answered with TLS 1.3 is not legacy.
    let v = classify_negotiated(Some(&client("curl_tls13")), &server("server_openssl_tls13"));
    assert!(!v.legacy);
}

#[test]
fn server_hello_in_several_small_records() {
    for f in SERVERS {
        let whole = server_hello(f.bytes);
        let n = f.bytes.len() - 5;
        for sizes in [vec![3, 0], vec![7; n / 7 + 1], vec![1; n]] {
            let buf = refragment(f.bytes, &sizes);
            let s = server_hello(&buf);
            assert_eq!(s.hello_len, buf.len());
            assert_eq!(s.ja3s(), whole.ja3s(), "{} {:?}", f.name, &sizes[..2]);
            assert_eq!(s.negotiated_version, whole.negotiated_version);
            for k in 0..buf.len() {
                assert_eq!(
                    detect_server_hello(&buf[..k], MAX_HELLO_BYTES),
                    ServerDetection::NeedMore
                );
            }
        }
    }
}

#[test]
fn server_alert_fixture() {
    // openssl s_server -min_protocol TLSv1.2 answering curl's TLS 1.0-only hello.
    let alert = include_bytes!("fixtures/server_openssl_alert.bin");
    let d = detect_server_hello(alert, MAX_HELLO_BYTES);
    assert_eq!(
        d,
        ServerDetection::Alert {
            level: 2,
            description: 70
        }
    );
    assert_eq!(alert_name(70), "protocol_version");
    for n in 0..alert.len() - 1 {
        assert_eq!(
            detect_server_hello(&alert[..n], MAX_HELLO_BYTES),
            ServerDetection::NeedMore
        );
    }
}

#[test]
fn server_not_tls() {
    for junk in [
        &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
        b"\x17\x03\x03\x00\x10",
        b"\x80\x03\x00\x00\x01",
    ] {
        assert_eq!(
            detect_server_hello(junk, MAX_HELLO_BYTES),
            ServerDetection::NotTls
        );
    }
    // A ClientHello where a ServerHello should be.
    assert_eq!(
        detect_server_hello(CLIENTS[0].bytes, MAX_HELLO_BYTES),
        ServerDetection::NotTls
    );
    let claim = [0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0xff, 0xff, 0xff];
    assert_eq!(
        detect_server_hello(&claim, MAX_HELLO_BYTES),
        ServerDetection::TooLarge
    );
}

#[test]
fn hello_retry_request_is_flagged() {
    // The TLS 1.3 fixture with its random replaced by the HelloRetryRequest value.
    let mut buf = SERVERS
        .iter()
        .find(|f| f.name == "server_openssl_tls13")
        .unwrap()
        .bytes
        .to_vec();
    let hrr: [u8; 32] = [
        0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8,
        0x91, 0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8,
        0x33, 0x9c,
    ];
    buf[11..43].copy_from_slice(&hrr);
    let s = server_hello(&buf);
    assert!(s.hello_retry_request);
    assert_eq!(s.negotiated_version, 0x0304);
}

/// Small deterministic PRNG (xorshift64*) so the mutation test needs no dependency.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn mutated_fixtures_never_panic_and_answers_are_stable() {
    let mut next = rng(0x5eed);
    let inputs: Vec<&[u8]> = CLIENTS
        .iter()
        .map(|f| f.bytes)
        .chain(SERVERS.iter().map(|f| f.bytes))
        .chain([SSLV2_COMPAT_HELLO])
        .collect();
    for input in inputs {
        for _ in 0..400 {
            let mut buf = input.to_vec();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % buf.len();
                buf[i] = match next() % 3 {
                    0 => next() as u8,
                    1 => buf[i] ^ 0x80,
                    _ => buf[i].wrapping_add(1),
                };
            }
            let c = detect_client_hello(&buf, MAX_HELLO_BYTES);
            let s = detect_server_hello(&buf, MAX_HELLO_BYTES);
            // Any answer but NeedMore stays the same when more bytes follow.
            let mut longer = buf.clone();
            longer.extend_from_slice(b"\x17\x03\x03");
            if c != Detection::NeedMore {
                assert_eq!(detect_client_hello(&longer, MAX_HELLO_BYTES), c);
            }
            if s != ServerDetection::NeedMore {
                assert_eq!(detect_server_hello(&longer, MAX_HELLO_BYTES), s);
            }
            if let Detection::Hello(h) = &c {
                let _ = (
                    h.ja3_hash(),
                    h.ja4(),
                    h.cipher_suites_hex(),
                    classify_client_hello(h),
                );
            }
            if let ServerDetection::Hello(h) = &s {
                let _ = (h.ja3s_hash(), classify_negotiated(None, h));
            }
        }
    }
}

#[test]
fn tls13_draft_server_hellos() {
    // Hand-built (fixtures/make_drafts.py): draft 18's own format, which tls-parser does not
    // read, and draft 23's final format with the draft in supported_versions.
    let cases: [(&[u8], u16, &[u16]); 2] = [
        (
            include_bytes!("fixtures/server_draft_7f12.bin"),
            0x7f12,
            &[0x0028],
        ),
        (
            include_bytes!("fixtures/server_draft_7f17.bin"),
            0x7f17,
            &[0x002b, 0x0033],
        ),
    ];
    for (bytes, version, extensions) in cases {
        let s = server_hello(bytes);
        assert_eq!(s.negotiated_version, version, "{version:#06x}");
        assert_eq!(version_name(s.negotiated_version), "TLS1.3-draft");
        assert_eq!(s.cipher_suite, 0x1301);
        assert_eq!(s.extensions, extensions, "{version:#06x}");
        assert_eq!(s.hello_len, bytes.len());
        assert!(!s.hello_retry_request);
        // A TLS 1.3 draft is not legacy, whatever the hello offered.
        let v = classify_negotiated(Some(&hello(include_bytes!("fixtures/curl_tls13.bin"))), &s);
        assert!(!v.legacy, "{version:#06x}: {:?}", v.reasons);
        for n in 0..bytes.len() {
            assert_eq!(
                detect_server_hello(&bytes[..n], MAX_HELLO_BYTES),
                ServerDetection::NeedMore,
                "{version:#06x} prefix {n}"
            );
        }
    }
    // A draft-18 hello that lies about its length is malformed, not a panic.
    let mut bad = include_bytes!("fixtures/server_draft_7f12.bin").to_vec();
    bad.truncate(bad.len() - 3);
    let body_len = bad.len() - 9;
    bad[6..9].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    let record_len = (bad.len() - 5) as u16;
    bad[3..5].copy_from_slice(&record_len.to_be_bytes());
    assert_eq!(
        detect_server_hello(&bad, MAX_HELLO_BYTES),
        ServerDetection::NotTls
    );
}
