//! Inventory rows as a table, CSV or JSON — the same output for `tlspeek report`,
//! `tlspeek analyze`, `/legacy` and `/legacy.csv`. Peer-controlled strings (SNI, names,
//! User-Agent) lose their control characters in tables, and CSV cells that a spreadsheet
//! would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) get a leading `'`.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::CallerRow;
use super::software::Confidence;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// RFC 3339 UTC of a Unix time.
pub fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn heuristic_note(confidence: &str) -> &'static str {
    match Confidence::parse(confidence) {
        Some(Confidence::Heuristic) => " (heuristic)",
        Some(Confidence::Structural) => " (structural)",
        Some(Confidence::Learned) => " (learned User-Agent)",
        Some(Confidence::UserAgent) => " (by User-Agent)",
        _ => "",
    }
}

/// One row as written in JSON.
#[derive(Serialize)]
pub struct JsonRow<'a> {
    last_seen: String,
    first_seen: String,
    last_legacy_seen: Option<String>,
    source_ip: &'a str,
    source: &'a str,
    source_name: Option<&'a str>,
    destination: &'a str,
    legacy: bool,
    legacy_reasons: &'a [String],
    versions_offered: &'a [String],
    versions_negotiated: &'a [String],
    ciphers_negotiated: &'a [String],
    connections: u64,
    legacy_connections: u64,
    tls_library: &'a str,
    software: &'a str,
    software_confidence: &'a str,
    fix: &'a str,
    ja4: &'a str,
    ja3_hash: &'a str,
    last_sni: Option<&'a str>,
    user_agent: Option<&'a str>,
    source_os: Option<&'a super::agents::Named>,
    source_runtime: Option<&'a super::agents::Named>,
    process: Option<&'a str>,
    process_user: Option<&'a str>,
    account: Option<&'a str>,
    app: Option<&'a str>,
    server_accepted: u64,
    server_rejected: u64,
    last_server_alert: Option<&'a str>,
    last_rejected: Option<String>,
    servers: &'a [super::ServerTally],
    retired_endpoint: Option<&'a super::Retired>,
    retired_path: Option<&'a str>,
}

pub fn json_row(r: &CallerRow) -> JsonRow<'_> {
    JsonRow {
        last_seen: rfc3339(r.last_seen),
        first_seen: rfc3339(r.first_seen),
        last_legacy_seen: r.last_legacy_seen.map(rfc3339),
        source_ip: &r.source_ip,
        source: &r.source,
        source_name: r.source_name.as_deref(),
        destination: &r.destination,
        legacy: r.legacy,
        legacy_reasons: &r.legacy_reasons,
        versions_offered: &r.versions_offered,
        versions_negotiated: &r.versions_negotiated,
        ciphers_negotiated: &r.ciphers_negotiated,
        connections: r.connections,
        legacy_connections: r.legacy_connections,
        tls_library: &r.tls_library,
        software: &r.software,
        software_confidence: &r.software_confidence,
        fix: &r.fix,
        ja4: &r.ja4,
        ja3_hash: &r.ja3_hash,
        last_sni: r.last_sni.as_deref(),
        user_agent: r.user_agent.as_deref(),
        source_os: r.source_os.as_ref(),
        source_runtime: r.source_runtime.as_ref(),
        process: r.who.process.as_deref(),
        process_user: r.who.process_user.as_deref(),
        account: r.who.account.as_deref(),
        app: r.who.app.as_deref(),
        server_accepted: r.server_accepted,
        server_rejected: r.server_rejected,
        last_server_alert: r.last_server_alert.as_deref(),
        last_rejected: r.last_rejected.map(rfc3339),
        servers: &r.servers,
        retired_endpoint: r.retired.as_ref(),
        retired_path: r.retired_path.as_deref(),
    }
}

pub fn to_json(rows: &[CallerRow]) -> String {
    let v: Vec<JsonRow<'_>> = rows.iter().map(json_row).collect();
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".to_string())
}

pub const CSV_HEADER: &[&str] = &[
    "last_seen",
    "first_seen",
    "source_ip",
    "source",
    "source_name",
    "destination",
    "legacy",
    "legacy_reasons",
    "versions_offered",
    "versions_negotiated",
    "ciphers_negotiated",
    "connections",
    "legacy_connections",
    "tls_library",
    "software",
    "software_confidence",
    "ja4",
    "ja3_hash",
    "last_sni",
    "user_agent",
    "source_os",
    "source_os_user_agent",
    "source_os_seen",
    "source_runtime",
    "source_runtime_user_agent",
    "source_runtime_seen",
    "fix",
    "process",
    "process_user",
    "account",
    "app",
    "server_accepted",
    "server_rejected",
    "last_server_alert",
    "last_rejected",
    "servers",
    "retired_since",
    "retired_error",
    "replacement",
];

/// Per server address: `address accepted/rejected`, `;`-separated.
fn servers_cell(r: &CallerRow) -> String {
    r.servers
        .iter()
        .map(|t| format!("{} {}/{}", t.address, t.accepted, t.rejected))
        .collect::<Vec<_>>()
        .join(";")
}

/// One CSV cell: formula-looking text is defused (OWASP: a leading `=`, `+`, `-`, `@`, TAB
/// or CR gets a `'`), and every cell is quoted. Quoting only cells that hold a comma is not
/// enough: in a locale whose list separator is `;`, `x;=cmd|...` splits into a formula.
pub fn csv_cell(s: &str) -> String {
    let defused = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", defused.replace('"', "\"\""))
}

/// One field of a `source_os` / `source_runtime`, empty when there is none.
fn named(n: &Option<super::agents::Named>, f: impl Fn(&super::agents::Named) -> &String) -> String {
    n.as_ref().map(|n| f(n).clone()).unwrap_or_default()
}

pub fn to_csv(rows: &[CallerRow]) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push_str("\r\n");
    for r in rows {
        let retired = r.retired.clone().unwrap_or_default();
        let cells = [
            rfc3339(r.last_seen),
            rfc3339(r.first_seen),
            r.source_ip.clone(),
            r.source.clone(),
            r.source_name.clone().unwrap_or_default(),
            r.destination.clone(),
            r.legacy.to_string(),
            r.legacy_reasons.join(";"),
            r.versions_offered.join(";"),
            r.versions_negotiated.join(";"),
            r.ciphers_negotiated.join(";"),
            r.connections.to_string(),
            r.legacy_connections.to_string(),
            r.tls_library.clone(),
            r.software.clone(),
            r.software_confidence.clone(),
            r.ja4.clone(),
            r.ja3_hash.clone(),
            r.last_sni.clone().unwrap_or_default(),
            r.user_agent.clone().unwrap_or_default(),
            named(&r.source_os, |n| &n.name),
            named(&r.source_os, |n| &n.user_agent),
            named(&r.source_os, |n| &n.seen),
            named(&r.source_runtime, |n| &n.name),
            named(&r.source_runtime, |n| &n.user_agent),
            named(&r.source_runtime, |n| &n.seen),
            r.fix.clone(),
            r.who.process.clone().unwrap_or_default(),
            r.who.process_user.clone().unwrap_or_default(),
            r.who.account.clone().unwrap_or_default(),
            r.who.app.clone().unwrap_or_default(),
            r.server_accepted.to_string(),
            r.server_rejected.to_string(),
            r.last_server_alert.clone().unwrap_or_default(),
            r.last_rejected.map(rfc3339).unwrap_or_default(),
            servers_cell(r),
            retired.since,
            retired.error,
            retired.replacement,
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Text for a terminal: control characters (and other invisible format characters) removed.
pub fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .collect()
}

fn cut(s: &str, width: usize) -> String {
    let s = printable(s);
    if s.chars().count() <= width {
        s
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub fn to_table(rows: &[CallerRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20}  {:<28}  {:<34}  {:<13}  {:<13}  {:>5}  {:<40}  {:<15}  SOFTWARE",
        "LAST SEEN",
        "SOURCE",
        "DESTINATION",
        "OFFERED",
        "NEGOTIATED",
        "CONNS",
        "LEGACY REASONS",
        "TLS LIBRARY"
    );
    for r in rows {
        let source = match &r.source_name {
            Some(n) => format!("{} ({n})", r.source_ip),
            None if r.source != r.source_ip => format!("{} ({})", r.source_ip, r.source),
            None => r.source_ip.clone(),
        };
        let reasons = if r.legacy {
            r.legacy_reasons.join(",")
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            out,
            "{:<20}  {:<28}  {:<34}  {:<13}  {:<13}  {:>5}  {:<40}  {:<15}  {}{}",
            rfc3339(r.last_seen),
            cut(&source, 28),
            cut(&r.destination, 34),
            cut(&r.versions_offered.join(","), 13),
            cut(&r.versions_negotiated.join(","), 13),
            r.connections,
            cut(&reasons, 40),
            cut(&r.tls_library, 15),
            printable(&r.software),
            heuristic_note(&r.software_confidence),
        );
        for (what, n) in [("OS", &r.source_os), ("runtime", &r.source_runtime)] {
            if let Some(n) = n {
                let _ = writeln!(
                    out,
                    "    source {what}: {} (User-Agent {:?}, {})",
                    printable(&n.name),
                    printable(&n.user_agent),
                    n.seen
                );
            }
        }
        let who = &r.who;
        if let Some(p) = &who.process {
            let _ = writeln!(
                out,
                "    process: {} (user {})",
                printable(p),
                printable(who.process_user.as_deref().unwrap_or("-"))
            );
        }
        if let Some(a) = &who.account {
            let _ = writeln!(
                out,
                "    account: {} (app {})",
                printable(a),
                printable(who.app.as_deref().unwrap_or("-"))
            );
        }
        if r.server_rejected > 0 {
            let _ = writeln!(out, "    server: {}", server_line(r));
        }
        if let Some(d) = &r.retired {
            let path = r
                .retired_path
                .as_deref()
                .map(|p| format!(" ({})", printable(p)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    calls a retired endpoint{path}: since {}, callers get {}; use {}",
                printable(&d.since),
                printable(&d.error),
                printable(&d.replacement)
            );
        }
        if r.legacy {
            let _ = writeln!(out, "    fix: {}", printable(&r.fix));
        }
    }
    out
}

/// "accepted 4, rejected 3 (last handshake_failure, T); rejected by 2 of 5 front ends,
/// accepted by 3": the server's answers to this caller, for the table.
fn server_line(r: &CallerRow) -> String {
    let mut line = format!(
        "accepted {}, rejected {}",
        r.server_accepted, r.server_rejected
    );
    if let (Some(alert), Some(at)) = (&r.last_server_alert, r.last_rejected) {
        let _ = write!(line, " (last {}, {})", printable(alert), rfc3339(at));
    }
    let (rejecting, accepting, all) = r.front_ends();
    if all > 0 {
        let _ = write!(
            line,
            "; rejected by {rejecting} of {all} front ends, accepted by {accepting}"
        );
    }
    line
}

/// Prints the report on stdout; with no rows, `empty_line` too — on stdout under a table,
/// on stderr for CSV and JSON (which stay machine-readable).
pub fn print(rows: &[CallerRow], format: Format, empty_line: Option<&str>) {
    print!("{}", render(rows, format));
    if let (true, Some(line)) = (rows.is_empty(), empty_line) {
        match format {
            Format::Table => println!("{line}"),
            _ => eprintln!("{line}"),
        }
    }
}

pub fn render(rows: &[CallerRow], format: Format) -> String {
    match format {
        Format::Table => to_table(rows),
        Format::Csv => to_csv(rows),
        Format::Json => {
            let mut s = to_json(rows);
            s.push('\n');
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Observation;
    use super::*;

    fn row() -> CallerRow {
        CallerRow::from_observation(&Observation {
            at: 1_700_000_000,
            source_ip: "10.1.2.3".into(),
            source: "build-agents".into(),
            source_name: Some("agent7.corp\u{1b}[31m".into()),
            destination: "login.microsoftonline.com".into(),
            ja4: "t10d".into(),
            sni: Some("=HYPERLINK(\"http://x\")".into()),
            offered_version: Some("TLS1.0".into()),
            negotiated_version: Some("TLS1.0".into()),
            legacy: true,
            legacy_reasons: vec!["negotiated_tls10".into(), "max_version_below_tls12".into()],
            software: "Windows SChannel".into(),
            software_confidence: "heuristic".into(),
            fix: "Set SchUseStrongCrypto=1, then restart".into(),
            user_agent: Some("@evil".into()),
            process: Some("/usr/bin/curl".into()),
            process_user: Some("nobody".into()),
            ..Observation::default()
        })
    }

    #[test]
    fn csv_defuses_formulas_and_quotes() {
        assert_eq!(csv_cell("=1+1"), "\"'=1+1\"");
        assert_eq!(csv_cell("-x"), "\"'-x\"");
        assert_eq!(csv_cell("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(csv_cell("\tx"), "\"'\tx\"");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("x;=cmd|'/c calc'!A1"), "\"x;=cmd|'/c calc'!A1\"");
        assert_eq!(csv_cell(""), "\"\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        let csv = to_csv(&[row()]);
        let mut lines = csv.lines();
        assert_eq!(lines.next().unwrap(), CSV_HEADER.join(","));
        let line = lines.next().unwrap();
        assert!(line.contains("\"'=HYPERLINK(\"\"http://x\"\")\""), "{line}");
        assert!(line.contains(",\"'@evil\","), "{line}");
        assert!(line.starts_with("\"2023-11-14T22:13:20Z\","), "{line}");
        assert!(line.contains("negotiated_tls10;max_version_below_tls12"));
    }

    #[test]
    fn table_strips_control_characters_and_marks_guesses() {
        let t = to_table(&[row()]);
        assert!(!t.contains('\u{1b}'), "{t:?}");
        assert!(t.contains("10.1.2.3 (agent7.corp[31m)"), "{t}");
        assert!(t.contains("Windows SChannel (heuristic)"));
        assert!(t.contains("    fix: Set SchUseStrongCrypto=1"));
        assert!(
            t.contains("    process: /usr/bin/curl (user nobody)"),
            "{t}"
        );
    }

    #[test]
    fn json_has_times_and_fields() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&[row()])).unwrap();
        assert_eq!(v[0]["last_seen"], "2023-11-14T22:13:20Z");
        assert_eq!(
            v[0]["source_name"], "agent7.corp\u{1b}[31m",
            "JSON escapes, keeps the value"
        );
        assert_eq!(v[0]["legacy_reasons"][0], "negotiated_tls10");
        assert_eq!(
            (v[0]["process"].as_str(), v[0]["account"].as_str()),
            (Some("/usr/bin/curl"), None)
        );
    }
}
