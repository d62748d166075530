//! The upstream connection of a tunnel or a plain-HTTP request: through the parent proxy
//! when `[upstream] proxy` is set, else direct — resolved once, every address checked
//! against the deny-list, connected to a checked one (`dial`).

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::authority::Authority;
use super::error::ConnError;
use super::{dial, parent};
use crate::config::{Config, ParentProxy};

/// Which way the upstream is reached.
#[derive(Debug, PartialEq)]
pub enum Route<'a> {
    Direct,
    Parent(&'a ParentProxy),
}

/// What the upstream connection carries.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// A CONNECT tunnel: through a parent, its own CONNECT to the parent.
    Tunnel,
    /// A plain-HTTP request: through a parent, sent to it in absolute form.
    Forward,
}

/// The parent proxy when one is configured, else direct.
pub fn route(cfg: &Config) -> Route<'_> {
    match &cfg.upstream_proxy {
        Some(p) => Route::Parent(p),
        None => Route::Direct,
    }
}

/// An open upstream connection.
pub struct Upstream {
    pub stream: TcpStream,
    /// The address connected to (the parent's, through a parent).
    pub addr: SocketAddr,
    /// `host:port` of the parent proxy it went through, if any.
    pub parent: Option<String>,
}

/// Opens the upstream for `target`; the connect time goes into `connect_seconds`.
pub async fn open(
    cfg: &Config,
    target: &Authority,
    purpose: Purpose,
    connect_seconds: &prometheus::Histogram,
) -> Result<Upstream, ConnError> {
    let p = &cfg.proxy;
    let (deny, timeout) = (&p.deny_destinations, p.connect_timeout);
    let parent = match route(cfg) {
        Route::Direct => {
            let (stream, addr) = dial::connect_checked(target, deny, timeout, connect_seconds)
                .await
                .map_err(ConnError::UpstreamConnect)?;
            return Ok(Upstream {
                stream,
                addr,
                parent: None,
            });
        }
        Route::Parent(parent) => parent,
    };
    let started = Instant::now();
    let (stream, addr) = match purpose {
        Purpose::Tunnel => parent::tunnel(parent, target, deny, timeout)
            .await
            .map_err(ConnError::ParentProxy)?,
        Purpose::Forward => {
            parent::check_target(target, deny, timeout)
                .await
                .map_err(ConnError::UpstreamConnect)?;
            parent::connect(parent, timeout)
                .await
                .map_err(ConnError::UpstreamConnect)?
        }
    };
    connect_seconds.observe(started.elapsed().as_secs_f64());
    Ok(Upstream {
        stream,
        addr,
        parent: Some(format!("{}:{}", parent.host, parent.port)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_proxy_is_the_route_when_configured() {
        let direct = Config::embedded_default().unwrap();
        assert_eq!(route(&direct), Route::Direct);
        let chained =
            Config::from_toml_str("[upstream]\nproxy = \"http://parent.example:3128\"\n").unwrap();
        match route(&chained) {
            Route::Parent(p) => assert_eq!((p.host.as_str(), p.port), ("parent.example", 3128)),
            Route::Direct => panic!("a configured parent must be the route"),
        }
    }
}
