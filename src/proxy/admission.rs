//! Admission: connection limits (global and per source), and the upstream connection —
//! resolve the name once, check every resolved address against the deny-list (after
//! unmapping IPv4-mapped IPv6), and connect only to an address that was checked, trying
//! each in turn with its own timeout. Nothing resolves the name a second time, so DNS
//! rebinding between check and connect is impossible.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::authority::{Authority, Host};
use crate::config::NetList;

/// Bounds concurrency: `max_connections` in all, `max_connections_per_source` per address.
pub struct Limits {
    global: Arc<Semaphore>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    max_per_source: usize,
}

/// Held for the life of a connection; frees its slots when dropped.
pub struct Permit {
    _global: OwnedSemaphorePermit,
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut m) = self.limits.per_source.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum LimitHit {
    Global,
    PerSource,
}

impl Limits {
    pub fn new(max_connections: usize, max_per_source: usize) -> Arc<Limits> {
        Arc::new(Limits {
            global: Arc::new(Semaphore::new(max_connections)),
            per_source: Mutex::new(HashMap::new()),
            max_per_source,
        })
    }

    /// Takes a slot for `ip` without waiting.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, LimitHit> {
        let ip = ip.to_canonical();
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitHit::Global)?;
        let mut m = self.per_source.lock().map_err(|_| LimitHit::Global)?;
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max_per_source {
            return Err(LimitHit::PerSource);
        }
        *n += 1;
        Ok(Permit {
            _global: global,
            limits: self.clone(),
            ip,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DNS lookup of {host} failed: {reason}")]
    Dns { host: String, reason: String },
    #[error("{host} resolves to {ip}, a denied destination")]
    Denied { host: String, ip: IpAddr },
    #[error("connecting to {tried} address(es) timed out")]
    Timeout { tried: usize },
    #[error("connecting to {addr} failed: {source}")]
    Failed { addr: SocketAddr, source: io::Error },
}

/// Resolves `target` once and returns the addresses to try, each checked against `deny`.
/// If any address is denied, the whole target is refused: a name that points at loopback
/// or the metadata service is a probe, whatever else it lists.
pub async fn resolve(
    target: &Authority,
    deny: &NetList,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ConnectError> {
    let addrs: Vec<SocketAddr> = match &target.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), target.port));
            match tokio::time::timeout(timeout, lookup).await {
                Err(_) => {
                    return Err(ConnectError::Dns {
                        host: name.to_string(),
                        reason: "timed out".into(),
                    });
                }
                Ok(Err(e)) => {
                    return Err(ConnectError::Dns {
                        host: name.to_string(),
                        reason: e.to_string(),
                    });
                }
                Ok(Ok(it)) => it.collect(),
            }
        }
    };
    if addrs.is_empty() {
        return Err(ConnectError::Dns {
            host: target.host.to_string(),
            reason: "no addresses".into(),
        });
    }
    let mut checked = Vec::with_capacity(addrs.len());
    for a in addrs {
        let ip = a.ip().to_canonical();
        if deny.contains(ip) {
            return Err(ConnectError::Denied {
                host: target.host.to_string(),
                ip,
            });
        }
        let a = SocketAddr::new(ip, a.port());
        if !checked.contains(&a) {
            checked.push(a);
        }
    }
    Ok(checked)
}

/// Connects to the first address that answers, each attempt bounded by `per_address`.
/// Returns the stream and how long the successful attempt took.
pub async fn connect(
    addrs: &[SocketAddr],
    per_address: Duration,
) -> Result<(TcpStream, SocketAddr, Duration), ConnectError> {
    let mut last_error = None;
    let mut timeouts = 0;
    for addr in addrs {
        let started = Instant::now();
        match tokio::time::timeout(per_address, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok((s, *addr, started.elapsed())),
            Ok(Err(e)) => last_error = Some((*addr, e)),
            Err(_) => timeouts += 1,
        }
    }
    match last_error {
        Some((addr, source)) if timeouts < addrs.len() => {
            Err(ConnectError::Failed { addr, source })
        }
        _ => Err(ConnectError::Timeout { tried: addrs.len() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::authority::parse_authority;

    #[test]
    fn per_source_and_global_limits() {
        let l = Limits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).err(), Some(LimitHit::PerSource));
        let _p3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).err(), Some(LimitHit::Global));
        drop(p1);
        let _p4 = l.try_acquire(a).unwrap();
        assert_eq!(l.per_source.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn denied_after_resolution_not_by_string() {
        let deny = NetList(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        let t = Duration::from_secs(5);
        for target in [
            "localhost:443",
            "[::ffff:127.0.0.1]:443",
            "127.1.2.3:443",
            "[::1]:443",
        ] {
            let a = parse_authority(target).unwrap();
            assert!(
                matches!(
                    resolve(&a, &deny, t).await,
                    Err(ConnectError::Denied { .. })
                ),
                "{target}"
            );
        }
        let a = parse_authority("127.0.0.1:443").unwrap();
        assert_eq!(resolve(&a, &NetList::default(), t).await.unwrap().len(), 1);
        let a = parse_authority("no-such-host.invalid:443").unwrap();
        assert!(matches!(
            resolve(&a, &deny, t).await,
            Err(ConnectError::Dns { .. })
        ));
    }

    #[tokio::test]
    async fn refused_port_is_connect_failed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let r = connect(&[addr], Duration::from_secs(5)).await;
        assert!(matches!(r, Err(ConnectError::Failed { .. })), "{r:?}");
    }
}
