//! Parent-proxy chaining (`[upstream] proxy = "http://[user:pass@]host:port"`): most
//! egresses already have a proxy, and tlspeek sits in front of it. CONNECT tunnels are
//! opened with a CONNECT to the parent; http:// requests are sent to it in absolute form.
//! The peek, the verdicts and enforcement work the same on what comes back.
//!
//! The parent resolves target names in its own DNS, so tlspeek checks against the
//! deny-list what it can: IP literals always, and names that also resolve locally.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::authority::{Authority, Host};
use super::dial::{self, ConnectError};
use super::request;
use crate::config::{NetList, ParentProxy};

/// Connects to the parent itself (its address is configuration, not a stranger's choice,
/// so it is not checked against the deny-list).
pub async fn connect(
    parent: &ParentProxy,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let lookup = tokio::net::lookup_host((parent.host.as_str(), parent.port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => {
            return Err(ConnectError::Dns {
                host: parent.host.clone(),
                reason: format!("parent proxy: {e}"),
            });
        }
        Err(_) => {
            return Err(ConnectError::Dns {
                host: parent.host.clone(),
                reason: "parent proxy: timed out".into(),
            });
        }
    };
    let (s, addr, _) = dial::connect(&addrs, timeout).await?;
    let _ = s.set_nodelay(true);
    Ok((s, addr))
}

/// The deny-list check of a target reached through the parent.
pub async fn check_target(
    target: &Authority,
    deny: &NetList,
    timeout: Duration,
) -> Result<(), ConnectError> {
    match &target.host {
        Host::Ip(_) => dial::resolve(target, deny, timeout).await.map(|_| ()),
        Host::Name(_) => {
            match dial::resolve(target, deny, timeout.min(Duration::from_secs(2))).await {
                Err(e @ ConnectError::Denied { .. }) => Err(e),
                // Unknown here is fine: the parent's DNS decides.
                _ => Ok(()),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("parent proxy answered: {0}")]
    Refused(String),
    #[error("parent proxy: {0}")]
    Protocol(String),
}

/// Opens a tunnel to `target` through the parent: CONNECT, then its `200`.
pub async fn tunnel(
    parent: &ParentProxy,
    target: &Authority,
    deny: &NetList,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ParentError> {
    check_target(target, deny, timeout).await?;
    let (mut s, addr) = connect(parent, timeout).await?;
    let authority = match &target.host {
        Host::Ip(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{}", target.port),
        h => format!("{h}:{}", target.port),
    };
    let auth = parent
        .authorization
        .as_deref()
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n");
    crate::net::write_all_within(&s, req.as_bytes(), timeout)
        .await
        .map_err(|e| ParentError::Protocol(e.to_string()))?;
    // Read the answer up to its blank line and not a byte further: what follows belongs
    // to the tunnel. Peek at what has arrived, then take only the head's part of it.
    let deadline = Instant::now() + timeout;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if head.len() > request::MAX_HEAD_BYTES {
            return Err(ParentError::Protocol("answer head too large".into()));
        }
        let n = match tokio::time::timeout_at(deadline, s.peek(&mut buf)).await {
            Err(_) => return Err(ParentError::Protocol("no answer to CONNECT in time".into())),
            Ok(Err(e)) => return Err(ParentError::Protocol(e.to_string())),
            Ok(Ok(0)) => {
                return Err(ParentError::Protocol(
                    "closed before answering CONNECT".into(),
                ));
            }
            Ok(Ok(n)) => n,
        };
        let peeked = buf.get(..n).unwrap_or_default();
        let end = head_end(&head, peeked);
        let take = end.unwrap_or(n);
        let part = buf.get_mut(..take).unwrap_or_default();
        s.read_exact(part)
            .await
            .map_err(|e| ParentError::Protocol(e.to_string()))?;
        head.extend_from_slice(part);
        if end.is_some() {
            break;
        }
    }
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default())
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect::<String>();
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(ParentError::Refused(line));
    }
    Ok((s, addr))
}

/// How many bytes of `more` complete a response head whose first bytes are `head` (which
/// holds no blank line yet): up to and including the first `\r\n\r\n`, which may begin
/// in `head`.
fn head_end(head: &[u8], more: &[u8]) -> Option<usize> {
    let keep = head.len().min(3);
    let mut window = head.get(head.len() - keep..).unwrap_or_default().to_vec();
    window.extend_from_slice(more);
    window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4 - keep)
}

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn the_head_ends_at_the_first_blank_line_even_across_reads() {
        let answer = b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01";
        let whole = answer.len() - 3;
        assert_eq!(head_end(b"", answer), Some(whole));
        // Split at every byte: the bytes taken from the second part end the head exactly.
        for at in 0..whole {
            let (a, b) = answer.split_at(at);
            assert_eq!(head_end(a, b), Some(whole - at), "split at {at}");
        }
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n", b"Via: x\r\n"), None);
    }
}
