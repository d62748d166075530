//! The CONNECT task: one connection on the proxy listener, from its admission to its event
//! line. Request head → (absolute-form `http://`: the plain-HTTP forwarder) → credentials
//! → method, target and port → the upstream (parent or direct) → `200` → the tunnel.
//! Refusals before the `200` are answered with their HTTP status.

use tokio::net::TcpStream;

use super::authority::{Authority, parse_authority};
use super::error::ConnError;
use super::handshake::Handshake;
use super::refusal::{RESPONSE_WRITE_LIMIT, Refusal};
use super::request::{self, ESTABLISHED, RequestHead};
use super::session::Session;
use super::upstream::{self, Purpose};
use super::{http_forward, tunnel};
use crate::access::limits::Permit;
use crate::net::splice;
use crate::net::write_all_within;
use crate::telemetry::{ConnectionRecord, Mode, Outcome};

/// Serves one connection of the proxy listener and writes its event line. `note` is a
/// PROXY header's error, if it had one.
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
    if let Some(answer) = result.as_ref().err().and_then(ConnError::answer) {
        answer.answer(s.client).await;
    }
    s.finish(rec, handshake, result);
}

async fn run(
    s: &Session<'_>,
    rec: &mut ConnectionRecord,
    handshake: &mut Handshake,
) -> Result<Outcome, ConnError> {
    let deadline = s.started + s.cfg.proxy.header_timeout;
    let head = request::read_head(s.client, deadline)
        .await
        .map_err(ConnError::ClientRead)?;
    if head.method != "CONNECT" && is_http_url(&head.target) {
        // Plain HTTP: one event line per request, written by the forwarder, which
        // authenticates every request of the connection, the first one included.
        rec.mode = Mode::Http;
        rec.written_elsewhere = true;
        let mut replay = head.raw;
        replay.extend_from_slice(&head.rest);
        return http_forward::serve(s, replay).await;
    }
    rec.user = authenticate(s, &head).await?;
    let target = admit(s, &head, rec)?;
    // Boxed: the dial's state is large and lives only until the upstream answers; held
    // inline it would stay in every tunnel's task for the tunnel's whole life.
    let upstream = Box::pin(connect(s, &target, rec)).await?;
    let active = tunnel::ActiveTunnel::open(&s.shared.metrics.active_tunnels);
    if let Err(e) = write_all_within(s.client, ESTABLISHED, RESPONSE_WRITE_LIMIT).await {
        splice::reset_on_close(&upstream);
        return Err(ConnError::ClientWrite(e));
    }
    tunnel::serve(s, active, &upstream, &target, head.rest, rec, handshake).await
}

/// An absolute-form `http://` request target.
fn is_http_url(target: &str) -> bool {
    target
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

/// Proxy authentication, when configured: 407 without (good) credentials, 429 when the
/// source failed too often. The user goes into the event line.
async fn authenticate(s: &Session<'_>, head: &RequestHead) -> Result<Option<String>, ConnError> {
    let Some(auth) = s.shared.auth.load_full() else {
        return Ok(None);
    };
    auth.check(s.peer.ip(), head.header("proxy-authorization"))
        .await
        .verdict()
        .map_err(|r| ConnError::Refused(Refusal::auth(r, &s.shared.metrics.auth_failures)))
}

/// Method, target and port checks.
fn admit(
    s: &Session<'_>,
    head: &RequestHead,
    rec: &mut ConnectionRecord,
) -> Result<Authority, ConnError> {
    if head.method != "CONNECT" {
        return Err(ConnError::Refused(Refusal::method(&head.method)));
    }
    let target =
        parse_authority(&head.target).map_err(|why| ConnError::Refused(Refusal::target(why)))?;
    rec.target_host = Some(target.host.to_string());
    rec.target_port = Some(target.port);
    tracing::Span::current().record("target", tracing::field::display(&target));
    if !s.cfg.proxy.allowed_ports.contains(&target.port) {
        return Err(ConnError::Refused(Refusal::port(target.port)));
    }
    Ok(target)
}

/// The upstream, through the parent or direct; its address (and the parent) recorded.
async fn connect(
    s: &Session<'_>,
    target: &Authority,
    rec: &mut ConnectionRecord,
) -> Result<TcpStream, ConnError> {
    let metric = &s.shared.metrics.upstream_connect_seconds;
    let up = upstream::open(s.cfg, target, Purpose::Tunnel, metric).await?;
    rec.upstream_ip = Some(crate::net::addr_text::ip_string(up.addr.ip()));
    if let Some(parent) = up.parent {
        rec.note = Some(format!("via parent proxy {parent}"));
    }
    crate::net::nodelay::on_client(s.client);
    Ok(up.stream)
}
