//! The transparent task: one redirected connection, from its admission to its event line.
//! Its original destination is the target; admission as for CONNECT (port allow-list,
//! deny-list, connect timeout); no HTTP is spoken, so a refusal is a close.

use tracing::info;

use super::authority::{Authority, Host};
use super::error::ConnError;
use super::handshake::Handshake;
use super::original_dst;
use super::refusal::Refusal;
use super::session::Session;
use super::tunnel;
use super::upstream::{self, Purpose};
use crate::access::limits::Permit;
use crate::telemetry::{ConnectionRecord, Outcome};

/// Serves one redirected connection and writes its event line.
pub async fn serve(
    s: &Session<'_>,
    id: u64,
    admission: Result<Permit, Refusal>,
    note: Option<String>,
) {
    let (mut rec, mut handshake) = s.start(id, note);
    let result = {
        let serving = std::pin::pin!(run(s, &mut rec, &mut handshake));
        s.admitted(admission, serving).await
    };
    // A transparent client speaks TLS, not HTTP: it gets a close.
    if let Some(r) = result.as_ref().err().and_then(ConnError::answer) {
        info!(outcome = r.outcome.as_str(), reason = %r.reason, "refused");
    }
    s.finish(rec, handshake, result);
}

async fn run(
    s: &Session<'_>,
    rec: &mut ConnectionRecord,
    handshake: &mut Handshake,
) -> Result<Outcome, ConnError> {
    let cfg = s.cfg;
    let tproxy = cfg.transparent_tproxy;
    let original = original_dst::original_destination(s.client, tproxy).map_err(|e| {
        info!(error = %e, "no original destination (was the connection redirected?); closing");
        rec.note = Some(format!("no original destination: {e}"));
        ConnError::OriginalDestination(e)
    })?;
    let dest = original.destination;
    let target = Authority {
        host: Host::Ip(dest.ip()),
        port: dest.port(),
    };
    rec.target_host = Some(target.host.to_string());
    rec.target_port = Some(target.port);
    tracing::Span::current().record("target", tracing::field::display(dest));
    let own = [
        Some(cfg.proxy.listen),
        Some(cfg.admin.listen),
        cfg.transparent_listen,
    ];
    if original_dst::is_loop(&original, tproxy, &own) {
        info!(original = %dest, "refused: the original destination is tlspeek itself (a redirect loop, or not redirected)");
        rec.note = Some("redirect loop: the original destination is tlspeek itself".into());
        return Err(ConnError::RedirectLoop);
    }
    // A STARTTLS port is admitted besides allowed_ports.
    if !cfg.proxy.allowed_ports.contains(&target.port)
        && cfg.starttls.protocol(target.port).is_none()
    {
        return Err(ConnError::Refused(Refusal::port(target.port)));
    }
    let metric = &s.shared.metrics.upstream_connect_seconds;
    // Boxed, as the CONNECT path's dial: its state would stay in every tunnel's task.
    let up = Box::pin(upstream::open(cfg, &target, Purpose::Tunnel, metric)).await?;
    rec.upstream_ip = Some(crate::net::addr_text::ip_string(up.addr.ip()));
    if let Some(parent) = up.parent {
        rec.note = Some(format!("via parent proxy {parent}"));
    }
    crate::net::nodelay::on_client(s.client);
    let active = tunnel::ActiveTunnel::open(&s.shared.metrics.active_tunnels);
    tunnel::serve(s, active, &up.stream, &target, Vec::new(), rec, handshake).await
}
