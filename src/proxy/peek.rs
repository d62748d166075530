//! The first-flight peek: hold the client's bytes until one whole ClientHello is in hand
//! (across any number of reads and TLS records), bounded in size and in time. The held
//! bytes are forwarded upstream unchanged afterwards, whatever they turned out to be.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::hello::{self, ClientHelloSummary, Detection};
use crate::net::splice::{PooledBuf, read_drained};

/// What the client's first bytes were.
#[derive(Debug)]
pub enum FirstFlight {
    Hello(Box<ClientHelloSummary>),
    NotTls,
    TooLarge,
    /// The client ended its side (FIN) in the middle of a hello.
    Truncated,
    /// The client ended its side without sending anything.
    Nothing,
    /// `hello_timeout` passed; `partial` if part of a hello had arrived.
    TimedOut {
        partial: bool,
    },
}

#[derive(Debug)]
pub struct Peeked {
    pub flight: FirstFlight,
    /// Every byte read from the client so far, in order.
    pub held: Vec<u8>,
    /// The client half-closed its side during the peek.
    pub client_eof: bool,
}

/// Reads from `client` (after whatever is already in `held`) until the first flight is
/// classified. An I/O error (e.g. a reset) is returned as is: the client is gone.
pub async fn peek_client_hello(
    client: &TcpStream,
    mut held: Vec<u8>,
    timeout: Duration,
) -> io::Result<Peeked> {
    let max = hello::MAX_HELLO_BYTES;
    let deadline = Instant::now() + timeout;
    loop {
        if !held.is_empty() {
            let flight = match hello::detect_client_hello(&held, max) {
                Detection::NeedMore => None,
                Detection::Hello(h) => Some(FirstFlight::Hello(h)),
                Detection::NotTls => Some(FirstFlight::NotTls),
                Detection::TooLarge => Some(FirstFlight::TooLarge),
            };
            if let Some(flight) = flight {
                return Ok(Peeked {
                    flight,
                    held,
                    client_eof: false,
                });
            }
            if held.len() > max {
                return Ok(Peeked {
                    flight: FirstFlight::TooLarge,
                    held,
                    client_eof: false,
                });
            }
        }
        match tokio::time::timeout_at(deadline, client.readable()).await {
            Err(_) => {
                let partial = !held.is_empty();
                return Ok(Peeked {
                    flight: FirstFlight::TimedOut { partial },
                    held,
                    client_eof: false,
                });
            }
            Ok(r) => r?,
        }
        // Read at most one byte past the bound, so an oversized hello is seen as such.
        // The read goes into a pooled buffer and only the bytes read are kept: `held`
        // lives as long as the tunnel, so it must not carry a read buffer's spare room.
        let want = (max + 1 - held.len().min(max)).min(16 * 1024);
        let mut buf = PooledBuf::take();
        let spare = buf.as_mut();
        let r = read_drained(
            client,
            spare.get_mut(..want.min(spare.len())).unwrap_or_default(),
        );
        match r {
            Ok(0) => {
                let flight = if held.is_empty() {
                    FirstFlight::Nothing
                } else {
                    FirstFlight::Truncated
                };
                return Ok(Peeked {
                    flight,
                    held,
                    client_eof: true,
                });
            }
            Ok(n) => held.extend_from_slice(spare.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}
