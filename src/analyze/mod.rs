//! `tlspeek analyze`: the same event lines, inventory and report as the proxy, from packet
//! captures (pcap, pcapng) instead of live traffic.
//!
//! The pipeline is one pass over each file in constant memory: [`capture`] reads records
//! through one bounded buffer and steps over damage, [`link`] decodes each frame down to
//! TCP, [`flows`] keeps a bounded table of connections and reassembles the first bytes of
//! each direction ([`reassembly`]) until the pure hello core has the ClientHello and the
//! ServerHello, then only counts bytes; [`record`] turns each finished connection into the
//! proxy's `ConnectionRecord` (`mode = "pcap"`) and inventory `Observation`. This module
//! drives it: files in order (one flow table across them, so a capture rotated into
//! several files keeps its connections), filters, the event file, the inventory (in
//! memory, optionally merged into an SQLite file), progress and the summary.

pub mod capture;
pub mod flows;
pub mod link;
pub mod progress;
pub mod reassembly;
pub mod record;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use capture::{CaptureError, CaptureReader, Next, Packet};
use flows::{FlowTable, Limits};
use progress::{Counts, Progress};
pub use record::Connection;

use crate::config::Config;
use crate::inventory::report::{self, Format};
use crate::inventory::{CallerKey, CallerRow, Db};
use crate::names::{HostName, HostPattern};

/// Inventory rows held in memory at most; past nine tenths of it only legacy callers get
/// new rows, so a legacy caller is the last thing to be lost.
pub const MAX_ROWS: usize = 200_000;
/// How often (in packets) the clock is read for progress.
const TICK_EVERY: u64 = 4096;

/// Counters of frames that carried no TCP segment, and of damage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub tcp_segments: u64,
    pub unknown_link: u64,
    pub not_ip: u64,
    pub not_tcp: u64,
    pub fragments: u64,
    pub malformed: u64,
    /// Damaged regions stepped over, and their bytes.
    pub damaged: u64,
    pub damaged_bytes: u64,
    /// Files (or sections) cut off in the middle of a record.
    pub cut_off: u64,
}

/// The packet-level analysis: frames in, finished connections out. Files, filters and
/// outputs are the caller's.
pub struct Analyzer<'c> {
    cfg: &'c Config,
    table: FlowTable,
    pub stats: Stats,
    /// The plain-HTTP User-Agents each source sent (for `source_os` / `source_runtime`).
    pub agents: crate::inventory::agents::AgentBook,
}

impl<'c> Analyzer<'c> {
    pub fn new(cfg: &'c Config, limits: Limits) -> Analyzer<'c> {
        Analyzer {
            cfg,
            table: FlowTable::new(limits).with_starttls(cfg.starttls.clone()),
            stats: Stats::default(),
            agents: Default::default(),
        }
    }

    pub fn table_stats(&self) -> flows::TableStats {
        self.table.stats
    }

    pub fn flows_open(&self) -> usize {
        self.table.len()
    }

    /// One captured frame.
    pub fn packet(&mut self, p: &Packet<'_>) {
        self.stats.packets += 1;
        match link::decode(p.linktype, p.data) {
            Ok(seg) => {
                self.stats.tcp_segments += 1;
                self.table.segment(&seg, p.ts);
            }
            Err(link::Skip::LinkType) => self.stats.unknown_link += 1,
            Err(link::Skip::NotIp) => self.stats.not_ip += 1,
            Err(link::Skip::NotTcp) => self.stats.not_tcp += 1,
            Err(link::Skip::Fragment) => self.stats.fragments += 1,
            Err(link::Skip::Malformed) => self.stats.malformed += 1,
        }
    }

    /// Hands over the connections that ended so far.
    pub fn drain(&mut self, out: &mut impl FnMut(Connection)) {
        for flow in self.table.ended.drain(..) {
            if let (Some(ua), Some((client, _))) = (&flow.user_agent, flow.client_server()) {
                let ip = client.socket_addr().ip().to_canonical().to_string();
                self.agents
                    .add(&ip, ua, flow.first_ts.div_euclid(1_000_000_000));
            }
            if let Some(c) = record::connection(&flow, self.cfg) {
                out(c);
            }
        }
    }

    /// Ends every open flow (the input is over) and hands over their connections.
    pub fn finish(&mut self, out: &mut impl FnMut(Connection)) {
        self.table.finish_all();
        self.drain(out);
    }
}

/// What one read of a capture met besides packets.
#[derive(Debug)]
pub enum Damage {
    Damaged {
        offset: u64,
        skipped: u64,
        reason: String,
    },
    CutOff {
        offset: u64,
        reason: String,
    },
}

/// Feeds one capture to `an`; `damage` hears of every damaged region, `tick` is called
/// every few thousand packets with the bytes read so far. Returns the bytes read.
pub fn feed<R: Read>(
    reader: &mut CaptureReader<R>,
    an: &mut Analyzer<'_>,
    out: &mut impl FnMut(Connection),
    damage: &mut impl FnMut(Damage),
    tick: &mut impl FnMut(&Analyzer<'_>, u64),
) -> io::Result<u64> {
    loop {
        match reader.next_record()? {
            Next::Packet(p) => {
                an.packet(&p);
                an.drain(out);
                if an.stats.packets % TICK_EVERY == 0 {
                    let pos = reader.position();
                    tick(an, pos);
                }
            }
            Next::Damaged {
                offset,
                skipped,
                reason,
            } => {
                an.stats.damaged += 1;
                an.stats.damaged_bytes += skipped;
                damage(Damage::Damaged {
                    offset,
                    skipped,
                    reason,
                });
            }
            Next::CutOff { offset, reason } => {
                an.stats.cut_off += 1;
                damage(Damage::CutOff { offset, reason });
            }
            Next::End => return Ok(reader.position()),
        }
    }
}

/// Analyses a capture held in memory (tests, fuzzing): every connection, and the stats.
pub fn analyze_bytes(
    data: &[u8],
    cfg: &Config,
    limits: Limits,
) -> Result<(Vec<Connection>, Stats), CaptureError> {
    let mut reader = CaptureReader::new(data)?;
    let mut an = Analyzer::new(cfg, limits);
    let mut found = Vec::new();
    let mut out = |c: Connection| found.push(c);
    feed(&mut reader, &mut an, &mut out, &mut |_| {}, &mut |_, _| {})?;
    an.finish(&mut out);
    Ok((found, an.stats))
}

/// Which connections count (`--destination`, `--legacy-only`, `--since`, `--until`).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub destination: Option<Destination>,
    pub legacy_only: bool,
    /// Connection start, Unix seconds, inclusive.
    pub since: Option<i64>,
    /// Connection start, Unix seconds, exclusive.
    pub until: Option<i64>,
}

/// A destination filter: a host pattern (`login.microsoftonline.com`, `*.example.com`)
/// matched against the connection's name, or an address matched against the server's IP.
#[derive(Clone, Debug)]
pub enum Destination {
    Host(HostPattern),
    Address(String),
}

impl Destination {
    pub fn parse(raw: &str) -> Destination {
        let raw = raw.trim();
        if let Ok(ip) = raw.parse::<std::net::IpAddr>() {
            return Destination::Address(ip.to_canonical().to_string());
        }
        match HostPattern::parse(raw) {
            Ok(p) => Destination::Host(p),
            Err(_) => Destination::Address(raw.to_ascii_lowercase()),
        }
    }

    fn matches(&self, c: &Connection) -> bool {
        let target = c.record.target_host.as_deref().unwrap_or_default();
        match self {
            Destination::Host(p) => HostName::parse(target).is_some_and(|h| p.matches(&h)),
            Destination::Address(a) => {
                target == a || c.record.upstream_ip.as_deref() == Some(a.as_str())
            }
        }
    }
}

impl Filter {
    pub fn keeps(&self, c: &Connection) -> bool {
        (!self.legacy_only || c.record.legacy)
            && self.since.is_none_or(|s| c.start_secs >= s)
            && self.until.is_none_or(|u| c.start_secs < u)
            && self.destination.as_ref().is_none_or(|d| d.matches(c))
    }
}

/// Where event lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsTo {
    Stdout,
    File(PathBuf),
}

/// Everything `tlspeek analyze` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Capture files; `-` is standard input.
    pub files: Vec<PathBuf>,
    pub events: Option<EventsTo>,
    /// An inventory file to merge the results into.
    pub db: Option<crate::inventory::Location>,
    pub filter: Filter,
    pub limits: Limits,
    pub quiet: bool,
    pub progress_interval: Duration,
    /// Source names (`[[sources]]`) and the ports whose hello-less connections count.
    pub config: Config,
}

/// The results of a run.
#[derive(Debug, Default)]
pub struct Summary {
    /// Inventory rows of the connections kept, most recently seen first.
    pub rows: Vec<CallerRow>,
    pub connections: u64,
    pub legacy_connections: u64,
    pub stats: Stats,
    pub table: flows::TableStats,
    pub bytes: u64,
    /// Files that could not be read at all, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    pub rows_dropped: u64,
}

impl Summary {
    /// The report, as `tlspeek report` prints it: legacy callers and callers of retired
    /// endpoints, or every caller with `all`; a line saying so when there is none (on
    /// stdout for a table, else stderr).
    pub fn print_report(&self, format: Format, all: bool) {
        let rows: Vec<CallerRow> = self
            .rows
            .iter()
            .filter(|r| all || r.legacy || r.retired.is_some())
            .cloned()
            .collect();
        let what = if all { "callers" } else { "legacy callers" };
        let empty_line = rows.is_empty().then(|| {
            format!(
                "no {what} in the capture ({} connections analysed)",
                self.connections
            )
        });
        report::print(&rows, format, empty_line.as_deref());
    }
}

/// Errors that stop the whole run (a single unreadable file does not).
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("cannot write the event lines to {path}")]
    Events { path: String, source: io::Error },
    #[error(transparent)]
    Inventory(#[from] crate::inventory::StoreError),
}

impl AnalyzeError {
    /// The reader of the event lines went away (`tlspeek analyze --events - | head`): not
    /// worth an error message, as with any Unix filter.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, AnalyzeError::Events { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// The inventory of a run, in memory: rows merged as the proxy's writer merges them.
#[derive(Default)]
struct Rows {
    rows: HashMap<CallerKey, CallerRow>,
    dropped: u64,
    /// The legacy connections, for `tlspeek correlate` (written with `--db`).
    connections: Vec<crate::inventory::ConnectionSeen>,
}

impl Rows {
    fn add(&mut self, c: &Connection) {
        let Some(o) = &c.observation else { return };
        if o.legacy && self.connections.len() < crate::inventory::store::MAX_CONNECTIONS {
            self.connections
                .push(crate::inventory::ConnectionSeen::of(o));
        }
        let row = CallerRow::from_observation(o);
        let key = row.key();
        if let Some(r) = self.rows.get_mut(&key) {
            r.merge(&row);
            return;
        }
        let room = if row.legacy {
            MAX_ROWS
        } else {
            MAX_ROWS / 10 * 9
        };
        if self.rows.len() >= room {
            self.dropped += 1;
            return;
        }
        self.rows.insert(key, row);
    }

    fn sorted(self) -> Vec<CallerRow> {
        let mut rows: Vec<CallerRow> = self.rows.into_values().collect();
        CallerRow::sort_for_report(&mut rows);
        rows
    }
}

fn open_input(path: &Path) -> io::Result<Box<dyn Read>> {
    if path == Path::new("-") {
        Ok(Box::new(io::stdin().lock()))
    } else {
        Ok(Box::new(File::open(path)?))
    }
}

/// Peak resident memory of this process (VmHWM), in bytes, where /proc tells it.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Runs `tlspeek analyze`: every file in order, then the inventory file, if any. A file
/// that cannot be opened or is not a capture is reported and listed in
/// [`Summary::failed`]; the others are still analysed.
pub fn run(opts: &Options) -> Result<Summary, AnalyzeError> {
    let progress = Progress::new(opts.quiet, input_size(&opts.files), opts.progress_interval);
    let (mut events, events_path) = open_events(opts)?;
    let mut an = Analyzer::new(&opts.config, opts.limits);
    let mut rows = Rows::default();
    let mut failed = Vec::new();
    let write_error: RefCell<Option<io::Error>> = RefCell::new(None);
    let mut done_before = 0u64;
    let connections = Cell::new(0u64);
    let legacy = Cell::new(0u64);

    let mut out = |c: Connection| {
        if !opts.filter.keeps(&c) {
            return;
        }
        connections.set(connections.get() + 1);
        legacy.set(legacy.get() + u64::from(c.record.legacy));
        if let Some(w) = events.as_mut() {
            let mut failed = write_error.borrow_mut();
            if failed.is_none() {
                if let Err(e) = serde_json::to_writer(&mut *w, &c.record)
                    .map_err(io::Error::from)
                    .and_then(|()| w.write_all(b"\n"))
                {
                    *failed = Some(e);
                }
            }
        }
        rows.add(&c);
    };

    for path in &opts.files {
        let read = read_file(
            path,
            &mut an,
            &mut out,
            &progress,
            done_before,
            &connections,
        );
        match read {
            Ok(n) => done_before += n,
            Err((n, e)) => {
                done_before += n;
                failed.push((path.clone(), e));
            }
        }
        if write_error.borrow().is_some() {
            break;
        }
    }
    an.finish(&mut out);
    let mut write_error = write_error.into_inner();
    if let Some(w) = events.as_mut() {
        if let Err(e) = w.flush() {
            write_error.get_or_insert(e);
        }
    }
    if let Some(e) = write_error {
        return Err(AnalyzeError::Events {
            path: events_path,
            source: e,
        });
    }
    let mut summary = Summary {
        connections: connections.get(),
        legacy_connections: legacy.get(),
        failed,
        ..Summary::default()
    };
    summary.rows_dropped = rows.dropped;
    let connections = std::mem::take(&mut rows.connections);
    summary.rows = rows.sorted();
    for r in &mut summary.rows {
        r.mark_retired(&opts.config);
    }
    keep_rows(opts, &an.agents, &connections, &mut summary.rows)?;
    summary.stats = an.stats;
    summary.table = an.table_stats();
    summary.bytes = done_before;
    show_done(&progress, &summary);
    Ok(summary)
}

/// Writes the rows and the sources' User-Agents to `--db`, then describes each row's
/// source by its User-Agents (OS, runtime, the fix refined).
fn keep_rows(
    opts: &Options,
    agents: &crate::inventory::agents::AgentBook,
    connections: &[crate::inventory::ConnectionSeen],
    rows: &mut [CallerRow],
) -> Result<(), AnalyzeError> {
    if let Some(db) = &opts.db {
        let batch = crate::inventory::Batch {
            rows: rows.to_vec(),
            agents: agents
                .all()
                .map(|(ip, ua, at)| (ip.to_string(), ua.to_string(), at))
                .collect(),
            connections: connections.to_vec(),
        };
        Db::open(db)?.apply(&batch)?;
    }
    for row in rows.iter_mut() {
        let seen = agents.of(&row.source_ip).to_vec();
        crate::inventory::agents::describe(row, &seen);
    }
    Ok(())
}

/// The inputs' total size, when every one is a file (for the progress line's percentage).
fn input_size(files: &[PathBuf]) -> Option<u64> {
    files
        .iter()
        .map(|f| {
            if f == Path::new("-") {
                None
            } else {
                std::fs::metadata(f).ok().map(|m| m.len())
            }
        })
        .sum::<Option<u64>>()
}

/// Where the event lines go: none without `--events`.
type EventSink = Option<Box<dyn Write>>;

/// The event lines' sink, and its name for errors.
fn open_events(opts: &Options) -> Result<(EventSink, String), AnalyzeError> {
    let events: EventSink = match &opts.events {
        None => None,
        Some(EventsTo::Stdout) => Some(Box::new(BufWriter::new(io::stdout().lock()))),
        Some(EventsTo::File(p)) => Some(Box::new(BufWriter::with_capacity(
            256 * 1024,
            File::create(p).map_err(|source| AnalyzeError::Events {
                path: p.display().to_string(),
                source,
            })?,
        ))),
    };
    let path = match &opts.events {
        Some(EventsTo::File(p)) => p.display().to_string(),
        _ => "stdout".to_string(),
    };
    Ok((events, path))
}

/// Reads one capture into the analyzer, warning about damage on the way. Returns the
/// bytes read, or (the bytes read, why it failed).
fn read_file(
    path: &Path,
    an: &mut Analyzer<'_>,
    out: &mut impl FnMut(Connection),
    progress: &Progress,
    done_before: u64,
    connections: &Cell<u64>,
) -> Result<u64, (u64, String)> {
    let shown = path.display().to_string();
    let mut reader = match open_input(path)
        .map_err(CaptureError::from)
        .and_then(CaptureReader::new)
    {
        Ok(r) => r,
        Err(e) => {
            progress.warn(&format!("tlspeek: {shown}: {e}"));
            return Err((0, e.to_string()));
        }
    };
    let mut damage = |d: Damage| match d {
        Damage::Damaged {
            offset,
            skipped,
            reason,
        } => progress.warn(&format!(
            "tlspeek: {shown}: damaged data at offset {offset} ({reason}): skipped {skipped} bytes"
        )),
        Damage::CutOff { offset, reason } => progress.warn(&format!(
            "tlspeek: {shown}: the capture is cut off at offset {offset} ({reason})"
        )),
    };
    let counts = |a: &Analyzer<'_>, pos: u64| {
        let t = a.table_stats();
        Counts {
            bytes: done_before + pos,
            packets: a.stats.packets,
            flows: t.flows,
            hellos: t.client_hellos,
            connections: connections.get(),
        }
    };
    let mut tick = |a: &Analyzer<'_>, pos: u64| progress.tick(&counts(a, pos));
    let result = feed(&mut reader, an, out, &mut damage, &mut tick);
    progress.show(&counts(an, reader.position()));
    result.map_err(|e| {
        let msg = format!("read error at offset {}: {e}", reader.position());
        progress.warn(&format!("tlspeek: {shown}: {msg}"));
        (reader.position(), msg)
    })
}

/// The progress line's last word: totals, legacy, rows not kept, peak memory.
fn show_done(progress: &Progress, summary: &Summary) {
    let counts = Counts {
        bytes: summary.bytes,
        packets: summary.stats.packets,
        flows: summary.table.flows,
        hellos: summary.table.client_hellos,
        connections: summary.connections,
    };
    let mut extra = format!(" ({} legacy)", summary.legacy_connections);
    if summary.rows_dropped > 0 {
        extra.push_str(&format!(
            "; {} inventory rows not kept (more than {MAX_ROWS} callers)",
            summary.rows_dropped
        ));
    }
    if let Some(peak) = peak_rss() {
        extra.push_str(&format!(
            "; peak memory {:.1} MiB",
            peak as f64 / (1024.0 * 1024.0)
        ));
    }
    progress.finish(&counts, &extra);
}
