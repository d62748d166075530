//! One connection on the proxy listener, from accept to its single event line:
//! request head → admission → upstream connect → `200` → first-flight peek (while upstream
//! bytes already flow to the client) → classify → policy → splice.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::admission::{self, ConnectError};
use super::authority::{Authority, Host, parse_authority};
use super::handshake::HandshakeWatch;
use super::proxy_protocol;
use super::request::{self, ESTABLISHED, HeadError, RequestHead};
use super::transparent;
use super::tunnel::{TunnelEnd, UpgradePlan};
use super::{http_forward, parent};
use crate::access::auth::AuthRefusal;
use crate::access::limits::{LimitHit, Permit};
use crate::config::Config;
use crate::net::splice::{self, TunnelStats};
use crate::net::{lingering_close, write_all_within};
use crate::shared::Shared;
use crate::telemetry::{ConnectionRecord, Mode, Outcome, SourceLabel, source_label};

/// Writing a refusal (or the 200) to a client gets at most this long.
const RESPONSE_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// A refusal before the tunnel exists: the HTTP answer and the outcome it counts as.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub phrase: &'static str,
    pub reason: String,
    pub outcome: Outcome,
    /// Extra response header lines (`Name: value`), e.g. `Allow` with a 405.
    pub headers: Vec<&'static str>,
}

impl Refusal {
    pub(super) fn new(
        status: u16,
        phrase: &'static str,
        outcome: Outcome,
        reason: impl Into<String>,
    ) -> Refusal {
        Refusal {
            status,
            phrase,
            reason: reason.into(),
            outcome,
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, line: &'static str) -> Refusal {
        self.headers.push(line);
        self
    }

    pub(super) fn bad_request(reason: impl Into<String>) -> Refusal {
        Refusal::new(400, "Bad Request", Outcome::BadRequest, reason)
    }

    /// Proxy authentication's 407/429, counted in `tlspeek_auth_failures_total{reason}`:
    /// the one mapping for CONNECT and every plain-HTTP request.
    pub(super) fn auth(r: AuthRefusal, failures: &prometheus::IntCounterVec) -> Refusal {
        failures.with_label_values(&[r.metric_reason]).inc();
        Refusal::new(r.status, r.phrase, Outcome::AuthRequired, r.reason).with_header(r.header)
    }

    /// The answer to a source outside `allowed_sources`.
    pub fn source(ip: IpAddr) -> Refusal {
        Refusal::new(
            403,
            "Forbidden",
            Outcome::RefusedSource,
            format!(
                "source {} is not allowed to use this proxy",
                ip.to_canonical()
            ),
        )
    }

    pub fn limit(hit: LimitHit) -> Refusal {
        let reason = match hit {
            LimitHit::Global => "too many connections (max_connections)",
            LimitHit::PerSource => {
                "too many connections from this source (max_connections_per_source)"
            }
        };
        Refusal::new(503, "Service Unavailable", Outcome::RefusedLimit, reason)
    }
}

/// What happened before the tunnel, decided at accept time.
pub enum Admission {
    Admitted(Permit),
    Refused(Refusal),
    /// A trusted load balancer: read its PROXY header, then admit the real client.
    AfterProxyHeader,
}

/// The source allow-list, then a connection permit.
pub fn admit(shared: &Shared, cfg: &Config, peer: SocketAddr) -> Admission {
    if !cfg.proxy.allowed_sources.contains(peer.ip()) {
        return Admission::Refused(Refusal::source(peer.ip()));
    }
    match shared.limits.try_acquire(peer.ip()) {
        Ok(p) => Admission::Admitted(p),
        Err(hit) => Admission::Refused(Refusal::limit(hit)),
    }
}

/// Keeps `tlspeek_active_tunnels` right however the tunnel ends.
struct ActiveTunnel<'a>(&'a prometheus::IntGauge);

impl<'a> ActiveTunnel<'a> {
    fn open(g: &'a prometheus::IntGauge) -> ActiveTunnel<'a> {
        g.inc();
        ActiveTunnel(g)
    }
}

impl Drop for ActiveTunnel<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one accepted connection and writes its event line.
pub async fn handle(
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    client: TcpStream,
    peer: SocketAddr,
    id: u64,
    admission: Admission,
    mode: Mode,
) {
    let started = Instant::now();
    let (peer, admission, header_error) = match admission {
        Admission::AfterProxyHeader => behind_balancer(&shared, &cfg, &client, peer, started).await,
        other => (peer, other, None),
    };
    let src = source_label(&cfg, peer.ip());
    let mut rec = ConnectionRecord::new(id, mode, peer, src.value.clone());
    rec.note = header_error;
    let stats = Arc::new(TunnelStats::new());
    let watch = HandshakeWatch::new();
    let outcome = match admission {
        Admission::Refused(refusal) => {
            match mode {
                Mode::Connect => refuse(&client, &refusal).await,
                // A transparent client speaks TLS, not HTTP: it gets a close.
                _ => info!(outcome = refusal.outcome.as_str(), reason = %refusal.reason, "refused"),
            }
            refusal.outcome
        }
        Admission::AfterProxyHeader => Outcome::InternalError,
        Admission::Admitted(_permit) => {
            let conn = Conn {
                shared: &shared,
                cfg: &cfg,
                client: &client,
                peer,
                src: &src,
                stats: &stats,
                watch: &watch,
                mode,
            };
            conn.serve_until_stopped(&mut rec, started).await
        }
    };
    finish(&shared, rec, &stats, &watch, outcome, started, peer.ip());
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
            (balancer, Admission::Refused(refusal), Some(e.to_string()))
        }
    }
}

/// The connection's end: its final verdict and outcome, bytes and duration into the record,
/// `tlspeek_connections_total`, and its event line (unless the plain-HTTP forwarder wrote
/// one per request; the record's mode is then `http`, and only then differs from the
/// listener's).
fn finish(
    shared: &Shared,
    mut rec: ConnectionRecord,
    stats: &TunnelStats,
    watch: &HandshakeWatch,
    outcome: Outcome,
    started: Instant,
    peer_ip: IpAddr,
) {
    watch.finish(&mut rec);
    let outcome = outcome.after_server_alert(rec.server_alert.is_some());
    if let Some(dns) = &shared.dns {
        rec.source_name = dns.cached(peer_ip);
    }
    rec.outcome = outcome;
    rec.bytes_up = stats.up();
    rec.bytes_down = stats.down();
    rec.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if rec.written_elsewhere {
        return;
    }
    shared.metrics.connection_ended(rec.mode, outcome);
    debug!(
        outcome = outcome.as_str(),
        bytes_up = rec.bytes_up,
        bytes_down = rec.bytes_down,
        duration_ms = rec.duration_ms,
        "connection ended"
    );
    shared.events.write(&rec);
}

/// Answers a refusal, then closes so that the client reads the answer (`lingering_close`).
async fn refuse(client: &TcpStream, r: &Refusal) {
    info!(
        outcome = r.outcome.as_str(),
        status = r.status,
        reason = %r.reason,
        "refused"
    );
    let resp = request::refusal_response(r.status, r.phrase, &r.reason, &r.headers);
    if write_all_within(client, &resp, RESPONSE_WRITE_LIMIT)
        .await
        .is_err()
    {
        return;
    }
    lingering_close(client).await;
}

/// The connection being served.
pub(super) struct Conn<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) cfg: &'a Arc<Config>,
    pub(super) client: &'a TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) src: &'a SourceLabel,
    pub(super) stats: &'a Arc<TunnelStats>,
    pub(super) watch: &'a HandshakeWatch,
    pub(super) mode: Mode,
}

fn head_refusal(e: &HeadError) -> Option<Refusal> {
    let r = match e {
        HeadError::TooLarge => Refusal::new(
            431,
            "Request Header Fields Too Large",
            Outcome::BadRequest,
            e.to_string(),
        ),
        HeadError::Timeout => {
            Refusal::new(408, "Request Timeout", Outcome::BadRequest, e.to_string())
        }
        HeadError::Malformed(_) => {
            Refusal::new(400, "Bad Request", Outcome::BadRequest, e.to_string())
        }
        HeadError::ClosedEarly { .. } | HeadError::Io(_) => return None,
    };
    Some(r)
}

pub(super) fn connect_refusal(e: &ConnectError) -> Refusal {
    match e {
        ConnectError::Dns { .. } => {
            Refusal::new(502, "Bad Gateway", Outcome::DnsFailed, e.to_string())
        }
        ConnectError::Denied { .. } => {
            Refusal::new(403, "Forbidden", Outcome::RefusedDestination, e.to_string())
        }
        ConnectError::Timeout { .. } => Refusal::new(
            504,
            "Gateway Timeout",
            Outcome::ConnectTimeout,
            e.to_string(),
        ),
        ConnectError::Failed { .. } => {
            Refusal::new(502, "Bad Gateway", Outcome::ConnectFailed, e.to_string())
        }
    }
}

impl Conn<'_> {
    /// Serves the admitted connection until it ends, or until the shutdown grace is over.
    async fn serve_until_stopped(&self, rec: &mut ConnectionRecord, started: Instant) -> Outcome {
        if let Some(dns) = &self.shared.dns {
            dns.lookup_later(self.peer.ip());
        }
        let serving = async {
            match self.mode {
                Mode::Transparent => self.serve_transparent(rec).await,
                _ => self.serve(rec, started).await,
            }
        };
        tokio::select! {
            outcome = serving => outcome,
            _ = self.shared.hard_stop.cancelled() => {
                debug!("shutdown grace over: closing the tunnel");
                Outcome::Closed
            }
        }
    }

    async fn serve(&self, rec: &mut ConnectionRecord, started: Instant) -> Outcome {
        let head =
            match request::read_head(self.client, started + self.cfg.proxy.header_timeout).await {
                Ok(h) => h,
                Err(e) => {
                    return match head_refusal(&e) {
                        Some(r) => {
                            refuse(self.client, &r).await;
                            r.outcome
                        }
                        None => {
                            debug!(error = %e, "client left before a whole request");
                            match e {
                                HeadError::Io(_) => Outcome::ClientReset,
                                // Connected and closed without a byte: a port probe or
                                // a health check, not a bad request.
                                HeadError::ClosedEarly { got: 0 } => Outcome::Closed,
                                _ => Outcome::BadRequest,
                            }
                        }
                    };
                }
            };
        if head.method != "CONNECT"
            && head
                .target
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        {
            // Plain HTTP: one event line per request, written by the forwarder.
            rec.mode = Mode::Http;
            rec.written_elsewhere = true;
            let mut replay = head.raw;
            replay.extend_from_slice(&head.rest);
            // Every request of the connection is authenticated by the forwarder, the
            // first one included: hyper serves the ones after it.
            let ctx = Arc::new(http_forward::HttpClient {
                shared: self.shared.clone(),
                cfg: self.cfg.clone(),
                peer: self.peer,
                src: self.src.clone(),
            });
            return http_forward::serve(self.client, replay, ctx).await;
        }
        if let Err(r) = self.authenticate(&head, rec).await {
            refuse(self.client, &r).await;
            return r.outcome;
        }
        let target = match self.admit(&head, rec) {
            Ok(t) => t,
            Err(r) => {
                refuse(self.client, &r).await;
                return r.outcome;
            }
        };
        let upstream = match self.connect(&target, rec).await {
            Ok(u) => u,
            Err(r) => {
                refuse(self.client, &r).await;
                return r.outcome;
            }
        };
        if write_all_within(self.client, ESTABLISHED, RESPONSE_WRITE_LIMIT)
            .await
            .is_err()
        {
            splice::reset_on_close(&upstream);
            return Outcome::ClientReset;
        }
        let _active = ActiveTunnel::open(&self.shared.metrics.active_tunnels);
        let _listed = self.list(rec.id, &target);
        match self.tunnel(&upstream, &target, head.rest, rec).await {
            TunnelEnd::Done(outcome) => outcome,
            TunnelEnd::Upgrade { held, plan } => self.upgrade(&upstream, held, plan, rec).await,
        }
    }

    /// Re-originates the connection with TLS 1.2+ (the tunnel's pumps are stopped and the
    /// client's hello is held, not forwarded).
    async fn upgrade(
        &self,
        upstream: &TcpStream,
        held: Vec<u8>,
        plan: UpgradePlan,
        rec: &mut ConnectionRecord,
    ) -> Outcome {
        let p = &self.cfg.proxy;
        let r = plan
            .upgrader
            .run(crate::upgrade::UpgradeJob {
                client: self.client,
                upstream,
                held,
                hello: &plan.hello,
                name: &plan.name,
                handshake_timeout: p.connect_timeout,
                idle: p.idle_timeout,
                stats: self.stats,
                metrics: &self.shared.metrics,
            })
            .await;
        rec.upstream_version = r.upstream_version;
        rec.upstream_cipher = r.upstream_cipher.clone();
        rec.user_agent = r.user_agent.clone();
        rec.request = r.request.clone();
        if let Some(e) = &r.error {
            rec.note = Some(format!("upgrade failed: {e}"));
        }
        if let (Some(v), Some(c)) = (r.client_version, r.client_cipher) {
            self.watch
                .upgraded(v, c, r.user_agent.as_deref(), r.request.as_deref());
        }
        r.outcome.unwrap_or(Outcome::InternalError)
    }

    /// A redirected connection: its original destination is the target; admission as for
    /// CONNECT (port allow-list, deny-list, connect timeout); no HTTP is spoken.
    async fn serve_transparent(&self, rec: &mut ConnectionRecord) -> Outcome {
        let cfg = self.cfg;
        let tproxy = cfg.transparent_tproxy;
        let original = match transparent::original_destination(self.client, tproxy) {
            Ok(a) => a,
            Err(e) => {
                info!(error = %e, "no original destination (was the connection redirected?); closing");
                rec.note = Some(format!("no original destination: {e}"));
                return Outcome::BadRequest;
            }
        };
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
        if transparent::is_loop(&original, tproxy, &own) {
            info!(original = %dest, "refused: the original destination is tlspeek itself (a redirect loop, or not redirected)");
            rec.note = Some("redirect loop: the original destination is tlspeek itself".into());
            return Outcome::RefusedDestination;
        }
        if !cfg.proxy.allowed_ports.contains(&target.port) {
            info!(port = target.port, "refused: port not allowed");
            return Outcome::RefusedPort;
        }
        let upstream = match self.connect(&target, rec).await {
            Ok(u) => u,
            Err(r) => {
                info!(outcome = r.outcome.as_str(), reason = %r.reason, "refused");
                return r.outcome;
            }
        };
        let _active = ActiveTunnel::open(&self.shared.metrics.active_tunnels);
        let _listed = self.list(rec.id, &target);
        match self.tunnel(&upstream, &target, Vec::new(), rec).await {
            TunnelEnd::Done(outcome) => outcome,
            TunnelEnd::Upgrade { held, plan } => self.upgrade(&upstream, held, plan, rec).await,
        }
    }

    /// Lists the tunnel in `/debug/tunnels` while the returned guard lives.
    fn list(&self, id: u64, target: &Authority) -> crate::net::registry::Listed<'_> {
        self.shared.tunnels.list(
            id,
            self.peer,
            format!("{}:{}", target.host, target.port),
            self.stats,
        )
    }

    /// Proxy authentication, when configured: 407 without (good) credentials, 429 when the
    /// source failed too often. The user goes into the event line.
    async fn authenticate(
        &self,
        head: &RequestHead,
        rec: &mut ConnectionRecord,
    ) -> Result<(), Refusal> {
        let Some(auth) = self.shared.auth.load_full() else {
            return Ok(());
        };
        let verdict = auth
            .check(self.peer.ip(), head.header("proxy-authorization"))
            .await
            .verdict();
        rec.user = verdict.map_err(|r| Refusal::auth(r, &self.shared.metrics.auth_failures))?;
        Ok(())
    }

    /// Method, target and port checks.
    fn admit(&self, head: &RequestHead, rec: &mut ConnectionRecord) -> Result<Authority, Refusal> {
        if head.method != "CONNECT" {
            return Err(Refusal::new(
                405,
                "Method Not Allowed",
                Outcome::BadRequest,
                format!(
                    "method {} is not supported here; use CONNECT host:port",
                    sanitize(&head.method)
                ),
            )
            .with_header("Allow: CONNECT"));
        }
        let target = parse_authority(&head.target).map_err(|why| {
            Refusal::new(
                400,
                "Bad Request",
                Outcome::BadRequest,
                format!("bad CONNECT target: {why}"),
            )
        })?;
        rec.target_host = Some(target.host.to_string());
        rec.target_port = Some(target.port);
        tracing::Span::current().record(
            "target",
            tracing::field::display(format!("{}:{}", target.host, target.port)),
        );
        if !self.cfg.proxy.allowed_ports.contains(&target.port) {
            return Err(Refusal::new(
                403,
                "Forbidden",
                Outcome::RefusedPort,
                format!("port {} is not allowed", target.port),
            ));
        }
        Ok(target)
    }

    async fn connect(
        &self,
        target: &Authority,
        rec: &mut ConnectionRecord,
    ) -> Result<TcpStream, Refusal> {
        let p = &self.cfg.proxy;
        if let Some(parent) = &self.cfg.upstream_proxy {
            let started = Instant::now();
            let (upstream, addr) =
                parent::tunnel(parent, target, &p.deny_destinations, p.connect_timeout)
                    .await
                    .map_err(|e| match e {
                        parent::ParentError::Connect(c) => connect_refusal(&c),
                        other => Refusal::new(
                            502,
                            "Bad Gateway",
                            Outcome::ConnectFailed,
                            other.to_string(),
                        ),
                    })?;
            self.shared
                .metrics
                .upstream_connect_seconds
                .observe(started.elapsed().as_secs_f64());
            rec.upstream_ip = Some(addr.ip().to_string());
            rec.note = Some(format!("via parent proxy {}:{}", parent.host, parent.port));
            let _ = self.client.set_nodelay(true);
            return Ok(upstream);
        }
        let (upstream, addr) = admission::connect_checked(
            target,
            &p.deny_destinations,
            p.connect_timeout,
            &self.shared.metrics.upstream_connect_seconds,
        )
        .await
        .map_err(|e| connect_refusal(&e))?;
        rec.upstream_ip = Some(addr.ip().to_string());
        let _ = self.client.set_nodelay(true);
        Ok(upstream)
    }
}

/// A method name for a log or a response body: printable ASCII only, capped.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_status_and_outcome() {
        let r = head_refusal(&HeadError::TooLarge).unwrap();
        assert_eq!((r.status, r.outcome), (431, Outcome::BadRequest));
        assert_eq!(head_refusal(&HeadError::Timeout).unwrap().status, 408);
        assert!(head_refusal(&HeadError::ClosedEarly { got: 0 }).is_none());
        let dns = ConnectError::Dns {
            host: "x".into(),
            reason: "nx".into(),
        };
        assert_eq!(connect_refusal(&dns).outcome, Outcome::DnsFailed);
        assert_eq!(
            connect_refusal(&ConnectError::Timeout { tried: 2 }).status,
            504
        );
        assert_eq!(
            Refusal::source("::ffff:8.8.8.8".parse().unwrap()).reason,
            "source 8.8.8.8 is not allowed to use this proxy"
        );
        assert_eq!(sanitize("GE\r\nT\u{7f}x"), "GETx");
    }
}
