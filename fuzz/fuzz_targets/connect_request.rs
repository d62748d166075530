//! CONNECT request head parser and authority parser.
//! The invariants live in `fuzz/checks.rs`, shared with `tests/properties.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::connect_request(data));
