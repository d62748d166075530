//! A tunnel once the upstream is open (and, for CONNECT, the `200` sent): upstream → client
//! flows at once through the ServerHello tap; client → upstream waits for the first-flight
//! peek; then the policy passes (both pumps), blocks (a TLS alert) or upgrades (TLS 1.2+
//! re-originated by `upgrade::Upgrader`) the connection. On a STARTTLS port the cleartext
//! prelude (`prelude`) comes first; a session that never upgrades is passed on as it is.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::authority::Authority;
use super::error::ConnError;
use super::first_flight::{self, Act, Judged, UpgradePlan};
use super::handshake::{Handshake, ServerHelloTap, ServerOutcome};
use super::peek::{FirstFlight, Peeked, peek_client_hello};
use super::prelude::{self, PreludeEnd};
use super::retired;
use super::session::Session;
use crate::config::OnHelloTimeout;
use crate::net::splice::{self, NoTap, PumpError, Side};
use crate::net::{lingering_close, write_all_within};
use crate::starttls::Protocol;
use crate::telemetry::{ConnectionRecord, Outcome};
use crate::upgrade::{UpgradeJob, UpgradeReport};

/// Keeps `tlspeek_active_tunnels` right however the tunnel ends. Opened before the
/// client hears `200`, so that a client which has its tunnel finds it counted.
pub struct ActiveTunnel<'a>(&'a prometheus::IntGauge);

impl<'a> ActiveTunnel<'a> {
    pub fn open(g: &'a prometheus::IntGauge) -> ActiveTunnel<'a> {
        g.inc();
        ActiveTunnel(g)
    }
}

impl Drop for ActiveTunnel<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How the relay phase ended.
enum TunnelEnd {
    Done(Outcome),
    /// Upgrade: the held ClientHello has not gone upstream; the pumps are stopped.
    Upgrade {
        held: Vec<u8>,
        plan: UpgradePlan,
    },
}

/// Serves the open tunnel to its end: counted in `tlspeek_active_tunnels` while `_active`
/// lives, listed in `/debug/tunnels`. `early` is what the client sent after its request head.
pub async fn serve(
    s: &Session<'_>,
    _active: ActiveTunnel<'_>,
    upstream: &TcpStream,
    target: &Authority,
    early: Vec<u8>,
    rec: &mut ConnectionRecord,
    handshake: &mut Handshake,
) -> Result<Outcome, ConnError> {
    let _listed = s.list(rec.id, target);
    let early = match s.cfg.starttls.protocol(target.port) {
        None => early,
        Some(protocol) => match starttls_prelude(s, upstream, protocol, early, rec).await? {
            PreludeEnd::Tls { early } => early,
            PreludeEnd::Plain {
                client_done,
                upstream_done,
                ..
            } => {
                return cleartext(
                    s,
                    upstream,
                    target,
                    rec,
                    handshake,
                    client_done,
                    upstream_done,
                )
                .await;
            }
        },
    };
    match relay(s, upstream, target, early, rec, handshake).await? {
        TunnelEnd::Done(outcome) => Ok(outcome),
        // Boxed: re-origination's state (two TLS sessions) would otherwise make every
        // tunnel's task as large, upgraded or not.
        TunnelEnd::Upgrade { held, plan } => {
            Box::pin(upgrade(s, upstream, held, plan, rec, handshake)).await
        }
    }
}

/// A STARTTLS port: the cleartext prelude first, relayed, counted in
/// `tlspeek_starttls_sessions_total` and, when it stays in cleartext, logged.
async fn starttls_prelude(
    s: &Session<'_>,
    upstream: &TcpStream,
    protocol: Protocol,
    early: Vec<u8>,
    rec: &mut ConnectionRecord,
) -> Result<PreludeEnd, ConnError> {
    rec.starttls = Some(protocol.as_str());
    let counted = |upgraded: &str| {
        s.shared
            .metrics
            .starttls_sessions
            .with_label_values(&[protocol.as_str(), upgraded])
            .inc();
    };
    match prelude::relay(s, upstream, protocol, early).await {
        Ok(end @ PreludeEnd::Tls { .. }) => {
            counted("true");
            Ok(end)
        }
        Ok(end @ PreludeEnd::Plain { why, .. }) => {
            counted("false");
            info!(
                starttls = protocol.as_str(),
                why, "STARTTLS session did not upgrade: passing it on in cleartext"
            );
            Ok(end)
        }
        Err(e) => {
            counted("false");
            Err(reset_other(s, upstream, e))
        }
    }
}

/// A STARTTLS session that stayed in cleartext: `not_tls`, both pumps, nothing watched.
async fn cleartext(
    s: &Session<'_>,
    upstream: &TcpStream,
    target: &Authority,
    rec: &mut ConnectionRecord,
    handshake: &mut Handshake,
    client_done: bool,
    upstream_done: bool,
) -> Result<Outcome, ConnError> {
    let m = &s.shared.metrics;
    let _ = first_flight::judge(s, FirstFlight::NotTls, target, rec, handshake);
    let (mut no_tap_up, mut no_tap_down) = (NoTap, NoTap);
    let up_flow = s.stats.flow(Side::Client, &m.bytes_up);
    let down_flow = s.stats.flow(Side::Upstream, &m.bytes_down);
    let up = pin!(splice::pump(s.client, upstream, up_flow, &mut no_tap_up));
    let down = pin!(splice::pump(
        upstream,
        s.client,
        down_flow,
        &mut no_tap_down
    ));
    Pumps {
        up,
        down,
        up_done: client_done,
        down_done: upstream_done,
    }
    .run(s, upstream, handshake)
    .await
}

/// The peek (upstream → client already flowing), the policy, then both pumps.
async fn relay(
    s: &Session<'_>,
    upstream: &TcpStream,
    target: &Authority,
    early: Vec<u8>,
    rec: &mut ConnectionRecord,
    handshake: &mut Handshake,
) -> Result<TunnelEnd, ConnError> {
    let m = &s.shared.metrics;
    let (mut tap, answer) = ServerHelloTap::new();
    handshake.watch(answer);
    let down_flow = s.stats.flow(Side::Upstream, &m.bytes_down);
    let mut down = pin!(splice::pump(upstream, s.client, down_flow, &mut tap));
    let (mut peeked, down_done) = peek_first_flight(s, upstream, early, down.as_mut()).await?;
    let timed_out = matches!(peeked.flight, FirstFlight::TimedOut { .. });
    let flight = std::mem::replace(&mut peeked.flight, FirstFlight::Nothing);
    let judged = first_flight::judge(s, flight, target, rec, handshake);
    if timed_out && s.cfg.proxy.on_hello_timeout == OnHelloTimeout::Close {
        debug!("no ClientHello within hello_timeout: closing (on_hello_timeout = close)");
        return Err(ConnError::ClientHelloTimeout);
    }
    let unrecorded = match judged {
        Judged::QuietPass(hello) => Some(hello),
        Judged::Act(Act::Pass) => None,
        Judged::Act(Act::Block(alert)) => {
            let _ = write_all_within(s.client, &alert, Duration::from_secs(2)).await;
            lingering_close(s.client).await;
            return Ok(TunnelEnd::Done(Outcome::Blocked));
        }
        Judged::Act(Act::Upgrade(plan)) if s.stats.down() == 0 => {
            return Ok(TunnelEnd::Upgrade {
                held: peeked.held,
                plan,
            });
        }
        Judged::Act(Act::Upgrade(_)) => {
            // The server spoke before the client's hello: not TLS as we know it.
            warn!("cannot upgrade: the upstream sent bytes before the ClientHello; passing");
            rec.note = Some("not upgraded: the upstream spoke first".into());
            None
        }
    };
    // Taken, and dropped once sent: the tunnel lives on, the hello's bytes need not.
    let held = std::mem::take(&mut peeked.held);
    // One attempt first, which sends a whole hello into a fresh connection's buffer; then
    // the hello's record, which the server need not wait for; then, only if the upstream
    // took less, the wait for the rest (the record is never held up by a slow upstream).
    // The down pump is not polled in between, so the server's answer is read after the
    // hello side is handed over.
    let sent = {
        let mut sending = pin!(splice::write_all(upstream, &held));
        let first = std::future::poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await;
        if let Some(hello) = unrecorded {
            hello.record(s, target, rec, handshake);
        }
        match first {
            Poll::Ready(sent) => sent,
            Poll::Pending => sending.await,
        }
    };
    if let Err(error) = sent {
        return Err(reset_other(
            s,
            upstream,
            PumpError {
                culprit: Side::Upstream,
                error,
            },
        ));
    }
    let up_flow = s.stats.flow(Side::Client, &m.bytes_up);
    up_flow.moved(held.len());
    drop(held);
    if peeked.client_eof {
        let _ = socket2::SockRef::from(upstream).shutdown(std::net::Shutdown::Write);
    }
    let mut no_tap = NoTap;
    let up = pin!(splice::pump(s.client, upstream, up_flow, &mut no_tap));
    let both = Pumps {
        up,
        down,
        up_done: peeked.client_eof,
        down_done,
    };
    both.run(s, upstream, handshake).await.map(TunnelEnd::Done)
}

/// Reads the client's first flight while the upstream's bytes already flow to it. Returns
/// what was read, and whether the upstream side has ended meanwhile.
async fn peek_first_flight(
    s: &Session<'_>,
    upstream: &TcpStream,
    early: Vec<u8>,
    mut down: Pin<&mut impl Future<Output = Result<(), PumpError>>>,
) -> Result<(Peeked, bool), ConnError> {
    let mut down_done = false;
    let mut peek = pin!(peek_client_hello(
        s.client,
        early,
        s.cfg.proxy.hello_timeout
    ));
    loop {
        tokio::select! {
            p = &mut peek => {
                return match p {
                    Ok(p) => Ok((p, down_done)),
                    Err(error) => Err(reset_other(s, upstream, PumpError { culprit: Side::Client, error })),
                };
            }
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(e) => return Err(reset_other(s, upstream, e)),
            },
        }
    }
}

/// Both directions of a passed tunnel, until both end, one fails, or `idle_timeout`.
struct Pumps<'d, U, D> {
    up: Pin<&'d mut U>,
    down: Pin<&'d mut D>,
    up_done: bool,
    down_done: bool,
}

impl<U, D> Pumps<'_, U, D>
where
    U: Future<Output = Result<(), PumpError>>,
    D: Future<Output = Result<(), PumpError>>,
{
    /// Also takes the server's answer to the hello (the tap's finding) as soon as it
    /// arrives, so that the negotiated metrics and the inventory move at once: the tap runs
    /// inside the down pump, so its finding is read right after each poll of that pump,
    /// with no waker (`Handshake::try_answer`). The branches keep `select!`'s random order,
    /// so that neither direction of a busy tunnel can take every turn.
    async fn run(
        mut self,
        s: &Session<'_>,
        upstream: &TcpStream,
        handshake: &mut Handshake,
    ) -> Result<Outcome, ConnError> {
        let mut idle = pin!(splice::idle_watch(
            &s.stats.activity,
            s.cfg.proxy.idle_timeout
        ));
        // One timer for the answer's deadline, armed only while the answer is awaited.
        let deadline = handshake.answer_deadline();
        let mut answer_late = pin!(tokio::time::sleep_until(
            deadline.unwrap_or_else(tokio::time::Instant::now)
        ));
        loop {
            if self.up_done && self.down_done {
                return Ok(Outcome::Closed);
            }
            let waiting = handshake.waiting();
            let down_done = self.down_done;
            let down = &mut self.down;
            tokio::select! {
                r = &mut self.up, if !self.up_done => match r {
                    Ok(()) => self.up_done = true,
                    Err(e) => return Err(reset_other(s, upstream, e)),
                },
                // The down pump, then at once the tap's finding (the tap runs inside that
                // pump: what it found is there right after the poll, with no waker).
                event = std::future::poll_fn(|cx| {
                    if !down_done {
                        if let Poll::Ready(r) = down.as_mut().poll(cx) {
                            return Poll::Ready(DownEvent::Ended(r));
                        }
                    }
                    match handshake.try_answer() {
                        Some(answer) => Poll::Ready(DownEvent::Answer(answer)),
                        None => Poll::Pending,
                    }
                }), if !down_done || waiting => match event {
                    DownEvent::Ended(Ok(())) => self.down_done = true,
                    DownEvent::Ended(Err(e)) => return Err(reset_other(s, upstream, e)),
                    DownEvent::Answer(answer) => handshake.answered(s.shared, answer),
                },
                _ = &mut answer_late, if waiting && deadline.is_some() => {
                    handshake.answer_timed_out(s.shared);
                }
                _ = &mut idle => {
                    debug!(idle_timeout = ?s.cfg.proxy.idle_timeout, "tunnel idle: closing");
                    return Err(ConnError::IdleTimeout);
                }
            }
        }
    }
}

/// What the down pump's branch brings: the pump's end, or the tap's finding.
enum DownEvent {
    Ended(Result<(), PumpError>),
    Answer(ServerOutcome),
}

/// One side failed: reset the other, so a cut-off stream never looks complete.
fn reset_other(s: &Session<'_>, upstream: &TcpStream, e: PumpError) -> ConnError {
    debug!(culprit = ?e.culprit, error = %e.error, "tunnel side failed: resetting the other");
    splice::reset_on_close(match e.culprit {
        Side::Client => upstream,
        Side::Upstream => s.client,
    });
    ConnError::from(e)
}

/// Re-originates the connection with TLS 1.2+ (the pumps are stopped and the client's
/// hello is held, not forwarded).
async fn upgrade(
    s: &Session<'_>,
    upstream: &TcpStream,
    held: Vec<u8>,
    plan: UpgradePlan,
    rec: &mut ConnectionRecord,
    handshake: &mut Handshake,
) -> Result<Outcome, ConnError> {
    let p = &s.cfg.proxy;
    let mut r = UpgradeReport::default();
    let job = UpgradeJob {
        client: s.client,
        upstream,
        held,
        hello: &plan.hello,
        name: &plan.name,
        handshake_timeout: p.connect_timeout,
        idle: p.idle_timeout,
        stats: &s.stats,
        metrics: &s.shared.metrics,
    };
    let result = plan.upgrader.run(job, &mut r).await;
    rec.upstream_version = r.upstream_version;
    rec.upstream_cipher = r.upstream_cipher.clone();
    rec.user_agent = r.user_agent.clone();
    rec.request = r.request.clone();
    if let Some(ua) = &r.user_agent {
        if let Some(inv) = &s.shared.inventory {
            inv.record_agent(&rec.source_ip, ua);
        }
        // Later connections with this hello that pass without upgrade are named by it.
        if let Some(ja4) = &rec.ja4 {
            s.shared
                .learned_agents
                .learn(ja4, ua, crate::clock::unix_now());
        }
    }
    if let Err(e) = &result {
        rec.note = Some(format!("upgrade failed: {e}"));
    }
    // An entry with paths: the request says whether this call is one of its.
    if let Some(path) = r.request.as_deref().and_then(retired::request_path) {
        if let Some(d) = s.cfg.path_deprecation_of(&plan.name, path) {
            handshake.retired_path(s.shared, d, path);
        }
    }
    if let (Some(v), Some(c)) = (r.client_version, r.client_cipher) {
        handshake.upgraded(
            s.shared,
            (v, c),
            r.user_agent.as_deref(),
            r.request.as_deref(),
        );
    }
    result.map_err(ConnError::Upgrade)
}
