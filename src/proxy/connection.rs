//! An accepted connection before its task: the source allow-list and a connection permit
//! (checked at accept, before spawning), a trusted balancer's PROXY header, and the hand-off
//! to the task of the listener's mode — `connect` (the proxy listener) or `transparent`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::refusal::Refusal;
use super::session::Session;
use super::{connect, transparent};
use super::{original_dst, proxy_protocol};
use crate::access::limits::Permit;
use crate::config::Config;
use crate::local_process::{self, LocalProcess};
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
    let behind = matches!(at_accept, AtAccept::AfterProxyHeader);
    let (peer, admission, header_error) = match at_accept {
        AtAccept::AfterProxyHeader => behind_balancer(&shared, &cfg, &client, peer, started).await,
        AtAccept::Decided(a) => (peer, a, None),
    };
    let process = if header_error.is_none() && !behind {
        local_process(&shared, &cfg, &client, peer, mode).await
    } else {
        None
    };
    let mut session = Session::new(&shared, &cfg, &client, peer, mode, started);
    session.process = process;
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

/// The process of a caller on this host (loopback, or the address it reached us on);
/// `None` for every other source, which costs nothing. The caller's socket sees the proxy
/// as its peer, or (transparent mode) the destination it meant.
async fn local_process(
    shared: &Arc<Shared>,
    cfg: &Config,
    client: &TcpStream,
    peer: SocketAddr,
    mode: Mode,
) -> Option<LocalProcess> {
    if !cfg.proxy.name_local_processes {
        return None;
    }
    let accepted_on = client.local_addr().ok()?;
    if !local_process::is_local(peer, accepted_on) {
        return None;
    }
    let remote = match mode {
        Mode::Transparent => {
            original_dst::original_destination(client, cfg.transparent_tproxy)
                .ok()?
                .destination
        }
        _ => accepted_on,
    };
    let names = shared.local_processes.clone();
    let found = tokio::task::spawn_blocking(move || names.name(peer, remote))
        .await
        .ok()
        .flatten();
    shared
        .metrics
        .local_process_lookups
        .with_label_values(&[if found.is_some() { "named" } else { "unknown" }])
        .inc();
    if let Some(p) = &found {
        debug!(process = %p.exe, process_user = %p.user, pid = p.pid, "local caller");
    }
    found
}
