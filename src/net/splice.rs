//! Splicing a tunnel: both directions at once, bytes unchanged.
//!
//! - End of stream on one side is passed on as a half-close (`shutdown(SHUT_WR)`) to the
//!   other, so a client that closes its write side still gets the whole response.
//! - A reset (or any read/write error) on one side ends the tunnel and is passed on as a
//!   reset to the other side, so a cut-off response never looks complete.
//! - `idle_timeout` ends a tunnel with no byte in either direction.
//!
//! No buffer is held while a tunnel is idle: a pump waits for readiness, then borrows a
//! buffer (copy path) or a pipe (zero-copy path, Linux `splice(2)`) from a shared pool for
//! one read-and-write.

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::Interest;
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
    /// Where each direction's pump is (for `/debug/tunnels`: a stalled transfer shows
    /// whether it waits to read or to write, and on which path).
    pub up_state: PumpState,
    pub down_state: PumpState,
}

impl TunnelStats {
    pub fn new() -> TunnelStats {
        TunnelStats {
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            activity: Activity::new(),
            up_state: PumpState::default(),
            down_state: PumpState::default(),
        }
    }

    /// The flow of the direction that reads from `from`, counted in `metric`.
    pub fn flow<'a>(&'a self, from: Side, metric: &'a IntCounter) -> Flow<'a> {
        let (count, state, other) = match from {
            Side::Client => (&self.bytes_up, &self.up_state, &self.down_state),
            Side::Upstream => (&self.bytes_down, &self.down_state, &self.up_state),
        };
        Flow {
            from,
            count,
            metric,
            activity: &self.activity,
            state,
            other,
        }
    }

    /// Milliseconds since a byte last moved.
    pub fn idle_ms(&self) -> u64 {
        u64::try_from(self.activity.last().elapsed().as_millis()).unwrap_or(u64::MAX)
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

/// The path a direction's bytes take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PumpPath {
    NotStarted = 0,
    /// Through user space, seen by the tap (the hello peeks).
    Tapping = 1,
    /// Through a pooled buffer.
    Copy = 2,
    /// Through a pooled pipe (`splice(2)`).
    Splice = 3,
    Ended = 4,
}

/// What a direction's pump is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PumpWait {
    Nothing = 0,
    Readable = 1,
    Writable = 2,
}

/// A pump's path and what it waits for, readable from another thread.
#[derive(Debug, Default)]
pub struct PumpState {
    path: AtomicU8,
    waiting: AtomicU8,
}

impl PumpState {
    pub fn set_path(&self, p: PumpPath) {
        self.path.store(p as u8, Ordering::Relaxed);
    }

    /// The pump has returned (end of stream, or an error).
    pub fn ended(&self) -> bool {
        self.path.load(Ordering::Relaxed) == PumpPath::Ended as u8
    }

    pub fn set_waiting(&self, w: PumpWait) {
        self.waiting.store(w as u8, Ordering::Relaxed);
    }

    pub fn path(&self) -> &'static str {
        match self.path.load(Ordering::Relaxed) {
            1 => "tapping",
            2 => "copy",
            3 => "splice",
            4 => "ended",
            _ => "not_started",
        }
    }

    pub fn waiting(&self) -> &'static str {
        match self.waiting.load(Ordering::Relaxed) {
            1 => "readable",
            2 => "writable",
            _ => "nothing",
        }
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

/// Size of a pooled copy buffer.
const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept for reuse at most (16 KiB each: 4 MiB).
const POOL_MAX: usize = 256;
/// A tap that cannot say it is done (a plain closure) sees at least this many bytes of its
/// direction through user space before the pump may switch to zero-copy: enough for any
/// hello the peek accepts.
pub const TAP_WINDOW: usize = crate::hello::MAX_HELLO_BYTES;
/// When zero-copy was refused, this many bytes are copied before it is tried again.
const RETRY_ZERO_COPY_AFTER: usize = 1024 * 1024;
/// A direction moves this many bytes through the copy path before it turns to zero-copy.
/// A short tunnel (a handshake, an API call) then never takes a pipe: for a few small
/// chunks, two `splice(2)` calls and the pipe pool cost the kernel more than a read and a
/// write (BENCHMARKS.md, "thirteenth stop"), while a bulk transfer, where splice pays,
/// copies only its first 64 KiB (four reads of [`BUF_SIZE`]).
pub const SPLICE_AFTER: usize = 64 * 1024;

static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A buffer borrowed from the pool; returned on drop.
pub(crate) struct PooledBuf(Option<Box<[u8]>>);

impl PooledBuf {
    pub(crate) fn take() -> PooledBuf {
        let b = POOL.lock().ok().and_then(|mut p| p.pop());
        PooledBuf(Some(
            b.unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice()),
        ))
    }

    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
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

/// Reads what `s` has into `buf` without waiting, like `try_read`, and when the read came
/// back short (the socket's receive queue is empty) also clears the socket's readiness,
/// so the next `readable().await` waits for new data instead of answering at once and
/// costing an `EAGAIN` read (tokio's own `AsyncRead` does the same after a short read).
pub fn read_drained(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let want = buf.len();
    let mut short = None;
    let r = s.try_io(Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(s)).read(buf)?;
        if n > 0 && n < want {
            // Returning WouldBlock is how `try_io` is told to clear the readiness; the
            // bytes are kept in `short`.
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => r,
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

/// What a pump updates as bytes flow (made by [`TunnelStats::flow`]).
pub struct Flow<'a> {
    pub from: Side,
    pub count: &'a AtomicU64,
    pub metric: &'a IntCounter,
    pub activity: &'a Activity,
    pub state: &'a PumpState,
    /// The other direction's pump.
    pub other: &'a PumpState,
}

impl Flow<'_> {
    /// End of stream from `from`: pass the half-close on to `to`, unless the other
    /// direction's pump has already ended. Then both sides are done, the tunnel closes
    /// both sockets at once, and `close()` sends the FIN that `shutdown()` would have
    /// (nothing is left unread), one syscall fewer per connection. ENOTCONN means the
    /// other side is already fully closed, which the other pump reports.
    fn pass_half_close(&self, to: &TcpStream) {
        if !self.other.ended() {
            let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
        }
    }

    /// `n` bytes went this way: the count, the metric, the activity clock.
    pub(crate) fn moved(&self, n: usize) {
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        self.metric.inc_by(n as u64);
        self.activity.touch();
    }
}

/// Whether a tap wants to see more of its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tapped {
    More,
    Done,
}

/// Something that sees a direction's bytes in user space before they are written on.
/// A plain `FnMut(&[u8])` closure is a tap that never says it is done: it sees at least
/// the first [`TAP_WINDOW`] bytes (and every byte when zero-copy is off).
pub trait Tap {
    fn see(&mut self, chunk: &[u8]) -> Tapped;
}

impl<F: FnMut(&[u8]) + ?Sized> Tap for F {
    fn see(&mut self, chunk: &[u8]) -> Tapped {
        self(chunk);
        Tapped::More
    }
}

/// A tap that needs nothing: the pump is done tapping after the first chunk.
pub struct NoTap;

impl Tap for NoTap {
    fn see(&mut self, _chunk: &[u8]) -> Tapped {
        Tapped::Done
    }
}

/// Copies `from` → `to` until end of stream, then half-closes `to`. `tap` sees every chunk
/// before it is written (it must not block) until it answers [`Tapped::Done`] — a plain
/// closure: at least the first [`TAP_WINDOW`] bytes. Once the direction has moved
/// [`SPLICE_AFTER`] bytes, on Linux, the bytes go through `splice(2)` and a pooled pipe
/// without entering user space (see [`zero_copy`]); before that, elsewhere, or if splice
/// is off or refused, through a pooled buffer.
pub async fn pump<T: Tap + Send + ?Sized>(
    from: &TcpStream,
    to: &TcpStream,
    flow: Flow<'_>,
    tap: &mut T,
) -> Result<(), PumpError> {
    let reader = flow.from;
    let writer = reader.other();
    let fail = |culprit: Side| move |error: io::Error| PumpError { culprit, error };
    let mut tapping = true;
    let mut seen = 0usize;
    // Bytes to copy before zero-copy is tried: the rest of [`SPLICE_AFTER`] once the tap
    // is done, or [`RETRY_ZERO_COPY_AFTER`] after it was refused (no pipe to be had, or
    // not for these sockets).
    let mut copy_first = 0usize;
    let state = flow.state;
    state.set_path(PumpPath::Tapping);
    let r = async {
        loop {
            if !tapping && copy_first == 0 && zero_copy::enabled() {
                state.set_path(PumpPath::Splice);
                match zero_copy::pump(from, to, &flow).await {
                    zero_copy::End::Eof => {
                        flow.pass_half_close(to);
                        return Ok(());
                    }
                    zero_copy::End::Failed(e) => return Err(e),
                    zero_copy::End::Unsupported => {
                        state.set_path(PumpPath::Copy);
                        copy_first = RETRY_ZERO_COPY_AFTER;
                    }
                }
            }
            state.set_waiting(PumpWait::Readable);
            from.readable().await.map_err(fail(reader))?;
            state.set_waiting(PumpWait::Nothing);
            let mut buf = PooledBuf::take();
            let n = match read_drained(from, buf.as_mut()) {
                Ok(0) => {
                    flow.pass_half_close(to);
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(fail(reader)(e)),
            };
            let chunk = buf.as_mut().get(..n).unwrap_or_default();
            if tapping {
                seen += n;
                if tap.see(chunk) == Tapped::Done || seen >= TAP_WINDOW {
                    tapping = false;
                    copy_first = SPLICE_AFTER.saturating_sub(seen);
                    state.set_path(PumpPath::Copy);
                }
            } else {
                copy_first = copy_first.saturating_sub(n);
            }
            state.set_waiting(PumpWait::Writable);
            write_all(to, chunk).await.map_err(fail(writer))?;
            state.set_waiting(PumpWait::Nothing);
            flow.moved(n);
        }
    }
    .await;
    state.set_path(PumpPath::Ended);
    state.set_waiting(PumpWait::Nothing);
    r
}

/// Zero-copy for the pass-through phase: `splice(2)` from the source socket into a pipe
/// and from the pipe into the destination socket; the bytes never enter user space.
///
/// Pipes come from a process-wide pool and are held only while bytes are in flight (from
/// the read until the pipe is drained into the destination), so an idle tunnel holds no
/// pipe and no buffer, and a proxy with thousands of tunnels has a few dozen pipes. A pipe
/// goes back to the pool only when empty; one left holding bytes by an error is closed.
///
/// Off when `proxy.zero_copy = false` (see [`configure`]), when `TLSPEEK_SPLICE=0` is
/// set in the environment, and on other systems than Linux.
pub mod zero_copy {
    use super::{Flow, PumpError, PumpWait, Side};
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::net::TcpStream;

    /// `proxy.zero_copy` as last loaded (on by default, as in the embedded config).
    static CONFIGURED: AtomicBool = AtomicBool::new(true);

    /// Applies `proxy.zero_copy`: at start and on every reload. A pump reads it when it
    /// turns to pass-through, so it applies to the tunnels that get there afterwards.
    pub fn configure(on: bool) {
        CONFIGURED.store(on, Ordering::Relaxed);
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn configured() -> bool {
        CONFIGURED.load(Ordering::Relaxed)
    }

    /// How a zero-copy pump stopped.
    pub enum End {
        Eof,
        Failed(PumpError),
        /// Nothing was moved; use the copy path.
        Unsupported,
    }

    #[cfg(target_os = "linux")]
    pub use linux::{enabled, pool_stats, pump};

    #[cfg(not(target_os = "linux"))]
    pub fn enabled() -> bool {
        false
    }

    #[cfg(not(target_os = "linux"))]
    pub fn pool_stats() -> super::PipePoolStats {
        super::PipePoolStats::default()
    }

    #[cfg(not(target_os = "linux"))]
    pub async fn pump(_: &TcpStream, _: &TcpStream, _: &Flow<'_>) -> End {
        End::Unsupported
    }

    #[cfg(target_os = "linux")]
    mod linux {
        use std::io;
        use std::os::fd::OwnedFd;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Mutex, OnceLock};

        use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
        use tokio::io::Interest;

        use super::{End, Flow, PumpError, PumpWait, Side, TcpStream};

        /// Bytes one pipe holds (the kernel rounds to pages; the default is 64 KiB).
        const PIPE_SIZE: usize = 256 * 1024;
        /// Empty pipes kept for reuse at most (two descriptors each).
        const PIPE_POOL_MAX: usize = 64;

        static PIPES: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
        /// Pipes taken from the pool (or made) and not yet given back or closed.
        static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
        /// Pipes closed instead of pooled because an error left bytes in them.
        static CLOSED_NOT_EMPTY: AtomicUsize = AtomicUsize::new(0);

        /// The pipe pool as `/debug/tunnels` shows it.
        pub fn pool_stats() -> crate::net::splice::PipePoolStats {
            crate::net::splice::PipePoolStats {
                pooled: PIPES.lock().map_or(0, |v| v.len()),
                in_flight: IN_FLIGHT.load(Ordering::Relaxed),
                closed_not_empty: CLOSED_NOT_EMPTY.load(Ordering::Relaxed),
            }
        }

        /// Whether the pass-through splices: the configuration says so and the
        /// environment does not say `TLSPEEK_SPLICE=0`.
        pub fn enabled() -> bool {
            static ENV_ON: OnceLock<bool> = OnceLock::new();
            super::configured()
                && *ENV_ON
                    .get_or_init(|| std::env::var("TLSPEEK_SPLICE").map_or(true, |v| v != "0"))
        }

        struct Pipe {
            read: OwnedFd,
            write: OwnedFd,
            size: usize,
            /// Set while taken; a taken pipe dropped (not given back) held bytes.
            taken: bool,
        }

        impl Drop for Pipe {
            fn drop(&mut self) {
                if self.taken {
                    IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
                    CLOSED_NOT_EMPTY.fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        impl Pipe {
            fn take() -> io::Result<Pipe> {
                if let Some(mut p) = PIPES.lock().ok().and_then(|mut v| v.pop()) {
                    p.taken = true;
                    IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
                    return Ok(p);
                }
                let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
                // A bigger pipe moves more per splice; keep the default if refused.
                let size = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
                    .ok()
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(64 * 1024);
                IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
                Ok(Pipe {
                    read,
                    write,
                    size,
                    taken: true,
                })
            }

            /// Back to the pool; only ever called with an empty pipe.
            fn give_back(mut self) {
                self.taken = false;
                IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
                if let Ok(mut v) = PIPES.lock() {
                    if v.len() < PIPE_POOL_MAX {
                        v.push(self);
                    }
                }
            }
        }

        const FLAGS: SpliceFFlags =
            SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

        fn would_block(e: &io::Error) -> bool {
            e.kind() == io::ErrorKind::WouldBlock
        }

        /// Splices `from` → `to` until end of stream or an error.
        pub async fn pump(from: &TcpStream, to: &TcpStream, flow: &Flow<'_>) -> End {
            let reader = flow.from;
            let writer = reader.other();
            let fail = |culprit: Side, error: io::Error| End::Failed(PumpError { culprit, error });
            loop {
                flow.state.set_waiting(PumpWait::Readable);
                if let Err(e) = from.readable().await {
                    return fail(reader, e);
                }
                flow.state.set_waiting(PumpWait::Nothing);
                let pipe = match Pipe::take() {
                    Ok(p) => p,
                    // Out of descriptors: this chunk goes through the copy path.
                    Err(_) => return End::Unsupported,
                };
                let got = from.try_io(Interest::READABLE, || {
                    Ok(splice(from, None, &pipe.write, None, pipe.size, FLAGS)?)
                });
                let n = match got {
                    Ok(0) => {
                        pipe.give_back();
                        return End::Eof;
                    }
                    Ok(n) => n,
                    Err(e) if would_block(&e) => {
                        pipe.give_back();
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        pipe.give_back();
                        return End::Unsupported;
                    }
                    Err(e) => {
                        pipe.give_back();
                        return fail(reader, e);
                    }
                };
                let mut left = n;
                while left > 0 {
                    flow.state.set_waiting(PumpWait::Writable);
                    if let Err(e) = to.writable().await {
                        return fail(writer, e);
                    }
                    flow.state.set_waiting(PumpWait::Nothing);
                    let put = to.try_io(Interest::WRITABLE, || {
                        Ok(splice(&pipe.read, None, to, None, left, FLAGS)?)
                    });
                    match put {
                        Ok(0) => return fail(writer, io::ErrorKind::WriteZero.into()),
                        Ok(m) => left = left.saturating_sub(m),
                        Err(e) if would_block(&e) => continue,
                        // The pipe still holds bytes: it is dropped (closed), not pooled.
                        Err(e) => return fail(writer, e),
                    }
                }
                pipe.give_back();
                flow.moved(n);
            }
        }
    }
}

/// The zero-copy pipe pool at one moment.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PipePoolStats {
    /// Empty pipes waiting in the pool.
    pub pooled: usize,
    /// Pipes holding a chunk between its read and its write.
    pub in_flight: usize,
    /// Pipes closed because an error left bytes in them (never pooled).
    pub closed_not_empty: usize,
}

/// Copy buffers waiting in the pool.
pub fn buffers_pooled() -> usize {
    POOL.lock().map_or(0, |p| p.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Pumps `data` from one pair to another and returns what arrived and what the tap saw.
    async fn through_pump<T: Tap + Send>(data: &[u8], tap: &mut T) -> Vec<u8> {
        let (mut src_w, src_r) = pair().await;
        let (dst_w, mut dst_r) = pair().await;
        let stats = TunnelStats::new();
        let metric = IntCounter::new("t", "t").unwrap();
        let flow = stats.flow(Side::Client, &metric);
        let send = async {
            src_w.write_all(data).await.unwrap();
            src_w.shutdown().await.unwrap();
        };
        let recv = async {
            let mut got = Vec::new();
            dst_r.read_to_end(&mut got).await.unwrap();
            got
        };
        let (_, r, got) = tokio::join!(send, pump(&src_r, &dst_w, flow, tap), recv);
        r.unwrap();
        assert_eq!(stats.up(), data.len() as u64);
        assert_eq!(metric.get(), data.len() as u64);
        got
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_closure_tap_sees_the_first_window_and_bytes_arrive_unchanged() {
        let data = pattern(3 << 20);
        let mut seen = Vec::new();
        let mut tap = |c: &[u8]| seen.extend_from_slice(c);
        let got = through_pump(&data, &mut tap).await;
        assert!(got == data, "bytes differ after the pump");
        assert!(
            seen.len() >= TAP_WINDOW,
            "tap saw only {} bytes",
            seen.len()
        );
        assert_eq!(seen, data[..seen.len()]);
    }

    #[tokio::test]
    async fn no_tap_and_a_done_tap_still_move_every_byte() {
        let data = pattern(5 << 20);
        assert!(through_pump(&data, &mut NoTap).await == data);
        struct FirstChunk(usize);
        impl Tap for FirstChunk {
            fn see(&mut self, chunk: &[u8]) -> Tapped {
                self.0 += chunk.len();
                Tapped::Done
            }
        }
        let mut first = FirstChunk(0);
        assert!(through_pump(&data, &mut first).await == data);
        assert!(first.0 > 0);
        assert!(through_pump(b"", &mut NoTap).await.is_empty());
    }

    #[test]
    fn pooled_buffers_have_the_copy_size() {
        let mut a = PooledBuf::take();
        assert_eq!(a.as_mut().len(), BUF_SIZE);
    }
}
