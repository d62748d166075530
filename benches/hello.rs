//! Micro-benchmarks of the pure hello core: what the proxy does per connection with the
//! client's first flight (detect + parse, classify, JA3 string and hash, JA4), measured on
//! real captured hellos (`tests/fixtures/*.bin`) and an SSLv2-compatible hello, plus the
//! ServerHello side. Goal (issue 8): ≤ 2 µs per typical hello for the whole pipeline.
//!
//! Run: `cargo bench --bench hello` (add `-- --quick` for a short run).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tlspeek::hello::{
    self, Detection, MAX_HELLO_BYTES, ServerDetection, classify_client_hello, detect_client_hello,
    detect_server_hello,
};

/// An SSLv2-compatible CLIENT-HELLO as a 2000s-era OpenSSL sent it (the same bytes as
/// `SSLV2_COMPAT_HELLO` in `tests/hello_fixtures.rs`): version TLS 1.0, seven cipher specs.
const SSLV2_COMPAT_HELLO: &[u8] = &[
    0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x39, 0x00, 0x00,
    0x35, 0x00, 0x00, 0x0a, 0x07, 0x00, 0xc0, 0x00, 0x00, 0x05, 0x01, 0x00, 0x80, 0x00, 0x00, 0xff,
    0x8c, 0x2e, 0x59, 0x14, 0x0b, 0x4d, 0x60, 0x19, 0x72, 0xa1, 0x09, 0xc3, 0x27, 0x3e, 0x55, 0x80,
];

const CLIENT_HELLOS: &[(&str, &[u8])] = &[
    (
        "curl_tls10",
        include_bytes!("../tests/fixtures/curl_tls10.bin"),
    ),
    (
        "curl_tls12",
        include_bytes!("../tests/fixtures/curl_tls12.bin"),
    ),
    (
        "curl_tls13",
        include_bytes!("../tests/fixtures/curl_tls13.bin"),
    ),
    (
        "openssl_tls13",
        include_bytes!("../tests/fixtures/openssl_tls13.bin"),
    ),
    (
        "gnutls_3des",
        include_bytes!("../tests/fixtures/gnutls_3des.bin"),
    ),
    (
        "chromium_pq",
        include_bytes!("../tests/fixtures/chromium.bin"),
    ),
    ("sslv2", SSLV2_COMPAT_HELLO),
];

const SERVER_HELLOS: &[(&str, &[u8])] = &[
    (
        "openssl_tls12",
        include_bytes!("../tests/fixtures/server_openssl_tls12.bin"),
    ),
    (
        "openssl_tls13",
        include_bytes!("../tests/fixtures/server_openssl_tls13.bin"),
    ),
    (
        "gnutls_3des",
        include_bytes!("../tests/fixtures/server_gnutls_3des.bin"),
    ),
];

fn parse(bytes: &[u8]) -> Box<hello::ClientHelloSummary> {
    match detect_client_hello(bytes, MAX_HELLO_BYTES) {
        Detection::Hello(h) => h,
        other => panic!("fixture is not a whole hello: {other:?}"),
    }
}

/// Everything the proxy computes from one hello: the per-connection cost of observing.
fn pipeline(bytes: &[u8]) -> usize {
    let h = parse(bytes);
    let verdict = classify_client_hello(&h);
    let (ja3, ja3_hash) = h.ja3_with_hash();
    let ja4 = h.ja4();
    usize::from(verdict.legacy) + ja3.len() + ja3_hash.len() + ja4.len()
}

fn client_hellos(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_hello_pipeline");
    for (name, bytes) in CLIENT_HELLOS {
        g.bench_function(*name, |b| b.iter(|| pipeline(black_box(bytes))));
    }
    g.finish();

    // The parts, on the most common modern hello and the largest one.
    for (name, bytes) in [CLIENT_HELLOS[2], CLIENT_HELLOS[5]] {
        let mut g = c.benchmark_group(format!("client_hello_parts/{name}"));
        g.bench_function("detect_parse", |b| b.iter(|| parse(black_box(bytes))));
        let h = parse(bytes);
        g.bench_function("classify", |b| {
            b.iter(|| classify_client_hello(black_box(&h)))
        });
        g.bench_function("ja3_with_hash", |b| {
            b.iter(|| black_box(&h).ja3_with_hash())
        });
        g.bench_function("ja4", |b| b.iter(|| black_box(&h).ja4()));
        g.finish();
    }
}

fn server_hellos(c: &mut Criterion) {
    let mut g = c.benchmark_group("server_hello");
    for (name, bytes) in SERVER_HELLOS {
        g.bench_function(*name, |b| {
            b.iter(
                || match detect_server_hello(black_box(bytes), MAX_HELLO_BYTES) {
                    ServerDetection::Hello(s) => s.ja3s().len(),
                    other => panic!("fixture is not a whole ServerHello: {other:?}"),
                },
            )
        });
    }
    g.finish();
}

/// The TLS-library verdict when its cache misses: what every hello whose extension order is
/// shuffled per connection (Chrome, Edge, rustls) costs.
fn stack_uncached(c: &mut Criterion) {
    let mut g = c.benchmark_group("stack_classify_uncached");
    let table = hello::stack::StackTable::embedded();
    for (name, bytes) in [CLIENT_HELLOS[2], CLIENT_HELLOS[5], CLIENT_HELLOS[4]] {
        let shape = hello::stack::Shape::of(&parse(bytes));
        g.bench_function(name, |b| {
            b.iter(|| table.classify_without(black_box(&shape), |_| false))
        });
    }
    g.finish();
}

criterion_group!(benches, client_hellos, server_hellos, stack_uncached);
criterion_main!(benches);
