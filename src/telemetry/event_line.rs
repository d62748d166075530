//! The event line written field by field: the same bytes as `serde_json` makes of the
//! record's `Serialize` (the tests hold the two together, field for field), at a fraction
//! of the cost. Every connection writes one; through `serde_json` each of its 48 keys was
//! escaped again and each suite went through `core::fmt`. Here a key is a literal, a value
//! is escaped only when it holds a character JSON must escape, and numbers use `itoa`.

use std::fmt::Write as _;

use super::record::{ActionTaken, ConnectionRecord};

/// Most event lines fit (a hello with its JA3 string is about 1.2 KiB).
const TYPICAL_LINE: usize = 1536;

/// The record's event line, without the trailing newline.
pub fn event_line(r: &ConnectionRecord) -> String {
    let mut w = Line(String::with_capacity(TYPICAL_LINE));
    w.raw("{\"ts\":\"");
    // A timestamp has no character that needs escaping.
    let _ = write!(w.0, "{}", humantime::format_rfc3339_millis(r.ts));
    w.raw("\",\"id\":");
    w.int(r.id);
    w.raw(",\"mode\":");
    w.str(r.mode.as_str());
    w.raw(",\"source_ip\":");
    w.str(&r.source_ip);
    w.raw(",\"source_port\":");
    w.int(r.source_port);
    w.raw(",\"source\":");
    w.str(&r.source);
    w.raw(",\"source_name\":");
    w.opt_str(r.source_name.as_deref());
    w.raw(",\"process\":");
    w.opt_str(r.process.as_deref());
    w.raw(",\"process_user\":");
    w.opt_str(r.process_user.as_deref());
    w.raw(",\"process_pid\":");
    w.opt_int(r.process_pid);
    w.raw(",\"user\":");
    w.opt_str(r.user.as_deref());
    w.raw(",\"target_host\":");
    w.opt_str(r.target_host.as_deref());
    w.raw(",\"target_port\":");
    w.opt_int(r.target_port);
    w.raw(",\"name_inferred\":");
    w.bool(r.name_inferred);
    w.raw(",\"upstream_ip\":");
    w.opt_str(r.upstream_ip.as_deref());
    w.raw(",\"kind\":");
    w.opt_str(r.kind.map(|k| k.as_str()));
    w.raw(",\"starttls\":");
    w.opt_str(r.starttls);
    w.raw(",\"record_version\":");
    w.opt_str(r.record_version);
    w.raw(",\"client_version\":");
    w.opt_str(r.client_version);
    w.raw(",\"supported_versions\":");
    w.list(r.supported_versions.iter().copied());
    w.raw(",\"max_version\":");
    w.opt_str(r.max_version);
    w.raw(",\"cipher_suites\":");
    w.list(r.cipher_suites.iter().map(|&c| crate::hello::SuiteHex(c)));
    w.raw(",\"offers_3des\":");
    w.opt_bool(r.offers_3des);
    w.raw(",\"sni\":");
    w.opt_str(r.sni.as_deref());
    w.raw(",\"alpn\":");
    w.list(r.alpn.iter().map(String::as_str));
    w.raw(",\"ech\":");
    w.opt_bool(r.ech);
    w.raw(",\"ja3\":");
    w.opt_str(r.ja3.as_deref());
    w.raw(",\"ja3_hash\":");
    w.opt_str(r.ja3_hash.as_deref());
    w.raw(",\"ja4\":");
    w.opt_str(r.ja4.as_deref());
    w.raw(",\"tls_library\":");
    w.opt_str(r.tls_library);
    w.raw(",\"negotiated_version\":");
    w.opt_str(r.negotiated_version);
    w.raw(",\"negotiated_cipher\":");
    w.opt_str(r.negotiated_cipher.as_deref());
    w.raw(",\"ja3s\":");
    w.opt_str(r.ja3s.as_deref());
    w.raw(",\"server_alert\":");
    w.opt_str(r.server_alert);
    w.raw(",\"legacy\":");
    w.bool(r.legacy);
    w.raw(",\"legacy_reasons\":");
    w.list(r.legacy_reasons.iter().copied());
    w.raw(",\"rule\":");
    w.opt_str(r.rule.as_deref());
    w.raw(",\"action\":");
    w.opt_str(r.action.map(ActionTaken::as_str));
    w.raw(",\"would\":");
    w.opt_str(r.would);
    w.raw(",\"upstream_version\":");
    w.opt_str(r.upstream_version);
    w.raw(",\"upstream_cipher\":");
    w.opt_str(r.upstream_cipher.as_deref());
    w.raw(",\"user_agent\":");
    w.opt_str(r.user_agent.as_deref());
    w.raw(",\"request\":");
    w.opt_str(r.request.as_deref());
    w.raw(",\"outcome\":");
    w.str(r.outcome.as_str());
    w.raw(",\"note\":");
    w.opt_str(r.note.as_deref());
    w.raw(",\"bytes_up\":");
    w.int(r.bytes_up);
    w.raw(",\"bytes_down\":");
    w.int(r.bytes_down);
    w.raw(",\"duration_ms\":");
    w.int(r.duration_ms);
    w.raw("}");
    w.0
}

/// A list item: a string, or a suite written as its hex text.
trait Item {
    fn write_to(self, w: &mut Line);
}

impl Item for &str {
    fn write_to(self, w: &mut Line) {
        w.str(self);
    }
}

impl Item for crate::hello::SuiteHex {
    fn write_to(self, w: &mut Line) {
        // `0x` and hex digits: nothing to escape.
        w.raw("\"");
        w.raw(self.encode(&mut [0; 10]));
        w.raw("\"");
    }
}

struct Line(String);

impl Line {
    fn raw(&mut self, s: &str) {
        self.0.push_str(s);
    }

    fn int(&mut self, n: impl itoa::Integer) {
        self.raw(itoa::Buffer::new().format(n));
    }

    fn opt_int(&mut self, n: Option<impl itoa::Integer>) {
        match n {
            Some(n) => self.int(n),
            None => self.raw("null"),
        }
    }

    fn bool(&mut self, b: bool) {
        self.raw(if b { "true" } else { "false" });
    }

    fn opt_bool(&mut self, b: Option<bool>) {
        match b {
            Some(b) => self.bool(b),
            None => self.raw("null"),
        }
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.raw("null"),
        }
    }

    fn list<T: Item>(&mut self, items: impl Iterator<Item = T>) {
        self.raw("[");
        for (i, item) in items.enumerate() {
            if i > 0 {
                self.raw(",");
            }
            item.write_to(self);
        }
        self.raw("]");
    }

    /// A JSON string, escaped as `serde_json` escapes: `"` and `\`, the short forms of
    /// backspace, tab, newline, form feed and carriage return, `\u00XX` (lowercase) for the
    /// other control characters; everything else as it is.
    fn str(&mut self, s: &str) {
        self.raw("\"");
        let bytes = s.as_bytes();
        if !needs_escape(bytes) {
            self.raw(s);
            self.raw("\"");
            return;
        }
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let short = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                0x08 => "\\b",
                b'\t' => "\\t",
                b'\n' => "\\n",
                0x0c => "\\f",
                b'\r' => "\\r",
                0x00..=0x1f => "",
                _ => continue,
            };
            // `i` is at an ASCII byte, so both cuts fall on character boundaries.
            self.raw(s.get(start..i).unwrap_or_default());
            start = i + 1;
            if short.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.raw("\\u00");
                self.0.push(char::from(HEX[usize::from(b >> 4)]));
                self.0.push(char::from(HEX[usize::from(b & 0xf)]));
            } else {
                self.raw(short);
            }
        }
        self.raw(s.get(start..).unwrap_or_default());
        self.raw("\"");
    }
}

/// Whether `bytes` hold a `"`, a `\` or a control character: eight bytes at a time (the
/// classic "has a zero byte" and "has a byte less than n" word tests, exact as a yes/no).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(n * ONES) & !x & HIGHS != 0;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        // A chunk is 8 bytes; were it not, the zeros would take the careful path.
        let x = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or_default());
        if below(x, 0x20)
            || below(x ^ (u64::from(b'"') * ONES), 1)
            || below(x ^ (u64::from(b'\\') * ONES), 1)
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::{Kind, Mode, Outcome};
    use std::time::{Duration, SystemTime};

    /// Text with everything JSON escapes, and characters it does not.
    fn awkward(n: u64) -> String {
        let pieces = [
            "a", "\"", "\\", "\u{0}", "\u{1f}", "\u{8}", "\t", "\n", "\u{c}", "\r", "\u{7f}", "é",
            "€", "😀", "/", "'", "<", " ", "\u{2028}", "0x1301",
        ];
        let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let len = (n % 23) as usize;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                pieces[(x % pieces.len() as u64) as usize]
            })
            .collect()
    }

    fn record(n: u64) -> ConnectionRecord {
        // Which fields are present: the bits of a mix of n (all 38 vary over the rounds).
        let bits = {
            let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let some = |k: u64| (bits >> k) & 1 == 1;
        let text = |k: u64| some(k).then(|| awkward(n.wrapping_mul(31) + k));
        let peer = if some(0) {
            "10.1.2.3:40000".parse().unwrap()
        } else {
            "[2001:db8::7]:1".parse().unwrap()
        };
        let mut r = ConnectionRecord::new(
            n,
            [Mode::Connect, Mode::Transparent, Mode::Http, Mode::Pcap][(n % 4) as usize],
            peer,
            awkward(n),
        );
        r.ts = SystemTime::UNIX_EPOCH
            + Duration::from_millis(n.wrapping_mul(7_919_993_131) % (1 << 42));
        r.source_name = text(1);
        r.process = text(2);
        r.process_user = text(3);
        r.process_pid = some(4).then_some(n as u32);
        r.user = text(5);
        r.target_host = text(6);
        r.target_port = some(7).then_some(n as u16);
        r.name_inferred = some(8);
        r.upstream_ip = text(9);
        r.kind = some(10).then_some(
            [
                Kind::Tls,
                Kind::Sslv2,
                Kind::NotTls,
                Kind::Truncated,
                Kind::TooLarge,
                Kind::None,
            ][(n % 6) as usize],
        );
        r.starttls = some(11).then_some("smtp");
        r.record_version = some(12).then_some("TLS1.0");
        r.client_version = some(12).then_some("TLS1.2");
        r.supported_versions = if some(13) {
            vec!["TLS1.3", "TLS1.2"]
        } else {
            vec![]
        };
        r.max_version = some(14).then_some("TLS1.3");
        r.cipher_suites = (0..n % 7)
            .map(|i| (n * 4099 + i * 77) as u32 % 0x100_0000)
            .collect();
        r.offers_3des = some(15).then_some(some(16));
        r.sni = text(17);
        r.alpn = (0..n % 3).map(|i| awkward(n + i)).collect();
        r.ech = some(18).then_some(some(19));
        r.ja3 = text(20);
        r.ja3_hash = text(21);
        r.ja4 = text(22);
        r.tls_library = some(23).then_some("openssl");
        r.negotiated_version = some(24).then_some("TLS1.2");
        r.negotiated_cipher = text(25);
        r.ja3s = text(26);
        r.server_alert = some(27).then_some("protocol_version");
        r.legacy = some(28);
        r.legacy_reasons = if some(29) { vec!["tls10"] } else { vec![] };
        r.rule = text(30);
        r.action = some(31).then_some(
            [
                ActionTaken::Passed,
                ActionTaken::Blocked,
                ActionTaken::Upgraded,
            ][(n % 3) as usize],
        );
        r.would = some(32).then_some("block");
        r.upstream_version = some(33).then_some("TLS1.3");
        r.upstream_cipher = text(34);
        r.user_agent = text(35);
        r.request = text(36);
        r.outcome = Outcome::ALL[(n % Outcome::ALL.len() as u64) as usize];
        r.note = text(37);
        r.bytes_up = n.wrapping_mul(1_000_003);
        r.bytes_down = u64::MAX - n;
        r.duration_ms = n.wrapping_mul(13);
        r
    }

    #[test]
    fn needs_escape_finds_every_character_json_escapes_at_every_offset() {
        for len in 0..20 {
            for at in 0..len {
                for b in 0u8..=255 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let wanted = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&bytes), wanted, "{b:#x} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape("é€😀 ~\u{7f}".as_bytes()));
    }

    #[test]
    fn the_line_is_what_serde_json_writes() {
        let mut escaped = 0;
        let mut nulls = 0;
        for n in 0..4000u64 {
            let r = record(n);
            let by_serde = serde_json::to_string(&r).unwrap();
            assert_eq!(event_line(&r), by_serde, "record {n}");
            escaped += usize::from(by_serde.contains("\\u00"));
            nulls += by_serde.matches(":null").count();
        }
        // Optional fields were absent about half the time.
        assert!((40_000..80_000).contains(&nulls), "{nulls} nulls");
        assert!(escaped > 100, "only {escaped} lines had control characters");
    }
}
