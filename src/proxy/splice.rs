//! Splicing a tunnel: both directions at once, bytes unchanged.
//!
//! - End of stream on one side is passed on as a half-close (`shutdown(SHUT_WR)`) to the
//!   other, so a client that closes its write side still gets the whole response.
//! - A reset (or any read/write error) on one side ends the tunnel and is passed on as a
//!   reset to the other side, so a cut-off response never looks complete.
//! - `idle_timeout` ends a tunnel with no byte in either direction.
//!
//! No buffer is held while a tunnel is idle: a pump waits for readiness, then borrows a
//! buffer from a shared pool for one read-and-write.

use std::io;
use std::net::Shutdown;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Which end of a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// A pump stopped because `culprit` failed (reset, or another I/O error).
#[derive(Debug)]
pub struct PumpError {
    pub culprit: Side,
    pub error: io::Error,
}

/// How a splice ended.
#[derive(Debug)]
pub enum SpliceEnd {
    /// Both directions reached end of stream.
    Closed,
    /// One side failed; the other should be reset.
    Failed(PumpError),
    Idle,
}

/// Byte counts and last activity of one tunnel, shared by its two pumps. (They run in
/// one task; atomics only because a task must be `Send`. Relaxed order is enough.)
#[derive(Debug)]
pub struct TunnelStats {
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub activity: Activity,
}

impl TunnelStats {
    pub fn new() -> TunnelStats {
        TunnelStats {
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            activity: Activity::new(),
        }
    }

    pub fn add_up(&self, n: u64) {
        self.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_down(&self, n: u64) {
        self.bytes_down.fetch_add(n, Ordering::Relaxed);
    }

    pub fn up(&self) -> u64 {
        self.bytes_up.load(Ordering::Relaxed)
    }

    pub fn down(&self) -> u64 {
        self.bytes_down.load(Ordering::Relaxed)
    }
}

/// When a byte last moved, as milliseconds since the tunnel started.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl Default for TunnelStats {
    fn default() -> Self {
        TunnelStats::new()
    }
}

const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept for reuse at most (16 KiB each: 4 MiB).
const POOL_MAX: usize = 256;

static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A buffer borrowed from the pool; returned on drop.
struct PooledBuf(Option<Box<[u8]>>);

impl PooledBuf {
    fn take() -> PooledBuf {
        let b = POOL.lock().ok().and_then(|mut p| p.pop());
        PooledBuf(Some(
            b.unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice()),
        ))
    }

    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let (Some(b), Ok(mut p)) = (self.0.take(), POOL.lock()) {
            if p.len() < POOL_MAX {
                p.push(b);
            }
        }
    }
}

/// Writes all of `bytes` to `to`.
pub async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a pump updates as bytes flow.
pub struct Flow<'a> {
    pub from: Side,
    pub count: &'a AtomicU64,
    pub metric: &'a IntCounter,
    pub activity: &'a Activity,
}

/// Copies `from` → `to` until end of stream, then half-closes `to`. `tap` sees each chunk
/// before it is written, until it returns false (it must not block).
pub async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    flow: Flow<'_>,
    tap: &mut (dyn FnMut(&[u8]) -> bool + Send),
) -> Result<(), PumpError> {
    let reader = flow.from;
    let writer = reader.other();
    let fail = |culprit: Side| move |error: io::Error| PumpError { culprit, error };
    let mut tapping = true;
    loop {
        from.readable().await.map_err(fail(reader))?;
        let mut buf = PooledBuf::take();
        let n = match from.try_read(buf.as_mut()) {
            Ok(0) => {
                // End of stream: pass the half-close on. ENOTCONN means the other side is
                // already fully closed, which the other pump reports.
                let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(fail(reader)(e)),
        };
        let chunk = buf.as_mut().get(..n).unwrap_or_default();
        if tapping {
            tapping = tap(chunk);
        }
        write_all(to, chunk).await.map_err(fail(writer))?;
        flow.count.fetch_add(n as u64, Ordering::Relaxed);
        flow.metric.inc_by(n as u64);
        flow.activity.touch();
    }
}

/// Resolves when no byte has moved for `idle`.
pub async fn idle_watch(activity: &Activity, idle: Duration) {
    loop {
        let deadline = activity.last() + idle;
        tokio::time::sleep_until(deadline).await;
        if activity.last() + idle <= Instant::now() {
            return;
        }
    }
}

/// Makes the next close of `s` send a reset instead of a FIN.
pub fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}
