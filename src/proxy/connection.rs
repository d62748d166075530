//! One connection on the proxy listener, from accept to its single event line:
//! request head → admission → upstream connect → `200` → first-flight peek (while upstream
//! bytes already flow to the client) → classify → policy → splice.

use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::Shared;
use super::admission::{self, ConnectError, LimitHit, Permit};
use super::authority::{Authority, parse_authority};
use super::handshake::{HandshakeWatch, HelloContext};
use super::peek::{FirstFlight, peek_client_hello};
use super::request::{self, ESTABLISHED, HeadError, RequestHead};
use super::splice::{self, Flow, PumpError, Side, SpliceEnd, TunnelStats};
use crate::config::{Config, OnHelloTimeout};
use crate::hello::{self, ClientHelloSummary};
use crate::inventory::Observation;
use crate::inventory::software::{Facts, SoftwareDb};
use crate::inventory::writer::unix_now as unix_secs;
use crate::names::HostName;
use crate::policy;
use crate::telemetry::{
    ActionTaken, ConnectionRecord, Kind, Mode, Outcome, SourceLabel, Who, destination_label,
    source_label,
};

/// Writing a refusal (or the 200) to a client gets at most this long.
const RESPONSE_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// A refusal before the tunnel exists: the HTTP answer and the outcome it counts as.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub phrase: &'static str,
    pub reason: String,
    pub outcome: Outcome,
}

impl Refusal {
    fn new(
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
        }
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
pub type Admission = Result<Permit, Refusal>;

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
) {
    let started = Instant::now();
    let src = source_label(&cfg, peer.ip());
    let mut rec = ConnectionRecord::new(id, Mode::Connect, peer, src.value.clone());
    let stats = TunnelStats::new();
    let watch = HandshakeWatch::new();
    let mut outcome = match admission {
        Err(refusal) => {
            refuse(&client, &refusal).await;
            refusal.outcome
        }
        Ok(_permit) => {
            if let Some(dns) = &shared.dns {
                dns.lookup_later(peer.ip());
            }
            let conn = Conn {
                shared: &shared,
                cfg: &cfg,
                client: &client,
                peer,
                src: &src,
                stats: &stats,
                watch: &watch,
            };
            let serving = conn.serve(&mut rec, started);
            tokio::select! {
                outcome = serving => outcome,
                _ = shared.hard_stop.cancelled() => {
                    debug!("shutdown grace over: closing the tunnel");
                    Outcome::Closed
                }
            }
        }
    };
    watch.finish(&mut rec);
    if rec.server_alert.is_some()
        && matches!(
            outcome,
            Outcome::Closed | Outcome::UpstreamReset | Outcome::ClientReset
        )
    {
        outcome = Outcome::RejectedByServer;
    }
    if let Some(dns) = &shared.dns {
        rec.source_name = dns.cached(peer.ip());
    }
    rec.outcome = outcome;
    rec.bytes_up = stats.up();
    rec.bytes_down = stats.down();
    rec.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    shared.metrics.connection_ended(Mode::Connect, outcome);
    debug!(
        outcome = outcome.as_str(),
        bytes_up = rec.bytes_up,
        bytes_down = rec.bytes_down,
        duration_ms = rec.duration_ms,
        "connection ended"
    );
    shared.events.write(&rec);
}

/// Answers a refusal, then closes so that the client reads the answer: half-close first and
/// drain what the client still sends for a moment (closing with unread input would send a
/// reset that can destroy the answer in flight).
async fn refuse(client: &TcpStream, r: &Refusal) {
    info!(
        outcome = r.outcome.as_str(),
        status = r.status,
        reason = %r.reason,
        "refused"
    );
    let mut resp = request::refusal_response(r.status, r.phrase, &r.reason);
    if r.status == 405 {
        // The Allow header goes with the 405: insert it before the blank line.
        let at = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 2);
        resp.splice(at..at, b"Allow: CONNECT\r\n".iter().copied());
    }
    if request::write_all(client, &resp, RESPONSE_WRITE_LIMIT)
        .await
        .is_err()
    {
        return;
    }
    lingering_close(client).await;
}

async fn lingering_close(client: &TcpStream) {
    let _ = socket2::SockRef::from(client).shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match tokio::time::timeout_at(deadline, client.readable()).await {
            Ok(Ok(())) => match client.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => drained += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            },
            _ => return,
        }
    }
}

/// The connection being served.
struct Conn<'a> {
    shared: &'a Arc<Shared>,
    cfg: &'a Config,
    client: &'a TcpStream,
    peer: SocketAddr,
    src: &'a SourceLabel,
    stats: &'a TunnelStats,
    watch: &'a HandshakeWatch,
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

fn connect_refusal(e: &ConnectError) -> Refusal {
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

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Conn<'_> {
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
        if request::write_all(self.client, ESTABLISHED, RESPONSE_WRITE_LIMIT)
            .await
            .is_err()
        {
            splice::reset_on_close(&upstream);
            return Outcome::ClientReset;
        }
        let _active = ActiveTunnel::open(&self.shared.metrics.active_tunnels);
        self.tunnel(&upstream, &target, head.rest, rec).await
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
            ));
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
        let addrs = admission::resolve(target, &p.deny_destinations, p.connect_timeout)
            .await
            .map_err(|e| connect_refusal(&e))?;
        let (upstream, addr, took) = admission::connect(&addrs, p.connect_timeout)
            .await
            .map_err(|e| connect_refusal(&e))?;
        self.shared
            .metrics
            .upstream_connect_seconds
            .observe(took.as_secs_f64());
        rec.upstream_ip = Some(addr.ip().to_string());
        let _ = upstream.set_nodelay(true);
        let _ = self.client.set_nodelay(true);
        Ok(upstream)
    }

    /// The tunnel: upstream → client flows at once; client → upstream waits for the peek.
    async fn tunnel(
        &self,
        upstream: &TcpStream,
        target: &Authority,
        early: Vec<u8>,
        rec: &mut ConnectionRecord,
    ) -> Outcome {
        let m = &self.shared.metrics;
        let stats = self.stats;
        let watch = self.watch;
        let mut server_hello_tap = |chunk: &[u8]| watch.observe(chunk);
        let mut down = pin!(splice::pump(
            upstream,
            self.client,
            Flow {
                from: Side::Upstream,
                count: &stats.bytes_down,
                metric: &m.bytes_down,
                activity: &stats.activity,
            },
            &mut server_hello_tap,
        ));
        let mut down_done = false;
        let mut peek = pin!(peek_client_hello(
            self.client,
            early,
            self.cfg.proxy.hello_timeout
        ));
        let peeked = loop {
            tokio::select! {
                p = &mut peek => break p,
                r = &mut down, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(e) => return self.failed(upstream, e),
                },
            }
        };
        let peeked = match peeked {
            Ok(p) => p,
            Err(error) => {
                return self.failed(
                    upstream,
                    PumpError {
                        culprit: Side::Client,
                        error,
                    },
                );
            }
        };
        let kind = self.first_flight(&peeked.flight, target, rec);
        m.first_flight(Mode::Connect, kind);
        if matches!(peeked.flight, FirstFlight::TimedOut { .. })
            && self.cfg.proxy.on_hello_timeout == OnHelloTimeout::Close
        {
            debug!("no ClientHello within hello_timeout: closing (on_hello_timeout = close)");
            return Outcome::Closed;
        }

        if let Err(error) = splice::write_all(upstream, &peeked.held).await {
            return self.failed(
                upstream,
                PumpError {
                    culprit: Side::Upstream,
                    error,
                },
            );
        }
        let held = peeked.held.len() as u64;
        stats.add_up(held);
        m.bytes_up.inc_by(held);
        stats.activity.touch();

        let mut up_done = peeked.client_eof;
        if up_done {
            let _ = socket2::SockRef::from(upstream).shutdown(std::net::Shutdown::Write);
        }
        let mut no_tap_up = |_: &[u8]| false;
        let mut up = pin!(splice::pump(
            self.client,
            upstream,
            Flow {
                from: Side::Client,
                count: &stats.bytes_up,
                metric: &m.bytes_up,
                activity: &stats.activity,
            },
            &mut no_tap_up,
        ));
        let mut idle = pin!(splice::idle_watch(
            &stats.activity,
            self.cfg.proxy.idle_timeout
        ));
        let end = loop {
            if up_done && down_done {
                break SpliceEnd::Closed;
            }
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(e) => break SpliceEnd::Failed(e),
                },
                r = &mut down, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(e) => break SpliceEnd::Failed(e),
                },
                _ = &mut idle => break SpliceEnd::Idle,
            }
        };
        match end {
            SpliceEnd::Closed => Outcome::Closed,
            SpliceEnd::Idle => {
                debug!(idle_timeout = ?self.cfg.proxy.idle_timeout, "tunnel idle: closing");
                Outcome::IdleTimeout
            }
            SpliceEnd::Failed(e) => self.failed(upstream, e),
        }
    }

    /// One side failed: reset the other, so a cut-off stream never looks complete.
    fn failed(&self, upstream: &TcpStream, e: PumpError) -> Outcome {
        debug!(culprit = ?e.culprit, error = %e.error, "tunnel side failed: resetting the other");
        match e.culprit {
            Side::Client => {
                splice::reset_on_close(upstream);
                Outcome::ClientReset
            }
            Side::Upstream => {
                splice::reset_on_close(self.client);
                Outcome::UpstreamReset
            }
        }
    }

    /// Records what the first flight was, counts hellos, and applies the policy.
    fn first_flight(
        &self,
        flight: &FirstFlight,
        target: &Authority,
        rec: &mut ConnectionRecord,
    ) -> Kind {
        let kind = match flight {
            FirstFlight::Hello(h) => {
                self.on_hello(h, target, rec);
                return rec.kind.unwrap_or(Kind::Tls);
            }
            FirstFlight::NotTls => Kind::NotTls,
            FirstFlight::TooLarge => Kind::TooLarge,
            FirstFlight::Truncated | FirstFlight::TimedOut { partial: true } => Kind::Truncated,
            FirstFlight::Nothing | FirstFlight::TimedOut { partial: false } => Kind::None,
        };
        self.watch.stop();
        rec.kind = Some(kind);
        match kind {
            Kind::None => debug!(kind = kind.as_str(), "no ClientHello from the client"),
            _ => info!(
                kind = kind.as_str(),
                "first flight is not a whole ClientHello; passing it through"
            ),
        }
        kind
    }

    fn on_hello(&self, h: &ClientHelloSummary, target: &Authority, rec: &mut ConnectionRecord) {
        let verdict = hello::classify_client_hello(h);
        rec.set_client_hello(h, &verdict);
        // The name is the SNI, else the CONNECT host, and only a valid host name.
        let sni_name = h.sni.as_deref().and_then(HostName::parse);
        let name = sni_name.as_ref().or(target.name());
        let destination = destination_label(self.cfg, name);
        let who = Who {
            source: &self.src.value,
            source_is_ip: self.src.is_ip,
            destination: &destination,
        };
        let m = &self.shared.metrics;
        let max_version = hello::version_name(h.max_version());
        m.client_hello(&who, max_version, verdict.legacy);
        if let Some(first) = verdict.reasons.first() {
            m.legacy_connection(&who, first.as_str(), unix_now());
            info!(
                source = %self.src.value,
                destination = %destination,
                sni = ?rec.sni,
                max_version,
                reasons = ?rec.legacy_reasons,
                ja4 = ?rec.ja4,
                "legacy ClientHello"
            );
        }
        let decision = policy::decide(
            self.cfg,
            name,
            self.peer.ip(),
            verdict.legacy,
            SystemTime::now(),
        );
        rec.rule = decision.rule.map(|r| r.name.clone());
        rec.action = Some(ActionTaken::Passed);
        m.action(&who, "passed", verdict.legacy);

        let observation = self
            .shared
            .inventory
            .as_ref()
            .map(|_| self.observation(h, name, target, max_version, verdict.legacy, rec));
        self.watch.set_context(HelloContext {
            shared: self.shared.clone(),
            source: self.src.value.clone(),
            source_is_ip: self.src.is_ip,
            watched: destination != crate::telemetry::guard::OTHER,
            destination,
            hello: Box::new(h.clone()),
            hello_verdict: verdict,
            observation,
            source_ip: self.peer.ip(),
            timeout: self.cfg.proxy.hello_timeout,
        });
    }

    /// The inventory observation of this connection, with the likely software.
    fn observation(
        &self,
        h: &ClientHelloSummary,
        name: Option<&HostName>,
        target: &Authority,
        max_version: &str,
        legacy: bool,
        rec: &ConnectionRecord,
    ) -> Observation {
        let ja4 = rec.ja4.clone().unwrap_or_default();
        let ja3_hash = rec.ja3_hash.clone().unwrap_or_default();
        let software = SoftwareDb::embedded().identify(&Facts {
            hello: h,
            ja4: &ja4,
            ja3_hash: &ja3_hash,
            user_agent: None,
            request: None,
        });
        Observation {
            at: unix_secs(),
            source_ip: rec.source_ip.clone(),
            source: self.src.value.clone(),
            source_name: None,
            destination: name.map_or_else(|| target.host.to_string(), |n| n.to_string()),
            ja4,
            ja3_hash,
            sni: rec.sni.clone(),
            offered_version: Some(max_version.to_string()),
            negotiated_version: None,
            negotiated_cipher: None,
            legacy,
            legacy_reasons: Vec::new(),
            software: software.family,
            software_confidence: software.confidence.as_str().to_string(),
            fix: software.fix,
            user_agent: None,
        }
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
