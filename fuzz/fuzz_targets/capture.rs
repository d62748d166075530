//! The whole offline analysis on arbitrary bytes: capture framing (pcap, pcapng, damage
//! recovery), link/IP/TCP decoding, the flow table, reassembly, hello detection and the
//! event line. Besides "no panic": no more connections than TCP segments, no more TCP
//! segments than packets, every verdict consistent with its reasons, every connection with
//! an inventory row has a JA4. `tests/analyze.rs` checks the same over the committed
//! captures and every finding kept in `tests/fixtures/regressions/capture/`.
#![no_main]

use std::sync::OnceLock;

use tlspeek::analyze::{analyze_bytes, flows::Limits};
use tlspeek::config::Config;

fn config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| Config::embedded_default().expect("the embedded config is valid"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Small limits, so eviction, expiry and the buffer budget are reached too.
    let limits = Limits {
        max_flows: 64,
        idle: 60_000_000_000,
        buffer_budget: 1 << 20,
    };
    if let Ok((conns, stats)) = analyze_bytes(data, config(), limits) {
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
});
