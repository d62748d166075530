//! The cleartext prelude of a STARTTLS session (a port of `[starttls]`): both directions
//! relayed unchanged, each read by a [`Scanner`], until the client's TLS begins. Bounded by
//! `prelude_max_bytes` (both directions together) and `prelude_timeout`; past either, or
//! when a side ends first, the session goes on in cleartext, unwatched.

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::session::Session;
use crate::net::splice::{self, Flow, PumpError, Side};
use crate::starttls::{Protocol, Role, Scan, Scanner};

/// Bytes read per call during the prelude (a command line or an answer is far shorter).
const READ_BYTES: usize = 4096;

/// How the prelude ended.
#[derive(Debug)]
pub enum PreludeEnd {
    /// The client began TLS: `early` holds what it sent of its hello so far (not yet
    /// forwarded).
    Tls { early: Vec<u8> },
    /// No TLS: a bound was reached, or a side ended (its FIN already passed on).
    Plain {
        why: &'static str,
        client_done: bool,
        upstream_done: bool,
    },
}

/// Relays the prelude; every byte read has been forwarded when it returns, except a TLS
/// hello's (`PreludeEnd::Tls`).
pub async fn relay(
    s: &Session<'_>,
    upstream: &TcpStream,
    protocol: Protocol,
    early: Vec<u8>,
) -> Result<PreludeEnd, PumpError> {
    let m = &s.shared.metrics;
    let limits = &s.cfg.starttls;
    let up = s.stats.flow(Side::Client, &m.bytes_up);
    let down = s.stats.flow(Side::Upstream, &m.bytes_down);
    let mut client_scan = Scanner::new(protocol, Role::Client);
    let mut server_scan = Scanner::new(protocol, Role::Server);
    let deadline = Instant::now() + limits.prelude_timeout;
    let mut moved = 0usize;
    if !early.is_empty() {
        if let Some(end) = from_client(&mut client_scan, &early, upstream, &up).await? {
            return Ok(end);
        }
        moved += early.len();
    }
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        if moved > limits.prelude_max_bytes {
            return Ok(plain("prelude_max_bytes", false, false));
        }
        tokio::select! {
            r = s.client.readable() => {
                r.map_err(|error| PumpError { culprit: Side::Client, error })?;
                let n = match read(s.client, &mut buf) {
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                    Err(error) => return Err(PumpError { culprit: Side::Client, error }),
                };
                if n == 0 {
                    let _ = socket2::SockRef::from(upstream).shutdown(std::net::Shutdown::Write);
                    return Ok(plain("client_ended", true, false));
                }
                let chunk = buf.get(..n).unwrap_or_default();
                if let Some(end) = from_client(&mut client_scan, chunk, upstream, &up).await? {
                    debug!(
                        starttls = protocol.as_str(),
                        asked = client_scan.asked(),
                        server_said_yes = server_scan.last_answer_accepts(),
                        prelude_bytes = moved + n,
                        "STARTTLS: the client began TLS"
                    );
                    return Ok(end);
                }
                moved += n;
            }
            r = upstream.readable() => {
                r.map_err(|error| PumpError { culprit: Side::Upstream, error })?;
                let n = match read(upstream, &mut buf) {
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                    Err(error) => return Err(PumpError { culprit: Side::Upstream, error }),
                };
                if n == 0 {
                    let _ = socket2::SockRef::from(s.client).shutdown(std::net::Shutdown::Write);
                    return Ok(plain("upstream_ended", false, true));
                }
                let chunk = buf.get(..n).unwrap_or_default();
                server_scan.feed(chunk);
                splice::write_all(s.client, chunk)
                    .await
                    .map_err(|error| PumpError { culprit: Side::Client, error })?;
                down.moved(n);
                moved += n;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(plain("prelude_timeout", false, false));
            }
        }
    }
}

fn plain(why: &'static str, client_done: bool, upstream_done: bool) -> PreludeEnd {
    PreludeEnd::Plain {
        why,
        client_done,
        upstream_done,
    }
}

/// One read; `None` when the readiness was spurious.
fn read(from: &TcpStream, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    match from.try_read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Client bytes: the prelude part goes upstream; where TLS begins, the rest is held.
async fn from_client(
    scan: &mut Scanner,
    chunk: &[u8],
    upstream: &TcpStream,
    up: &Flow<'_>,
) -> Result<Option<PreludeEnd>, PumpError> {
    let (prelude, tls) = match scan.feed(chunk) {
        Scan::Prelude => (chunk, None),
        Scan::Tls(at) => {
            let (p, t) = chunk.split_at(at.min(chunk.len()));
            (p, Some(t))
        }
    };
    if !prelude.is_empty() {
        splice::write_all(upstream, prelude)
            .await
            .map_err(|error| PumpError {
                culprit: Side::Upstream,
                error,
            })?;
        up.moved(prelude.len());
    }
    Ok(tls.map(|t| PreludeEnd::Tls { early: t.to_vec() }))
}
