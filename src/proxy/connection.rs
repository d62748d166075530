//! An accepted connection before its task: the source allow-list and a connection permit
//! (checked at accept, before spawning), a trusted balancer's PROXY header, and the hand-off
//! to the task of the listener's mode — `connect` (the proxy listener) or `transparent`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::proxy_protocol;
use super::refusal::Refusal;
use super::session::Session;
use super::{connect, transparent};
use crate::access::limits::Permit;
use crate::config::Config;
use crate::shared::Shared;
use crate::telemetry::Mode;

/// Decided at accept time: a connection permit, or the refusal.
pub type Admission = Result<Permit, Refusal>;

/// At accept: admitted, refused, or a trusted balancer whose PROXY header names the client.
pub enum AtAccept {
    Decided(Admission),
    /// A trusted load balancer: read its PROXY header, then admit the real client.
    AfterProxyHeader,
}

/// The source allow-list, then a connection permit.
pub fn admit(shared: &Shared, cfg: &Config, peer: SocketAddr) -> Admission {
    if !cfg.proxy.allowed_sources.contains(peer.ip()) {
        return Err(Refusal::source(peer.ip()));
    }
    shared.limits.try_acquire(peer.ip()).map_err(Refusal::limit)
}

/// Serves one accepted connection with its mode's task, which writes its event line.
pub async fn handle(
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    client: TcpStream,
    peer: SocketAddr,
    id: u64,
    at_accept: AtAccept,
    mode: Mode,
) {
    let started = Instant::now();
    let (peer, admission, header_error) = match at_accept {
        AtAccept::AfterProxyHeader => behind_balancer(&shared, &cfg, &client, peer, started).await,
        AtAccept::Decided(a) => (peer, a, None),
    };
    let session = Session::new(&shared, &cfg, &client, peer, mode, started);
    match mode {
        Mode::Transparent => transparent::serve(&session, id, admission, header_error).await,
        _ => connect::serve(&session, id, admission, header_error).await,
    }
}

/// A trusted load balancer's connection: its PROXY header names the real client, who is
/// then admitted. Returns the client's address, the admission, and the header's error (a
/// 400) if it had one.
async fn behind_balancer(
    shared: &Shared,
    cfg: &Config,
    client: &TcpStream,
    balancer: SocketAddr,
    started: Instant,
) -> (SocketAddr, Admission, Option<String>) {
    match proxy_protocol::read(client, started + cfg.proxy.header_timeout).await {
        Ok(proxy_protocol::Parsed::Proxied(real)) => {
            debug!(balancer = %balancer, client = %real, "PROXY header");
            (real, admit(shared, cfg, real), None)
        }
        Ok(proxy_protocol::Parsed::Local) => (balancer, admit(shared, cfg, balancer), None),
        Err(e) => {
            let refusal = Refusal::bad_request(e.to_string());
            (balancer, Err(refusal), Some(e.to_string()))
        }
    }
}
