//! Socket I/O shared by the proxy and upgrade mode: the tunnel pumps (`splice`: copy and
//! zero-copy, pooled buffers and pipes), the open tunnels' registry (`registry`, for
//! `/debug/tunnels`), stream adapters over shared sockets (`streams`), `TCP_NODELAY` on
//! the clients' sockets (`nodelay`), and the two small things every connection needs —
//! writing a whole answer within a time limit, and closing so that the peer reads that
//! answer.

pub mod addr_text;
pub mod nodelay;
pub mod registry;
pub mod splice;
pub mod streams;

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Writes all of `bytes` to `stream` within `limit` (`TimedOut` after it).
pub async fn write_all_within(stream: &TcpStream, bytes: &[u8], limit: Duration) -> io::Result<()> {
    match tokio::time::timeout(limit, splice::write_all(stream, bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// Half-closes `client` and drains what it still sends for a moment, so that the answer
/// just written is read: closing with unread input would send a reset that can destroy the
/// answer in flight.
pub async fn lingering_close(client: &TcpStream) {
    let _ = socket2::SockRef::from(client).shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    // On the heap: a buffer in the future itself would make every connection's task 4 KiB
    // larger for as long as it lives (a future is as large as its largest await), idle
    // tunnels included, for a path only refused and blocked connections take.
    let mut sink = vec![0u8; 4096];
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match tokio::time::timeout_at(deadline, client.readable()).await {
            Ok(Ok(())) => match client.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            },
            _ => return,
        }
    }
}
