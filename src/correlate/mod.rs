//! `tlspeek correlate`: tlspeek's legacy connections joined with the logs that name the
//! process (Sysmon Event 3, Security Event 5156, Winlogbeat JSON: on source address and
//! port, within `--window`) and the people and apps (Entra ID sign-in exports with the
//! legacy-TLS error 1002016: on time, from the site's egress addresses). Each input that
//! is missing, unrecognised or damaged is named on stderr and makes the exit code 1; the
//! rest is still joined and printed.

pub mod processes;
pub mod signins;
pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::hello::TlsLibrary;
use crate::inventory::report::{self, Format};
use crate::inventory::software::SoftwareDb;
use crate::inventory::store::{Filter, StoreError};
use crate::inventory::{Attribution, CallerKey, CallerRow, Observation, ServerAnswer};
use crate::inventory::{Db, Location};
use processes::ProcessConn;
use signins::SignIn;
use text::DateOrder;

/// What to join.
pub struct Options {
    pub config: Config,
    pub events: Vec<PathBuf>,
    pub db: Vec<Location>,
    pub sysmon: Vec<PathBuf>,
    pub signins: Vec<PathBuf>,
    /// The site's egress addresses, as sign-in logs see them; none: every sign-in counts.
    pub egress: Vec<IpAddr>,
    pub window_secs: f64,
    pub date_order: DateOrder,
    /// `--columns`: CSV headers for sign-in fields, beyond the known ones.
    pub columns: Vec<(String, String)>,
}

/// One connection tlspeek saw, with what a join needs.
#[derive(Clone, Debug)]
struct Seen {
    key: CallerKey,
    source_ip: IpAddr,
    source_port: u16,
    at: f64,
    legacy: bool,
}

/// A process on a caller, as the join found it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Process {
    pub image: String,
    pub user: Option<String>,
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub connections: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// A caller: its report row, the processes and the sign-ins joined to it.
pub struct Caller {
    pub row: CallerRow,
    pub processes: Vec<Process>,
    pub signins: Vec<SignIn>,
}

#[derive(Serialize)]
struct CallerJson<'a> {
    #[serde(flatten)]
    row: report::JsonRow<'a>,
    processes: &'a [Process],
    signins: &'a [SignIn],
}

/// The join's result; `problems` name the inputs that could not be read.
pub struct Correlation {
    pub callers: Vec<Caller>,
    pub unmatched_signins: Vec<SignIn>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// A process log in any of its formats: `.evtx`, event XML, Winlogbeat JSON lines.
fn read_processes(path: &Path) -> Result<processes::Read, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.starts_with(processes::EVTX_MAGIC) {
        return processes::parse_evtx(bytes);
    }
    processes::parse(&text::decode(&bytes)?)
}

fn read(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Inputs at least this large get progress lines on stderr.
pub const LARGE_INPUT: u64 = 8 << 20;

/// Progress on stderr for a large input: when it starts, and what it gave.
struct Progress {
    shown: bool,
    started: std::time::Instant,
}

impl Progress {
    fn start(path: &Path, what: &str) -> Progress {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let shown = size >= LARGE_INPUT;
        if shown {
            eprintln!(
                "tlspeek: correlate: reading {what} {} ({} MiB)",
                path.display(),
                size >> 20
            );
        }
        Progress {
            shown,
            started: std::time::Instant::now(),
        }
    }

    fn done(&self, path: &Path, records: usize, kind: &str) {
        if self.shown {
            eprintln!(
                "tlspeek: correlate: {}: {records} {kind} in {:.1} s",
                path.display(),
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Each damaged record of one input, by its position (the first few, then a count).
fn report_damage(problems: &mut Vec<String>, path: &Path, damaged: &[String]) {
    const SHOWN: usize = 20;
    for d in damaged.iter().take(SHOWN) {
        problems.push(format!("{}: {d} (skipped)", path.display()));
    }
    if damaged.len() > SHOWN {
        problems.push(format!(
            "{}: {} more damaged records skipped",
            path.display(),
            damaged.len() - SHOWN
        ));
    }
}

/// Reads every input and joins them.
pub fn run(o: &Options) -> Correlation {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut rows: BTreeMap<CallerKey, CallerRow> = BTreeMap::new();
    let mut seen = Vec::new();
    for path in &o.events {
        let progress = Progress::start(path, "event lines");
        match read(path) {
            Ok(t) => {
                let before = seen.len();
                let damaged = observe_events(&o.config, &t, &mut rows, &mut seen);
                report_damage(&mut problems, path, &damaged);
                progress.done(path, seen.len() - before, "legacy or watched connections");
            }
            Err(e) => problems.push(e),
        }
    }
    for at in &o.db {
        match read_inventory(at, &mut rows, &mut seen) {
            Ok(true) => {}
            Ok(false) => warnings.push(format!(
                "{}: this inventory keeps no per-connection records (written by an older tlspeek): processes and sign-ins cannot be joined to its rows",
                at
            )),
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    let mut logged: Vec<ProcessConn> = Vec::new();
    for path in &o.sysmon {
        let progress = Progress::start(path, "process log");
        match read_processes(path) {
            Ok(r) => {
                progress.done(path, r.conns.len(), "connection events");
                report_damage(&mut problems, path, &r.damaged);
                logged.extend(r.conns);
            }
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    let mut signs: Vec<SignIn> = Vec::new();
    for path in &o.signins {
        let progress = Progress::start(path, "sign-ins");
        match read(path).and_then(|t| {
            signins::parse(&t, o.date_order, &o.columns)
                .map_err(|e| format!("{}: {e}", path.display()))
        }) {
            Ok(r) => {
                progress.done(path, r.signins.len(), "legacy-TLS sign-ins");
                report_damage(&mut problems, path, &r.damaged);
                signs.extend(r.signins);
            }
            Err(e) => problems.push(e),
        }
    }
    if o.egress.is_empty() && !signs.is_empty() {
        warnings.push(
            "no --egress-ip: sign-ins from every address are joined (give the site's public address to join only its own)"
                .into(),
        );
    }
    let (callers, unmatched_signins) = join(o, rows, &seen, &logged, signs);
    Correlation {
        callers,
        unmatched_signins,
        problems,
        warnings,
    }
}

/// An inventory's caller rows, and its recent connections; `false` when it keeps none.
fn read_inventory(
    at: &Location,
    rows: &mut BTreeMap<CallerKey, CallerRow>,
    seen: &mut Vec<Seen>,
) -> Result<bool, crate::inventory::store::StoreError> {
    let mut store = Db::open_read_only(at)?;
    for r in store.query(&Filter::default())? {
        rows.entry(r.key()).and_modify(|x| x.merge(&r)).or_insert(r);
    }
    let Some(conns) = store.connections()? else {
        return Ok(false);
    };
    for c in conns {
        let Ok(ip) = c.source_ip.parse::<IpAddr>() else {
            continue;
        };
        seen.push(Seen {
            key: c.key(),
            source_ip: ip.to_canonical(),
            source_port: c.source_port,
            at: c.at as f64,
            legacy: c.legacy,
        });
    }
    Ok(true)
}

/// The legacy (and watched) connections of event lines, as callers and as connections;
/// returns the lines that are not event lines (a line cut short when a writer stopped).
fn observe_events(
    cfg: &Config,
    text: &str,
    rows: &mut BTreeMap<CallerKey, CallerRow>,
    seen: &mut Vec<Seen>,
) -> Vec<String> {
    let mut damaged = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            damaged.push(format!("line {}: not a JSON event line", i + 1));
            continue;
        };
        let Some((o, source_ip, at)) = observation(cfg, &e) else {
            continue;
        };
        let row = CallerRow::from_observation(&o);
        let key = row.key();
        rows.entry(key.clone())
            .and_modify(|x| x.merge(&row))
            .or_insert(row);
        seen.push(Seen {
            key,
            source_ip,
            source_port: o.source_port,
            at,
            legacy: o.legacy,
        });
    }
    damaged
}

/// An event line's connection as an inventory observation, when it is a legacy (or
/// watched) hello; with its source address and time.
fn observation(cfg: &Config, e: &serde_json::Value) -> Option<(Observation, IpAddr, f64)> {
    let s = |k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_string);
    if !matches!(s("kind").as_deref(), Some("tls") | Some("sslv2")) {
        return None;
    }
    let ip = s("source_ip")?;
    let source_ip = ip.parse::<IpAddr>().ok()?.to_canonical();
    let at = text::parse_time(&s("ts")?, DateOrder::Mdy)?;
    let destination = s("sni").or_else(|| s("target_host")).unwrap_or_default();
    let watched = crate::names::HostName::parse(&destination).is_some_and(|n| cfg.is_watched(&n));
    let legacy = e.get("legacy").and_then(|v| v.as_bool()).unwrap_or(false);
    if !legacy && !watched {
        return None;
    }
    let tls_library = s("tls_library").unwrap_or_else(|| "unknown".into());
    let lib = TlsLibrary::parse(&tls_library).unwrap_or(TlsLibrary::Unknown);
    let o = Observation {
        at: at as i64,
        source: s("source").unwrap_or_else(|| ip.clone()),
        source_ip: ip,
        source_port: e
            .get("source_port")
            .and_then(|v| v.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0),
        source_name: s("source_name"),
        destination,
        ja4: s("ja4").unwrap_or_default(),
        ja3_hash: s("ja3_hash").unwrap_or_default(),
        sni: s("sni"),
        offered_version: s("max_version"),
        negotiated_version: s("negotiated_version"),
        negotiated_cipher: s("negotiated_cipher"),
        legacy,
        legacy_reasons: e
            .get("legacy_reasons")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        tls_library,
        software: lib.display().to_string(),
        software_confidence: match lib {
            TlsLibrary::Unknown => "unknown",
            _ => "structural",
        }
        .into(),
        fix: SoftwareDb::embedded().library_fix(lib).to_string(),
        user_agent: s("user_agent"),
        process: s("process"),
        process_user: s("process_user"),
        upstream_ip: s("upstream_ip"),
        server_answer: server_answer(&s),
        retired_path: None,
    };
    Some((o, source_ip, at))
}

/// What the server answered, as an event line tells it (`ServerAnswer::judge`): a
/// negotiated version, the server's alert, a reset of a TLS connection. An upgraded
/// connection's answer was to tlspeek's own hello: none.
fn server_answer(s: &impl Fn(&str) -> Option<String>) -> Option<ServerAnswer> {
    if s("action").as_deref() == Some("upgraded") {
        return None;
    }
    let reset =
        s("outcome").as_deref() == Some("upstream_reset") && s("kind").as_deref() == Some("tls");
    ServerAnswer::judge(
        s("negotiated_version").is_some(),
        s("server_alert").as_deref(),
        reset,
    )
}

/// A process as logged: image, user, pid, host.
type ProcessKey = (String, Option<String>, Option<u32>, Option<String>);
/// Connections, first and last seen (Unix seconds).
type Tally = (u64, f64, f64);

fn join(
    o: &Options,
    rows: BTreeMap<CallerKey, CallerRow>,
    seen: &[Seen],
    logged: &[ProcessConn],
    signs: Vec<SignIn>,
) -> (Vec<Caller>, Vec<SignIn>) {
    let mut procs = join_processes(o.window_secs, seen, logged);
    let (mut joined, unmatched) = join_signins(o, seen, signs);
    let mut callers: Vec<Caller> = rows
        .into_iter()
        .map(|(key, row)| Caller {
            processes: procs
                .remove(&key)
                .unwrap_or_default()
                .into_iter()
                .map(|((image, user, pid, host), (n, first, last))| Process {
                    image,
                    user,
                    pid,
                    host,
                    connections: n,
                    first_seen: report::rfc3339(first as i64),
                    last_seen: report::rfc3339(last as i64),
                })
                .collect(),
            signins: joined.remove(&key).unwrap_or_default(),
            row,
        })
        .collect();
    callers.sort_by_key(|c| std::cmp::Reverse(c.row.last_seen));
    (callers, unmatched)
}

/// Processes logged on a connection's source address and port, within the window.
fn join_processes(
    window: f64,
    seen: &[Seen],
    logged: &[ProcessConn],
) -> BTreeMap<CallerKey, BTreeMap<ProcessKey, Tally>> {
    // Indexed on (address, port): a join of a million connections with a million log
    // records looks at the few records of each connection's own port.
    let mut by_port: HashMap<(IpAddr, u16), Vec<&ProcessConn>> = HashMap::new();
    for p in logged {
        by_port
            .entry((p.source_ip.to_canonical(), p.source_port))
            .or_default()
            .push(p);
    }
    let mut procs: BTreeMap<CallerKey, BTreeMap<ProcessKey, Tally>> = BTreeMap::new();
    for c in seen {
        let Some(candidates) = by_port.get(&(c.source_ip, c.source_port)) else {
            continue;
        };
        for p in candidates.iter().filter(|p| (p.at - c.at).abs() <= window) {
            let k = (p.image.clone(), p.user.clone(), p.pid, p.host.clone());
            let e = procs
                .entry(c.key.clone())
                .or_default()
                .entry(k)
                .or_insert((0, p.at, p.at));
            e.0 += 1;
            e.1 = e.1.min(p.at);
            e.2 = e.2.max(p.at);
        }
    }
    procs
}

/// Sign-ins from the egress addresses with a legacy connection to an Entra ID (watched)
/// host within the window: joined
/// to every caller that could explain them (`candidates`); the others unmatched.
fn join_signins(
    o: &Options,
    seen: &[Seen],
    signs: Vec<SignIn>,
) -> (BTreeMap<CallerKey, Vec<SignIn>>, Vec<SignIn>) {
    let mut joined: BTreeMap<CallerKey, Vec<SignIn>> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for mut s in signs {
        let from_egress = o.egress.is_empty()
            || s.ip_address
                .as_deref()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(|a| o.egress.contains(&a));
        // Each caller that could explain it, with its nearest such connection.
        let mut nearest: BTreeMap<&CallerKey, f64> = BTreeMap::new();
        for c in seen.iter().filter(|c| {
            from_egress
                && c.legacy
                && (c.at - s.at).abs() <= o.window_secs
                && to_identity_host(&o.config, &c.key.1)
        }) {
            let d = (c.at - s.at).abs();
            nearest
                .entry(&c.key)
                .and_modify(|x| *x = x.min(d))
                .or_insert(d);
        }
        s.candidates = nearest.len();
        if nearest.is_empty() {
            s.reason = Some(if from_egress {
                "no legacy connection in the window"
            } else {
                "another egress address"
            });
            unmatched.push(s);
            continue;
        }
        let mut ranked: Vec<(&CallerKey, f64)> = nearest.into_iter().collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        for (rank, (k, d)) in ranked.into_iter().enumerate() {
            let mut one = s.clone();
            one.time_distance_seconds = Some((d * 1000.0).round() / 1000.0);
            one.rank = Some(rank + 1);
            joined.entry(k.clone()).or_default().push(one);
        }
    }
    (joined, unmatched)
}

/// Who a joined caller is, in one line of the inventory: the process seen on most of its
/// connections (and its Windows user), and the account and app of the sign-ins it is the
/// nearest candidate for (the most frequent). `None` when nothing was joined.
pub fn attribution(c: &Caller) -> Option<Attribution> {
    let process = c
        .processes
        .iter()
        .max_by(|a, b| (a.connections, &a.last_seen).cmp(&(b.connections, &b.last_seen)));
    let mut accounts: BTreeMap<(&str, Option<&str>), usize> = BTreeMap::new();
    for s in c.signins.iter().filter(|s| s.rank.unwrap_or(1) == 1) {
        if let Some(upn) = s.user_principal_name.as_deref() {
            *accounts.entry((upn, s.app.as_deref())).or_default() += 1;
        }
    }
    let account = accounts.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k);
    let who = Attribution {
        process: process.map(|p| p.image.clone()),
        process_user: process.and_then(|p| p.user.clone()),
        account: account.map(|(upn, _)| upn.to_string()),
        app: account.and_then(|(_, app)| app.map(str::to_string)),
    };
    (!who.is_empty()).then_some(who)
}

/// Stores who each joined caller is in the inventory at `path` (created if needed): shown
/// by `tlspeek report`, `/legacy` and `/legacy.csv`. Returns (rows updated, rows added).
pub fn write_db(c: &Correlation, at: &Location) -> Result<(usize, usize), StoreError> {
    let rows: Vec<CallerRow> = c
        .callers
        .iter()
        .filter_map(|x| {
            let who = attribution(x)?;
            let mut row = x.row.clone();
            row.who = who;
            Some(row)
        })
        .collect();
    Db::open(at)?.attribute(&rows)
}

/// A sign-in is explained only by a connection to an Entra ID host: a watched destination.
fn to_identity_host(cfg: &Config, destination: &str) -> bool {
    crate::names::HostName::parse(destination).is_some_and(|n| cfg.is_watched(&n))
}

/// The correlation as JSON (`{"callers": [...], "unmatched_signins": [...]}`), CSV or a
/// table.
pub fn render(c: &Correlation, format: Format) -> String {
    match format {
        Format::Json => {
            let callers: Vec<CallerJson<'_>> = c
                .callers
                .iter()
                .map(|x| CallerJson {
                    row: report::json_row(&x.row),
                    processes: &x.processes,
                    signins: &x.signins,
                })
                .collect();
            let v =
                serde_json::json!({"callers": callers, "unmatched_signins": c.unmatched_signins});
            let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
            s.push('\n');
            s
        }
        Format::Csv => {
            // Row by row from the report's own CSV, so that a cell holding a line break
            // (any text of an input file) never shifts a caller's extra columns.
            let mut out = report::CSV_HEADER.join(",");
            out.push_str(",\"processes\",\"signins\"\r\n");
            for x in &c.callers {
                let one = report::to_csv(std::slice::from_ref(&x.row));
                let row = one.split_once("\r\n").map_or("", |(_, r)| r);
                let p: Vec<String> = x.processes.iter().map(process_text).collect();
                let s: Vec<String> = x.signins.iter().map(signin_text).collect();
                out.push_str(row.trim_end_matches("\r\n"));
                out.push_str(&format!(
                    ",{},{}\r\n",
                    report::csv_cell(&p.join("; ")),
                    report::csv_cell(&s.join("; "))
                ));
            }
            out
        }
        Format::Table => {
            let mut out = String::new();
            for x in &c.callers {
                out.push_str(
                    &report::to_table(std::slice::from_ref(&x.row))
                        .lines()
                        .skip(1)
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
                out.push('\n');
                for p in &x.processes {
                    out.push_str(&format!(
                        "    process: {}\n",
                        report::printable(&process_text(p))
                    ));
                }
                for s in &x.signins {
                    out.push_str(&format!(
                        "    sign-in: {}\n",
                        report::printable(&signin_text(s))
                    ));
                }
            }
            for s in &c.unmatched_signins {
                out.push_str(&format!(
                    "unmatched sign-in: {}\n",
                    report::printable(&signin_text(s))
                ));
            }
            out
        }
    }
}

fn process_text(p: &Process) -> String {
    format!(
        "{} user={} pid={} host={} ({} connections)",
        p.image,
        p.user.as_deref().unwrap_or("-"),
        p.pid.map_or("-".into(), |x| x.to_string()),
        p.host.as_deref().unwrap_or("-"),
        p.connections
    )
}

fn signin_text(s: &SignIn) -> String {
    let rank = match (s.rank, s.time_distance_seconds) {
        (Some(r), Some(d)) if s.candidates > 1 => format!(", nearest #{r} at {d:.0} s"),
        _ => String::new(),
    };
    format!(
        "{} {} app={} error={} from {} ({} candidate callers{rank})",
        s.time,
        s.user_principal_name.as_deref().unwrap_or("-"),
        s.app.as_deref().unwrap_or("-"),
        s.error_code.as_deref().unwrap_or("-"),
        s.ip_address.as_deref().unwrap_or("-"),
        s.candidates
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(fields: &[(&str, &str)]) -> Option<ServerAnswer> {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| *f == k)
                .map(|(_, v)| v.to_string())
        };
        server_answer(&get)
    }

    #[test]
    fn the_server_answer_of_an_event_line() {
        assert_eq!(
            answer(&[("negotiated_version", "TLS1.0"), ("outcome", "closed")]),
            Some(ServerAnswer::Accepted)
        );
        assert_eq!(
            answer(&[
                ("outcome", "rejected_by_server"),
                ("server_alert", "protocol_version")
            ]),
            Some(ServerAnswer::Rejected("protocol_version".into()))
        );
        assert_eq!(
            answer(&[("outcome", "upstream_reset"), ("kind", "tls")]),
            Some(ServerAnswer::Rejected("reset".into()))
        );
        assert_eq!(
            answer(&[("outcome", "upstream_reset"), ("kind", "not_tls")]),
            None
        );
        assert_eq!(
            answer(&[("action", "upgraded"), ("negotiated_version", "TLS1.2")]),
            None,
            "an upgrade's answer was to tlspeek's own hello"
        );
        assert_eq!(answer(&[("outcome", "blocked")]), None);
    }
}
