//! The inventory writer: a thread that folds observations into pending rows and writes
//! them in one transaction every `flush_interval` (so a crash loses at most that much).
//! The queue and the pending set are bounded; when the disk is full or the file is
//! unwritable the error is logged and counted (`tlspeek_inventory_errors_total`), pending
//! rows are kept and retried, and the proxy keeps proxying.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::unix_now;

use super::{CallerKey, CallerRow, Observation, Store};
use crate::config::InventoryConfig;
use crate::telemetry::Metrics;

/// Observations queued for the writer at most.
const QUEUE: usize = 16_384;
/// Distinct rows held in memory while the database cannot be written.
const MAX_PENDING: usize = 100_000;
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

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
    path: PathBuf,
}

impl Inventory {
    /// Starts the writer, or returns `None` when the inventory is off (`path = ""`).
    pub fn start(
        cfg: &InventoryConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Option<Inventory>> {
        let Some(path) = cfg.path.clone() else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let mut w = Writer {
            path: path.clone(),
            store: None,
            pending: HashMap::new(),
            pending_agents: HashMap::new(),
            pending_connections: Vec::new(),
            flush_interval: cfg.flush_interval,
            retention: cfg.retention,
            last_retention: None,
            failing: false,
            metrics: metrics.clone(),
        };
        w.open();
        let thread = std::thread::Builder::new()
            .name("tlspeek-inventory".into())
            .spawn(move || w.run(rx))?;
        Ok(Some(Inventory {
            tx,
            thread: Mutex::new(Some(thread)),
            metrics,
            path,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
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
    path: PathBuf,
    store: Option<Store>,
    pending: HashMap<CallerKey, CallerRow>,
    pending_agents: HashMap<(String, String), i64>,
    pending_connections: Vec<super::ConnectionSeen>,
    flush_interval: Duration,
    retention: Duration,
    last_retention: Option<Instant>,
    failing: bool,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn open(&mut self) {
        match Store::open(&self.path) {
            Ok(s) => {
                if self.failing {
                    tracing::info!(path = %self.path.display(), "inventory database writable again");
                }
                self.failing = false;
                self.store = Some(s);
                self.apply_retention();
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) {
        self.metrics.inventory_errors.inc();
        if !self.failing {
            tracing::error!(error = %e, pending_rows = self.pending.len(), "cannot write the inventory; proxying continues, rows are kept in memory and retried");
        }
        self.failing = true;
    }

    fn observe(&mut self, o: &Observation) {
        if self.pending_connections.len() < MAX_PENDING {
            self.pending_connections.push(super::ConnectionSeen::of(o));
        } else {
            self.metrics.inventory_dropped.inc();
        }
        let row = CallerRow::from_observation(o);
        let full = self.pending.len() >= MAX_PENDING;
        match self.pending.entry(row.key()) {
            Entry::Occupied(mut r) => r.get_mut().merge(&row),
            Entry::Vacant(_) if full => self.metrics.inventory_dropped.inc(),
            Entry::Vacant(v) => {
                v.insert(row);
            }
        }
    }

    fn agent(&mut self, ip: String, ua: String, at: i64) {
        let full = self.pending_agents.len() >= MAX_PENDING_AGENTS;
        match self.pending_agents.entry((ip, ua)) {
            Entry::Occupied(mut e) => *e.get_mut() = (*e.get()).max(at),
            Entry::Vacant(_) if full => self.metrics.inventory_dropped.inc(),
            Entry::Vacant(v) => {
                v.insert(at);
            }
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty()
            && self.pending_agents.is_empty()
            && self.pending_connections.is_empty()
        {
            return;
        }
        if self.store.is_none() {
            self.open();
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let agents = self
            .pending_agents
            .iter()
            .map(|((ip, ua), at)| (ip.as_str(), ua.as_str(), *at));
        // User-Agents first: their upsert is idempotent, so a failure between the two
        // writes never counts a connection twice when the rows are retried.
        let written = store
            .apply_agents(agents)
            .and_then(|_| store.apply(self.pending.values()));
        // The connections kept for joins: written on their own, so that a failure there
        // never makes the rows count twice.
        let connections = written.and_then(|_| {
            self.pending.clear();
            self.pending_agents.clear();
            store.apply_connections(self.pending_connections.iter())
        });
        match connections {
            Ok(dropped) => {
                self.pending_connections.clear();
                self.metrics.inventory_dropped.inc_by(dropped as u64);
                if self.failing {
                    tracing::info!(path = %self.path.display(), "inventory database writable again");
                    self.failing = false;
                }
            }
            Err(e) => {
                // Reopen next time: the file may have been replaced or the disk remounted.
                self.store = None;
                self.failed(&e);
            }
        }
    }

    fn apply_retention(&mut self) {
        let Some(store) = &self.store else { return };
        let keep = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        match store.prune(unix_now().saturating_sub(keep)) {
            Ok(n) if n > 0 => tracing::info!(rows = n, "inventory rows past retention removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "inventory retention failed"),
        }
        self.last_retention = Some(Instant::now());
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
                            self.flush();
                            return;
                        }
                        next = rx.try_recv().ok();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_flush {
                self.flush();
                if self
                    .last_retention
                    .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
                {
                    self.apply_retention();
                }
                next_flush = Instant::now() + self.flush_interval;
            }
        }
    }
}
