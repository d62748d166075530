//! ClientHello detection and parsing (TLS records, SSLv2), JA3/JA4, verdict.
//! The invariants live in `fuzz/checks.rs`, shared with `tests/properties.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::client_hello(data));
