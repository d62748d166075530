//! ServerHello detection and parsing, JA3S, negotiated verdict.
//! The invariants live in `fuzz/checks.rs`, shared with `tests/properties.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::server_hello(data));
