//! Parent-proxy chaining (`[upstream] proxy = "http://[user:pass@]host:port"`): most
//! egresses already have a proxy, and tlspeek sits in front of it. CONNECT tunnels are
//! opened with a CONNECT to the parent; http:// requests are sent to it in absolute form.
//! The peek, the verdicts and enforcement work the same on what comes back.
//!
//! The parent resolves target names in its own DNS, so tlspeek checks against the
//! deny-list what it can: IP literals always, and names that also resolve locally.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::admission::{self, ConnectError};
use super::authority::{Authority, Host};
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
    let (s, addr, _) = admission::connect(&addrs, timeout).await?;
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
        Host::Ip(_) => admission::resolve(target, deny, timeout).await.map(|_| ()),
        Host::Name(_) => {
            match admission::resolve(target, deny, timeout.min(Duration::from_secs(2))).await {
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
    let (s, addr) = connect(parent, timeout).await?;
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
    request::write_all(&s, req.as_bytes(), timeout)
        .await
        .map_err(|e| ParentError::Protocol(e.to_string()))?;
    // Read the answer byte by byte up to its blank line: nothing of the tunnel after it
    // may be consumed here.
    let deadline = Instant::now() + timeout;
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > request::MAX_HEAD_BYTES {
            return Err(ParentError::Protocol("answer head too large".into()));
        }
        match tokio::time::timeout_at(deadline, s.readable()).await {
            Err(_) => return Err(ParentError::Protocol("no answer to CONNECT in time".into())),
            Ok(r) => r.map_err(|e| ParentError::Protocol(e.to_string()))?,
        }
        let mut b = [0u8; 1];
        match s.try_read(&mut b) {
            Ok(0) => {
                return Err(ParentError::Protocol(
                    "closed before answering CONNECT".into(),
                ));
            }
            Ok(_) => head.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(ParentError::Protocol(e.to_string())),
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
