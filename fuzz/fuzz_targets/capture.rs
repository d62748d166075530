//! The whole offline analysis on arbitrary bytes: capture framing (pcap, pcapng, damage
//! recovery), link/IP/TCP decoding, the flow table, reassembly, hello detection and the
//! event line. The invariants live in `fuzz/checks.rs`, shared with `tests/analyze.rs`,
//! which replays the committed captures and every finding kept in
//! `tests/fixtures/regressions/capture/` through them.
#![no_main]

use std::sync::OnceLock;

use tlspeek::config::Config;

#[path = "../checks.rs"]
mod checks;

fn config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| Config::embedded_default().expect("the embedded config is valid"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::capture(config(), data));
