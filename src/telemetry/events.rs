//! The event log: one JSON line per connection, written by a dedicated thread so a slow or
//! full disk never stalls a connection. The queue is bounded: when the writer falls behind,
//! lines are dropped and counted, never buffered without limit. Write errors (disk full,
//! file removed, permissions) are counted and logged, and the file is reopened at most once
//! a second until writing works again. `reopen()` (SIGUSR1) makes logrotate's move-and-
//! signal work: new lines go to a new file at the configured path.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::EventsTarget;

use super::metrics::Metrics;
use super::record::ConnectionRecord;

/// Lines queued for the writer at most.
const QUEUE: usize = 65_536;

enum Msg {
    Line(String),
    Reopen,
    /// Write what is queued before this, flush, and stop.
    Close,
}

pub struct EventLog {
    tx: SyncSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl EventLog {
    pub fn start(target: &EventsTarget, metrics: Arc<Metrics>) -> io::Result<EventLog> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let mut writer = Writer {
            target: target.clone(),
            out: None,
            failing_since: None,
            last_open_attempt: None,
            metrics: metrics.clone(),
        };
        writer.open();
        let thread = std::thread::Builder::new()
            .name("tlspeek-events".into())
            .spawn(move || writer.run(rx))?;
        Ok(EventLog {
            tx,
            thread: Mutex::new(Some(thread)),
            metrics,
        })
    }

    /// Queues the record's line; never blocks.
    pub fn write(&self, record: &ConnectionRecord) {
        match self.tx.try_send(Msg::Line(record.to_json())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.events_dropped.inc();
            }
        }
    }

    /// Reopens the file (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Msg::Reopen);
    }

    /// Writes what is queued, flushes and stops the writer (bounded by `timeout`). Lines
    /// written after this are counted as dropped.
    pub fn close(&self, timeout: Duration) {
        if !crate::writer_thread::stop(&self.tx, Msg::Close, &self.thread, timeout) {
            tracing::warn!("event log writer did not finish in time; some lines may be lost");
        }
    }
}

enum Out {
    Stdout(io::Stdout),
    File(BufWriter<File>),
}

impl Out {
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        match self {
            Out::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(line.as_bytes())?;
                l.write_all(b"\n")
            }
            Out::File(f) => {
                f.write_all(line.as_bytes())?;
                f.write_all(b"\n")
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Stdout(s) => s.flush(),
            Out::File(f) => f.flush(),
        }
    }
}

struct Writer {
    target: EventsTarget,
    out: Option<Out>,
    failing_since: Option<Instant>,
    last_open_attempt: Option<Instant>,
    metrics: Arc<Metrics>,
}

/// Opens (creating with mode 0640) an append-only event file.
fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl Writer {
    fn open(&mut self) {
        self.last_open_attempt = Some(Instant::now());
        self.out = match &self.target {
            EventsTarget::Stdout => Some(Out::Stdout(io::stdout())),
            EventsTarget::File(p) => match open_file(p) {
                Ok(f) => Some(Out::File(BufWriter::with_capacity(64 * 1024, f))),
                Err(e) => {
                    self.report_error(p.clone(), &e);
                    None
                }
            },
        };
    }

    fn report_error(&mut self, path: PathBuf, e: &io::Error) {
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            tracing::error!(path = %path.display(), error = %e, "cannot write the event log; proxying continues, lines are counted in tlspeek_event_log_errors_total");
        }
    }

    fn path(&self) -> PathBuf {
        match &self.target {
            EventsTarget::Stdout => PathBuf::from("-"),
            EventsTarget::File(p) => p.clone(),
        }
    }

    fn write(&mut self, line: &str) {
        if self.out.is_none()
            && self
                .last_open_attempt
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.open();
        }
        let result = match &mut self.out {
            Some(out) => out.write_line(line),
            None => Err(io::Error::other("event log is not open")),
        };
        match result {
            Ok(()) => {
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(path = %self.path().display(), failed_for_s = since.elapsed().as_secs(), "event log writable again");
                }
            }
            Err(e) => {
                self.metrics.event_log_errors.inc();
                let path = self.path();
                self.report_error(path, &e);
                // Drop the writer (and what it buffered) so the next line reopens.
                self.out = None;
            }
        }
    }

    fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                self.metrics.event_log_errors.inc();
                let path = self.path();
                self.report_error(path, &e);
                self.out = None;
            }
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            // Let the lines of other connections gather: one wake-up and one write for
            // all of them, not one per connection (a sender wakes this thread only while
            // it waits in `recv`).
            std::thread::sleep(crate::writer_thread::LINGER);
            let mut go_on = self.handle(msg);
            // Write whatever else is queued, then flush once.
            while go_on {
                match rx.try_recv() {
                    Ok(m) => go_on = self.handle(m),
                    Err(_) => break,
                }
            }
            self.flush();
            if !go_on {
                return;
            }
        }
        self.flush();
    }

    /// Returns false when the writer should stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Line(l) => self.write(&l),
            Msg::Reopen => {
                self.flush();
                self.open();
                tracing::info!(path = %self.path().display(), "event log reopened");
            }
            Msg::Close => return false,
        }
        true
    }
}
