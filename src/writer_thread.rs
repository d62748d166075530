//! The shutdown of a writer thread fed by a bounded queue (the event log, the inventory):
//! queue its close message behind what is already queued, then wait — bounded — for it to
//! finish writing.

use std::sync::Mutex;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a writer thread, woken by a message, waits for more before writing: a
/// connection's line or row is late by at most this, and a busy proxy wakes its writers
/// about 1/LINGER times a second instead of once per connection.
pub const LINGER: Duration = Duration::from_millis(5);

/// Sends `close` (retrying while the queue is full) and waits for `thread` to end, all
/// within `timeout`. Returns false when the thread did not finish in time.
pub fn stop<M>(
    tx: &SyncSender<M>,
    close: M,
    thread: &Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
) -> bool {
    let end = Instant::now() + timeout;
    let mut close = close;
    while let Err(TrySendError::Full(back)) = tx.try_send(close) {
        if Instant::now() >= end {
            break;
        }
        close = back;
        std::thread::sleep(Duration::from_millis(5));
    }
    let Some(t) = thread.lock().ok().and_then(|mut t| t.take()) else {
        return true;
    };
    while !t.is_finished() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    if t.is_finished() {
        let _ = t.join();
        true
    } else {
        false
    }
}
