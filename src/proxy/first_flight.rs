//! What the client's first flight is, and what to do with it: the ClientHello verdict, the
//! name the connection is for (SNI, else the CONNECT host, else a watched address), the
//! policy's action (pass, block with an alert, upgrade), and the hello's record (its
//! fingerprints and library, the hello-time metrics, the inventory observation).
//!
//! A hello the policy passes without a word (no rule acts on it, no dry run) is recorded
//! after it has gone upstream (`Unrecorded`), so the server starts on its answer without
//! waiting for that work; any other hello is recorded before its action, so its log line
//! comes first.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::{debug, info, warn};

use super::authority::{Authority, Host};
use super::handshake::{Handshake, HelloContext};
use super::peek::FirstFlight;
use super::session::Session;
use crate::clock::unix_now;
use crate::config::{Action, OnUnsupported};
use crate::hello::{self, ClientHelloSummary, Verdict};
use crate::inventory::Observation;
use crate::names::HostName;
use crate::policy::{self, Decision};
use crate::telemetry::{ActionTaken, ConnectionRecord, Kind, Who, destination_label};
use crate::upgrade::Upgrader;

/// What the policy made of the first flight.
pub enum Act {
    Pass,
    /// Answer with this alert record and close.
    Block([u8; 7]),
    Upgrade(UpgradePlan),
}

/// An upgrade decided at the ClientHello: the name to make a certificate for, the hello
/// (the client side answers it), and the upgrader that approved it (a reload in between
/// does not change which CA finishes the job).
pub struct UpgradePlan {
    pub name: HostName,
    pub hello: Box<ClientHelloSummary>,
    pub upgrader: Arc<Upgrader>,
}

/// What `judge` made of the first flight.
pub enum Judged {
    /// Recorded; the action to carry out.
    Act(Act),
    /// A hello that passes with nothing to say: forward it, then `Unrecorded::record` it.
    QuietPass(Unrecorded),
}

/// Records what the first flight was, counts it, and applies the policy to a hello. A
/// hello that passes quietly comes back unrecorded: the caller records it once the hello
/// is on its way upstream.
pub fn judge(
    s: &Session<'_>,
    flight: FirstFlight,
    target: &Authority,
    rec: &mut ConnectionRecord,
    handshake: &mut Handshake,
) -> Judged {
    let kind = match flight {
        FirstFlight::Hello(h) => return on_hello(s, h, target, rec, handshake),
        FirstFlight::NotTls => Kind::NotTls,
        FirstFlight::TooLarge => Kind::TooLarge,
        FirstFlight::Truncated | FirstFlight::TimedOut { partial: true } => Kind::Truncated,
        FirstFlight::Nothing | FirstFlight::TimedOut { partial: false } => Kind::None,
    };
    handshake.stop();
    rec.kind = Some(kind);
    s.shared.metrics.first_flight(s.mode, kind);
    match kind {
        Kind::None => debug!(kind = kind.as_str(), "no ClientHello from the client"),
        _ => info!(
            kind = kind.as_str(),
            "first flight is not a whole ClientHello; passing it through"
        ),
    }
    Judged::Act(Act::Pass)
}

/// A whole ClientHello: its verdict, its name and the policy's decision; then its record
/// and the action, in the order that keeps the log readable (a quiet pass leaves the
/// record to the caller).
fn on_hello(
    s: &Session<'_>,
    h: Box<ClientHelloSummary>,
    target: &Authority,
    rec: &mut ConnectionRecord,
    handshake: &mut Handshake,
) -> Judged {
    let verdict = hello::classify_client_hello(&h);
    let name = name_of(s, &h, target, rec);
    let decision = policy::decide(
        s.cfg,
        name.as_ref(),
        s.peer.ip(),
        verdict.legacy,
        SystemTime::now(),
    );
    let hello = Unrecorded {
        destination: destination_label(s.cfg, name.as_ref()),
        hello: h,
        verdict,
        name,
    };
    if matches!(decision.action, Action::Observe) && decision.would.is_none() {
        // Counted as passed (a rule may match a hello that is not legacy); nothing logged.
        let _ = apply_policy(s, &hello, decision, rec);
        return Judged::QuietPass(hello);
    }
    let observation = hello.book(s, target, rec);
    let act = apply_policy(s, &hello, decision, rec);
    hello.hand_over(s, observation, handshake);
    Judged::Act(act)
}

/// A judged ClientHello whose record is not made yet.
pub struct Unrecorded {
    hello: Box<ClientHelloSummary>,
    verdict: Verdict,
    name: Option<HostName>,
    destination: String,
}

impl Unrecorded {
    /// The hello's record: its fields, its metrics, its inventory observation, and the
    /// hand-over of the hello side to the handshake (for the final verdict).
    pub fn record(
        self,
        s: &Session<'_>,
        target: &Authority,
        rec: &mut ConnectionRecord,
        handshake: &mut Handshake,
    ) {
        let observation = self.book(s, target, rec);
        self.hand_over(s, observation, handshake);
    }

    fn who<'a>(&'a self, s: &'a Session<'_>) -> Who<'a> {
        Who {
            source: &s.src.value,
            source_is_ip: s.src.is_ip,
            destination: &self.destination,
        }
    }

    /// The record fields, the hello-time metrics and logs; the inventory observation (when
    /// there is an inventory).
    fn book(
        &self,
        s: &Session<'_>,
        target: &Authority,
        rec: &mut ConnectionRecord,
    ) -> Option<Observation> {
        let h = &self.hello;
        rec.set_client_hello(h, &self.verdict);
        if h.sni_cut {
            s.shared
                .metrics
                .hello_anomalies
                .with_label_values(&["sni_too_long"])
                .inc();
            info!(
                kept_bytes = hello::MAX_SNI_BYTES,
                "SNI longer than a host name can be: stored cut"
            );
        }
        let who = self.who(s);
        count_hello(s, &who, h, &self.verdict, rec);
        if let Some(d) = self
            .name
            .as_ref()
            .and_then(|n| s.cfg.deprecation_of(n, None))
        {
            super::retired::called(&s.shared.metrics, &who, d, None, self.verdict.legacy);
        }
        s.shared
            .metrics
            .first_flight(s.mode, rec.kind.unwrap_or(Kind::Tls));
        s.shared.inventory.as_ref().map(|_| {
            let dest = self
                .name
                .as_ref()
                .map_or_else(|| target.host.to_string(), |n| n.to_string());
            Observation::of_hello(rec, &s.src.value, dest, unix_now())
        })
    }

    /// Hands the hello side to the handshake, which reports once the server answers.
    fn hand_over(
        self,
        s: &Session<'_>,
        observation: Option<Observation>,
        handshake: &mut Handshake,
    ) {
        let ctx = HelloContext {
            source: s.src.value.clone(),
            source_is_ip: s.src.is_ip,
            watched: self.destination != crate::telemetry::guard::OTHER,
            destination: self.destination,
            hello: self.hello,
            hello_verdict: self.verdict,
            observation,
            source_ip: s.peer.ip(),
        };
        handshake.set_context(s.shared, ctx, s.cfg.proxy.hello_timeout);
    }
}

/// The name is the SNI, else the CONNECT host, and only a valid host name. Without SNI
/// (Windows XP SChannel, Java 6) the address may still belong to a watched name: say so
/// rather than label it "other".
fn name_of(
    s: &Session<'_>,
    h: &ClientHelloSummary,
    target: &Authority,
    rec: &mut ConnectionRecord,
) -> Option<HostName> {
    let sni_name = h.sni.as_deref().and_then(HostName::parse);
    if let Some(name) = sni_name.or_else(|| target.name().cloned()) {
        return Some(name);
    }
    let Host::Ip(ip) = &target.host else {
        return None;
    };
    let name = s.shared.watched_addresses.name_of(*ip)?;
    rec.name_inferred = true;
    info!(name = %name, "no SNI: the name was inferred from the destination address");
    Some(name)
}

/// `tlspeek_client_hellos_total`, and a legacy hello's first reason.
fn count_hello(
    s: &Session<'_>,
    who: &Who<'_>,
    h: &ClientHelloSummary,
    verdict: &Verdict,
    rec: &ConnectionRecord,
) {
    let m = &s.shared.metrics;
    let max_version = hello::version_name(h.max_version());
    m.client_hello(who, max_version, verdict.legacy);
    if let Some(first) = verdict.reasons.first() {
        m.legacy_connection_now(who, first.as_str());
        info!(
            source = %s.src.value,
            destination = %who.destination,
            sni = ?rec.sni,
            max_version,
            reasons = ?rec.legacy_reasons,
            ja4 = ?rec.ja4,
            "legacy ClientHello"
        );
    }
}

/// The policy's decision: a dry run's "would", and the action taken (counted and
/// recorded).
fn apply_policy(
    s: &Session<'_>,
    hello: &Unrecorded,
    decision: Decision<'_>,
    rec: &mut ConnectionRecord,
) -> Act {
    let m = &s.shared.metrics;
    let (h, verdict) = (&hello.hello, &hello.verdict);
    let who = &hello.who(s);
    rec.rule = decision.rule.map(|r| r.name.clone());
    let rule = decision.rule.map_or("-", |r| r.name.as_str());
    if let Some(would) = decision.would {
        let w = match would {
            Action::Block => "would_block",
            _ => "would_upgrade",
        };
        rec.would = Some(w);
        m.action(who, w, verdict.legacy);
        info!(rule, would = w, "dry run: the connection passes");
    }
    let act = match decision.action {
        Action::Observe => Act::Pass,
        Action::Block => Act::Block(hello::alert_record(h, hello::block_alert(verdict))),
        Action::Upgrade => upgrade_or_fallback(s, h, hello.name.as_ref(), verdict, rec),
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
    m.action(who, label, verdict.legacy);
    act
}

/// An upgrade rule applies: upgrade if this connection can be, else apply
/// `never_upgrade` (pass) or `on_unsupported`.
fn upgrade_or_fallback(
    s: &Session<'_>,
    h: &ClientHelloSummary,
    name: Option<&HostName>,
    verdict: &Verdict,
    rec: &mut ConnectionRecord,
) -> Act {
    let Some(name) = name else {
        return unsupported(
            s,
            "the connection has no host name to make a certificate for".into(),
            h,
            verdict,
            rec,
        );
    };
    if s.cfg.upgrade.never_upgrade.matches(name) {
        info!(name = %name, "never_upgrade: passing untouched");
        rec.note = Some("not upgraded: host is in upgrade.never_upgrade".into());
        return Act::Pass;
    }
    let Some(upgrader) = s.shared.upgrader.load_full() else {
        return unsupported(s, "upgrade mode has no CA loaded".into(), h, verdict, rec);
    };
    match upgrader.cannot(h, name) {
        Some(why) => unsupported(s, why, h, verdict, rec),
        None => Act::Upgrade(UpgradePlan {
            name: name.clone(),
            hello: Box::new(ClientHelloSummary::clone(h)),
            upgrader,
        }),
    }
}

fn unsupported(
    s: &Session<'_>,
    why: String,
    h: &ClientHelloSummary,
    verdict: &Verdict,
    rec: &mut ConnectionRecord,
) -> Act {
    let fallback = s.cfg.upgrade.on_unsupported;
    warn!(reason = %why, fallback = ?fallback, "cannot upgrade this client");
    rec.note = Some(format!("cannot upgrade: {why}"));
    match fallback {
        OnUnsupported::Block => Act::Block(hello::alert_record(h, hello::block_alert(verdict))),
        OnUnsupported::Pass => Act::Pass,
    }
}
