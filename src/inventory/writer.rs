//! The inventory writer: a thread that folds observations into pending rows and writes
//! them as one batch every `flush_interval` (so a crash loses at most that much), into a
//! SQLite file or a fleet's shared PostgreSQL database.
//!
//! The queue and the pending rows are bounded (`max_pending` distinct rows; drops are
//! counted). When a write fails (disk full, file unwritable, database away) the error is
//! logged and counted, the batch is kept as it was and retried with a backoff of at most
//! 2 s, new rows gather beside it, and the proxy keeps proxying. A batch keeps its
//! sequence number across retries, so a shared database that did commit it (the
//! acknowledgement was lost) recognises it and does not count it twice.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::unix_now;

use super::{Batch, CallerKey, CallerRow, Db, Location, Observation, StoreError};
use crate::config::InventoryConfig;
use crate::telemetry::Metrics;

/// Observations queued for the writer at most.
const QUEUE: usize = 16_384;
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// The longest wait between two attempts to write while the database fails.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long `start` waits for a shared database's first answer.
const FIRST_CONNECT: Duration = Duration::from_secs(15);

enum Msg {
    Observe(Box<Observation>),
    /// A User-Agent a source sent (`source_ip`, User-Agent, Unix seconds).
    Agent(String, String, i64),
    Close,
}

/// Distinct (source, User-Agent) pairs held in memory between flushes at most.
const MAX_PENDING_AGENTS: usize = 10_000;

/// Handle to the inventory writer.
pub struct Inventory {
    tx: SyncSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    location: Location,
}

/// This process's name in a shared database's batch bookkeeping: host, pid and start
/// time, so a restarted instance never reuses a sequence of its predecessor.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{}/{}/{started}", host.trim(), std::process::id())
}

impl Inventory {
    /// Starts the writer, or returns `None` when the inventory is off (`path = ""`). A
    /// shared database is tried first: a refusal (bad password, no such database, a schema
    /// newer than this tlspeek) is an error here; a database that is away is retried.
    pub fn start(
        cfg: &InventoryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Inventory>, StoreError> {
        let Some(location) = cfg.location() else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let mut w = Writer {
            location: location.clone(),
            db: None,
            pending: HashMap::new(),
            pending_agents: HashMap::new(),
            pending_connections: Vec::new(),
            inflight: None,
            instance: instance_id(),
            opened: false,
            seq: 0,
            max_pending: cfg.max_pending,
            flush_interval: cfg.flush_interval,
            retention: cfg.retention,
            last_retention: None,
            failing: false,
            backoff: FIRST_BACKOFF,
            oldest_unwritten: None,
            metrics: metrics.clone(),
        };
        let (first_tx, first_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("tlspeek-inventory".into())
            .spawn(move || {
                let first = w.open();
                let _ = first_tx.send(first);
                w.run(rx)
            })
            .map_err(|source| StoreError::Create {
                path: location.to_string(),
                source,
            })?;
        let inventory = Inventory {
            tx,
            thread: Mutex::new(Some(thread)),
            metrics,
            location,
        };
        if let Location::Postgres { .. } = inventory.location {
            match first_rx.recv_timeout(FIRST_CONNECT) {
                Ok(Err(e)) if !e.is_transient() => {
                    inventory.close(Duration::from_secs(1));
                    return Err(e);
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(url = %inventory.location, "the inventory database has not answered yet; rows are kept and retried")
                }
            }
        }
        Ok(Some(inventory))
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Queues an observation; never blocks (a full queue drops it and counts it).
    pub fn record(&self, o: Observation) {
        if self.tx.try_send(Msg::Observe(Box::new(o))).is_err() {
            self.metrics.inventory_dropped.inc();
        }
    }

    /// Queues a User-Agent the source sent in the clear (kept cleaned and capped); never
    /// blocks.
    pub fn record_agent(&self, source_ip: &str, user_agent: &str) {
        let ua = super::agents::clean(user_agent);
        if ua.is_empty() {
            return;
        }
        if self
            .tx
            .try_send(Msg::Agent(source_ip.to_string(), ua, unix_now()))
            .is_err()
        {
            self.metrics.inventory_dropped.inc();
        }
    }

    /// Writes what is pending and stops the writer (bounded by `timeout`).
    pub fn close(&self, timeout: Duration) {
        if !crate::writer_thread::stop(&self.tx, Msg::Close, &self.thread, timeout) {
            tracing::warn!("inventory writer did not finish in time; the last updates may be lost");
        }
    }
}

struct Writer {
    location: Location,
    db: Option<Db>,
    pending: HashMap<CallerKey, CallerRow>,
    pending_agents: HashMap<(String, String), i64>,
    pending_connections: Vec<super::ConnectionSeen>,
    /// The batch being written: retried as it is until a write succeeds.
    inflight: Option<Batch>,
    instance: String,
    /// Opened once already (a newer schema met later is written on).
    opened: bool,
    /// The sequence number of `inflight` (or of the last batch written).
    seq: i64,
    max_pending: usize,
    flush_interval: Duration,
    retention: Duration,
    last_retention: Option<Instant>,
    failing: bool,
    backoff: Duration,
    /// When the oldest row not yet written arrived.
    oldest_unwritten: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn open(&mut self) -> Result<(), StoreError> {
        // Once started, a writer writes on across another instance's upgrade.
        match Db::open_writer(&self.location, self.opened) {
            Ok(db) => {
                self.db = Some(db);
                self.opened = true;
                if self.last_retention.is_none() {
                    self.apply_retention();
                }
                Ok(())
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }

    fn failed(&mut self, e: &StoreError) {
        self.metrics.inventory_errors.inc();
        if !self.failing {
            tracing::error!(error = %e, pending_rows = self.rows_held(), "cannot write the inventory; proxying continues, rows are kept in memory and retried");
        }
        self.failing = true;
    }

    fn rows_held(&self) -> usize {
        self.pending.len() + self.inflight.as_ref().map_or(0, |b| b.rows.len())
    }

    fn observe(&mut self, o: &Observation) {
        self.oldest_unwritten.get_or_insert_with(Instant::now);
        if self.pending_connections.len() < self.max_pending {
            self.pending_connections.push(super::ConnectionSeen::of(o));
        } else {
            self.metrics.inventory_dropped.inc();
        }
        let row = CallerRow::from_observation(o);
        let full = self.rows_held() >= self.max_pending;
        match self.pending.entry(row.key()) {
            Entry::Occupied(mut r) => r.get_mut().merge(&row),
            Entry::Vacant(_) if full => self.metrics.inventory_dropped.inc(),
            Entry::Vacant(v) => {
                v.insert(row);
            }
        }
    }

    fn agent(&mut self, ip: String, ua: String, at: i64) {
        self.oldest_unwritten.get_or_insert_with(Instant::now);
        let full = self.pending_agents.len() >= MAX_PENDING_AGENTS;
        match self.pending_agents.entry((ip, ua)) {
            Entry::Occupied(mut e) => *e.get_mut() = (*e.get()).max(at),
            Entry::Vacant(_) if full => self.metrics.inventory_dropped.inc(),
            Entry::Vacant(v) => {
                v.insert(at);
            }
        }
    }

    /// The pending rows as the next batch (a new sequence number).
    fn take_pending(&mut self) -> Option<Batch> {
        let batch = Batch {
            rows: self.pending.drain().map(|(_, r)| r).collect(),
            agents: self
                .pending_agents
                .drain()
                .map(|((ip, ua), at)| (ip, ua, at))
                .collect(),
            connections: std::mem::take(&mut self.pending_connections),
        };
        if batch.is_empty() {
            return None;
        }
        self.seq += 1;
        Some(batch)
    }

    /// Writes the batch in flight, then what is pending. False when a write failed (the
    /// batch stays in flight).
    fn flush(&mut self) -> bool {
        loop {
            if self.inflight.is_none() {
                self.inflight = self.take_pending();
            }
            if self.inflight.is_none() {
                self.oldest_unwritten = None;
                return true;
            }
            if self.db.is_none() && self.open().is_err() {
                return false;
            }
            let (Some(db), Some(batch)) = (self.db.as_mut(), self.inflight.as_ref()) else {
                return false;
            };
            match db.write(&self.instance, self.seq, batch, unix_now()) {
                Ok(applied) => {
                    if !applied {
                        tracing::info!(
                            seq = self.seq,
                            "inventory batch was already written (its acknowledgement was lost); not counted again"
                        );
                    }
                    if self.failing {
                        tracing::info!(location = %self.location, "inventory written again; nothing held is lost");
                        self.failing = false;
                    }
                    self.inflight = None;
                    self.backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    // Reopen next time: the file may have been replaced, the server restarted.
                    self.db = None;
                    self.failed(&e);
                    return false;
                }
            }
        }
    }

    fn apply_retention(&mut self) {
        let Some(db) = self.db.as_mut() else { return };
        let keep = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        match db.prune(unix_now().saturating_sub(keep)) {
            Ok(Some(n)) if n > 0 => {
                tracing::info!(rows = n, "inventory rows past retention removed")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "inventory retention failed"),
        }
        self.last_retention = Some(Instant::now());
    }

    fn gauges(&self) {
        self.metrics
            .inventory_pending
            .set(i64::try_from(self.rows_held()).unwrap_or(i64::MAX));
        let behind = self.oldest_unwritten.map_or(0, |t| {
            i64::try_from(t.elapsed().as_secs()).unwrap_or(i64::MAX)
        });
        self.metrics.inventory_behind.set(behind);
    }

    /// Takes one message; false on `Close`.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Observe(o) => self.observe(&o),
            Msg::Agent(ip, ua, at) => self.agent(ip, ua, at),
            Msg::Close => return false,
        }
        true
    }

    fn finish(&mut self) {
        if !self.flush() {
            tracing::error!(
                rows = self.rows_held(),
                "inventory rows not written at shutdown"
            );
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let mut next_flush = Instant::now() + self.flush_interval;
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    // Let other connections' observations gather (see `LINGER`), then
                    // take them all.
                    std::thread::sleep(crate::writer_thread::LINGER.min(wait));
                    let mut next = Some(msg);
                    while let Some(msg) = next.take() {
                        if !self.handle(msg) {
                            self.finish();
                            return;
                        }
                        next = rx.try_recv().ok();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_flush {
                if self.flush() {
                    if self
                        .last_retention
                        .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
                    {
                        self.apply_retention();
                    }
                    next_flush = Instant::now() + self.flush_interval;
                } else {
                    next_flush = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
            self.gauges();
        }
    }
}
