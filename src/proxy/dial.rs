//! Dialing the upstream: resolve the name once, check every resolved address against the deny-list (after
//! unmapping IPv4-mapped IPv6), and connect only to an address that was checked, trying
//! each in turn with its own timeout. Nothing resolves the name a second time, so DNS
//! rebinding between check and connect is impossible.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::authority::{Authority, Host};
use crate::config::NetList;

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
        if deny.denies(ip) {
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

/// The direct upstream connection of a CONNECT or a plain-HTTP request: `target` resolved
/// once, every address checked against `deny`, the first that answers connected (each
/// attempt bounded by `per_address`, its time observed in `connect_seconds`), Nagle off.
pub async fn connect_checked(
    target: &Authority,
    deny: &NetList,
    per_address: Duration,
    connect_seconds: &prometheus::Histogram,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let addrs = resolve(target, deny, per_address).await?;
    let (stream, addr, took) = connect(&addrs, per_address).await?;
    connect_seconds.observe(took.as_secs_f64());
    let _ = stream.set_nodelay(true);
    Ok((stream, addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::authority::parse_authority;

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
