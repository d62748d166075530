//! A tunnel once `200` is sent: upstream → client flows at once; client → upstream waits for
//! the first-flight peek; then the policy passes (splice), blocks (a TLS alert) or upgrades
//! (handed back to `serve`, which owns the upstream socket) the connection.

use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::authority::{Authority, Host};
use super::connection::Conn;
use super::handshake::HelloContext;
use super::peek::{FirstFlight, peek_client_hello};
use crate::clock::unix_now as unix_secs;
use crate::config::{Action, OnHelloTimeout, OnUnsupported};
use crate::hello::{self, ClientHelloSummary};
use crate::inventory::Observation;
use crate::names::HostName;
use crate::net::lingering_close;
use crate::net::splice::{self, PumpError, Side, SpliceEnd};
use crate::policy;
use crate::telemetry::{ActionTaken, ConnectionRecord, Kind, Outcome, Who, destination_label};
use crate::upgrade::Upgrader;

/// What the policy made of the first flight.
pub(super) enum Act {
    Pass,
    /// Answer with this alert record and close.
    Block([u8; 7]),
    Upgrade(UpgradePlan),
}

/// An upgrade decided at the ClientHello: the name to make a certificate for, the hello
/// (the client side answers it), and the upgrader that approved it (a reload in between
/// does not change which CA finishes the job).
pub(super) struct UpgradePlan {
    pub(super) name: HostName,
    pub(super) hello: Box<ClientHelloSummary>,
    pub(super) upgrader: Arc<Upgrader>,
}

/// The upstream→client tap: the ServerHello peek, until it has what it needs; after that
/// the pump may use zero-copy.
struct ServerHelloTap<'a>(&'a super::handshake::HandshakeWatch);

impl splice::Tap for ServerHelloTap<'_> {
    fn see(&mut self, chunk: &[u8]) -> splice::Tapped {
        if self.0.observe(chunk) {
            splice::Tapped::More
        } else {
            splice::Tapped::Done
        }
    }
}

/// How the tunnel phase ended.
pub(super) enum TunnelEnd {
    Done(Outcome),
    /// Upgrade: the held ClientHello has not gone upstream; the pumps are stopped.
    Upgrade {
        held: Vec<u8>,
        plan: UpgradePlan,
    },
}

impl Conn<'_> {
    pub(super) async fn tunnel(
        &self,
        upstream: &TcpStream,
        target: &Authority,
        early: Vec<u8>,
        rec: &mut ConnectionRecord,
    ) -> TunnelEnd {
        let m = &self.shared.metrics;
        let stats = self.stats;
        let watch = self.watch;
        let mut server_hello_tap = ServerHelloTap(watch);
        let mut down = pin!(splice::pump(
            upstream,
            self.client,
            stats.flow(Side::Upstream, &m.bytes_down),
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
                    Err(e) => return TunnelEnd::Done(self.failed(upstream, e)),
                },
            }
        };
        let mut peeked = match peeked {
            Ok(p) => p,
            Err(error) => {
                let e = PumpError {
                    culprit: Side::Client,
                    error,
                };
                return TunnelEnd::Done(self.failed(upstream, e));
            }
        };
        let timed_out = matches!(peeked.flight, FirstFlight::TimedOut { .. });
        let flight = std::mem::replace(&mut peeked.flight, FirstFlight::Nothing);
        let (kind, act) = self.first_flight(flight, target, rec);
        m.first_flight(self.mode, kind);
        if timed_out && self.cfg.proxy.on_hello_timeout == OnHelloTimeout::Close {
            debug!("no ClientHello within hello_timeout: closing (on_hello_timeout = close)");
            return TunnelEnd::Done(Outcome::Closed);
        }
        match act {
            Act::Pass => {}
            Act::Block(alert) => {
                let _ = crate::net::write_all_within(
                    self.client,
                    &alert,
                    std::time::Duration::from_secs(2),
                )
                .await;
                lingering_close(self.client).await;
                return TunnelEnd::Done(Outcome::Blocked);
            }
            Act::Upgrade(plan) => {
                if stats.down() == 0 {
                    return TunnelEnd::Upgrade {
                        held: peeked.held,
                        plan,
                    };
                }
                // The server spoke before the client's hello: not TLS as we know it.
                warn!("cannot upgrade: the upstream sent bytes before the ClientHello; passing");
                rec.note = Some("not upgraded: the upstream spoke first".into());
            }
        }

        if let Err(error) = splice::write_all(upstream, &peeked.held).await {
            let e = PumpError {
                culprit: Side::Upstream,
                error,
            };
            return TunnelEnd::Done(self.failed(upstream, e));
        }
        let up_flow = stats.flow(Side::Client, &m.bytes_up);
        up_flow.moved(peeked.held.len());

        let mut up_done = peeked.client_eof;
        if up_done {
            let _ = socket2::SockRef::from(upstream).shutdown(std::net::Shutdown::Write);
        }
        let mut no_tap_up = splice::NoTap;
        let mut up = pin!(splice::pump(self.client, upstream, up_flow, &mut no_tap_up,));
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
        TunnelEnd::Done(match end {
            SpliceEnd::Closed => Outcome::Closed,
            SpliceEnd::Idle => {
                debug!(idle_timeout = ?self.cfg.proxy.idle_timeout, "tunnel idle: closing");
                Outcome::IdleTimeout
            }
            SpliceEnd::Failed(e) => self.failed(upstream, e),
        })
    }

    /// One side failed: reset the other, so a cut-off stream never looks complete.
    pub(super) fn failed(&self, upstream: &TcpStream, e: PumpError) -> Outcome {
        debug!(culprit = ?e.culprit, error = %e.error, "tunnel side failed: resetting the other");
        splice::reset_on_close(match e.culprit {
            Side::Client => upstream,
            Side::Upstream => self.client,
        });
        Outcome::reset_by(e.culprit)
    }

    /// Records what the first flight was, counts hellos, and applies the policy.
    fn first_flight(
        &self,
        flight: FirstFlight,
        target: &Authority,
        rec: &mut ConnectionRecord,
    ) -> (Kind, Act) {
        let kind = match flight {
            FirstFlight::Hello(h) => {
                let act = self.on_hello(h, target, rec);
                return (rec.kind.unwrap_or(Kind::Tls), act);
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
        (kind, Act::Pass)
    }

    fn on_hello(
        &self,
        h: Box<ClientHelloSummary>,
        target: &Authority,
        rec: &mut ConnectionRecord,
    ) -> Act {
        let verdict = hello::classify_client_hello(&h);
        rec.set_client_hello(&h, &verdict);
        if h.sni_cut {
            self.shared
                .metrics
                .hello_anomalies
                .with_label_values(&["sni_too_long"])
                .inc();
            info!(
                kept_bytes = hello::MAX_SNI_BYTES,
                "SNI longer than a host name can be: stored cut"
            );
        }
        // The name is the SNI, else the CONNECT host, and only a valid host name.
        // Without SNI (Windows XP SChannel, Java 6) the address may still belong to a watched
        // name: say so rather than label it "other".
        let sni_name = h.sni.as_deref().and_then(HostName::parse);
        let mut name = sni_name.or_else(|| target.name().cloned());
        if name.is_none() {
            if let Host::Ip(ip) = &target.host {
                name = self.shared.watched_addresses.name_of(*ip);
                if let Some(n) = &name {
                    rec.name_inferred = true;
                    info!(name = %n, "no SNI: the name was inferred from the destination address");
                }
            }
        }
        let destination = destination_label(self.cfg, name.as_ref());
        let who = Who {
            source: &self.src.value,
            source_is_ip: self.src.is_ip,
            destination: &destination,
        };
        let m = &self.shared.metrics;
        let max_version = hello::version_name(h.max_version());
        m.client_hello(&who, max_version, verdict.legacy);
        if let Some(first) = verdict.reasons.first() {
            m.legacy_connection_now(&who, first.as_str());
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
            name.as_ref(),
            self.peer.ip(),
            verdict.legacy,
            SystemTime::now(),
        );
        rec.rule = decision.rule.map(|r| r.name.clone());
        let rule = decision.rule.map_or("-", |r| r.name.as_str());
        if let Some(would) = decision.would {
            let w = match would {
                Action::Block => "would_block",
                _ => "would_upgrade",
            };
            rec.would = Some(w);
            m.action(&who, w, verdict.legacy);
            info!(rule, would = w, "dry run: the connection passes");
        }
        let act = match decision.action {
            Action::Observe => Act::Pass,
            Action::Block => Act::Block(hello::alert_record(&h, hello::block_alert(&verdict))),
            Action::Upgrade => self.upgrade_or_fallback(&h, name.as_ref(), &verdict, rec),
        };
        let (taken, label) = match &act {
            Act::Pass => (ActionTaken::Passed, "passed"),
            Act::Block(alert) => {
                info!(
                    rule,
                    alert = hello::alert_name(alert[6]),
                    "blocked with a TLS alert"
                );
                (ActionTaken::Blocked, "blocked")
            }
            Act::Upgrade(_) => (ActionTaken::Upgraded, "upgraded"),
        };
        rec.action = Some(taken);
        m.action(&who, label, verdict.legacy);

        let observation = self
            .shared
            .inventory
            .as_ref()
            .map(|_| self.observation(name.as_ref(), target, rec));
        self.watch.set_context(HelloContext {
            shared: self.shared.clone(),
            source: self.src.value.clone(),
            source_is_ip: self.src.is_ip,
            watched: destination != crate::telemetry::guard::OTHER,
            destination,
            hello: h,
            hello_verdict: verdict,
            observation,
            source_ip: self.peer.ip(),
            timeout: self.cfg.proxy.hello_timeout,
        });
        act
    }

    /// An upgrade rule applies: upgrade if this connection can be, else apply
    /// `never_upgrade` (pass) or `on_unsupported`.
    fn upgrade_or_fallback(
        &self,
        h: &ClientHelloSummary,
        name: Option<&HostName>,
        verdict: &hello::Verdict,
        rec: &mut ConnectionRecord,
    ) -> Act {
        let Some(name) = name else {
            return self.unsupported(
                "the connection has no host name to make a certificate for".into(),
                h,
                verdict,
                rec,
            );
        };
        if self.cfg.upgrade.never_upgrade.matches(name) {
            info!(name = %name, "never_upgrade: passing untouched");
            rec.note = Some("not upgraded: host is in upgrade.never_upgrade".into());
            return Act::Pass;
        }
        let Some(upgrader) = self.shared.upgrader.load_full() else {
            return self.unsupported("upgrade mode has no CA loaded".into(), h, verdict, rec);
        };
        match upgrader.cannot(h, name) {
            Some(why) => self.unsupported(why, h, verdict, rec),
            None => Act::Upgrade(UpgradePlan {
                name: name.clone(),
                hello: Box::new(ClientHelloSummary::clone(h)),
                upgrader,
            }),
        }
    }

    fn unsupported(
        &self,
        why: String,
        h: &ClientHelloSummary,
        verdict: &hello::Verdict,
        rec: &mut ConnectionRecord,
    ) -> Act {
        let fallback = self.cfg.upgrade.on_unsupported;
        warn!(reason = %why, fallback = ?fallback, "cannot upgrade this client");
        rec.note = Some(format!("cannot upgrade: {why}"));
        match fallback {
            OnUnsupported::Block => Act::Block(hello::alert_record(h, hello::block_alert(verdict))),
            OnUnsupported::Pass => Act::Pass,
        }
    }

    /// The inventory observation of this connection, with the likely software (the
    /// verdict is filled in when the handshake is known).
    fn observation(
        &self,
        name: Option<&HostName>,
        target: &Authority,
        rec: &ConnectionRecord,
    ) -> Observation {
        let destination = name.map_or_else(|| target.host.to_string(), |n| n.to_string());
        Observation::of_hello(rec, &self.src.value, destination, unix_secs())
    }
}
