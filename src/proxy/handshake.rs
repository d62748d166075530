//! The server's answer to the ClientHello, and the connection's final verdict.
//!
//! [`ServerHelloTap`] is the tap of the upstream→client pump: it sees each chunk before it
//! is written, copies the first bytes until one whole ServerHello (or an alert, or
//! something else) is recognised, and sends what it found on a oneshot channel. It never
//! holds the stream back, is bounded (64 KiB), takes no lock and has no other effect.
//!
//! [`Handshake`] belongs to the connection task: the ClientHello side (set at the hello),
//! the server's answer (from the tap, or from the upgrade), and the report made once both
//! are known — the negotiated metrics and the inventory observation, at once, not when a
//! long tunnel closes. The answer counts as unknown `hello_timeout` after the hello.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::hello::{
    self, ClientHelloSummary, ServerDetection, ServerHelloSummary, Verdict, classify_negotiated,
};
use crate::inventory::{Observation, ServerAnswer};
use crate::net::splice::{Tap, Tapped};
use crate::shared::Shared;
use crate::telemetry::{ConnectionRecord, Outcome, Who};

/// What the server answered first.
#[derive(Debug)]
pub enum ServerOutcome {
    Hello(Box<ServerHelloSummary>),
    Alert {
        level: u8,
        description: u8,
    },
    /// Not TLS, too large, or not complete in time: nothing negotiated is known.
    Unknown,
}

/// The upstream→client tap: the ServerHello peek, until it has what it needs; after that
/// the pump may use zero-copy.
pub struct ServerHelloTap {
    buf: Vec<u8>,
    found: Option<oneshot::Sender<ServerOutcome>>,
}

impl ServerHelloTap {
    /// The tap, and where its finding arrives.
    pub fn new() -> (ServerHelloTap, oneshot::Receiver<ServerOutcome>) {
        let (tx, rx) = oneshot::channel();
        let tap = ServerHelloTap {
            buf: Vec::new(),
            found: Some(tx),
        };
        (tap, rx)
    }

    fn found(&mut self, outcome: ServerOutcome) -> Tapped {
        self.buf = Vec::new();
        if let Some(tx) = self.found.take() {
            let _ = tx.send(outcome);
        }
        Tapped::Done
    }
}

impl Tap for ServerHelloTap {
    fn see(&mut self, chunk: &[u8]) -> Tapped {
        // Nobody waits for the answer any more (not a hello, or too late): stop copying.
        if self.found.as_ref().is_none_or(|tx| tx.is_closed()) {
            self.found = None;
            self.buf = Vec::new();
            return Tapped::Done;
        }
        // Anything but a handshake or alert record cannot start a TLS server's answer: stop
        // at once instead of buffering a server-speaks-first protocol.
        if self.buf.is_empty() && !matches!(chunk.first(), Some(0x16) | Some(0x15)) {
            return self.found(ServerOutcome::Unknown);
        }
        let room = hello::MAX_HELLO_BYTES.saturating_sub(self.buf.len());
        let taken = chunk.get(..chunk.len().min(room)).unwrap_or_default();
        // The usual case, a whole answer in the first chunk, is read where it lies; only an
        // answer split across chunks is gathered in `buf`.
        let first = self.buf.is_empty();
        if !first {
            self.buf.extend_from_slice(taken);
        }
        let seen = if first { taken } else { &self.buf };
        match hello::detect_server_hello(seen, hello::MAX_HELLO_BYTES) {
            ServerDetection::NeedMore if room > chunk.len() => {
                if first {
                    self.buf.extend_from_slice(taken);
                }
                Tapped::More
            }
            ServerDetection::NeedMore | ServerDetection::NotTls | ServerDetection::TooLarge => {
                self.found(ServerOutcome::Unknown)
            }
            ServerDetection::Hello(h) => self.found(ServerOutcome::Hello(h)),
            ServerDetection::Alert { level, description } => {
                self.found(ServerOutcome::Alert { level, description })
            }
        }
    }
}

/// What the ClientHello side knows, handed over once the hello is judged.
pub struct HelloContext {
    pub source: String,
    pub source_is_ip: bool,
    pub destination: String,
    pub hello: Box<ClientHelloSummary>,
    pub hello_verdict: Verdict,
    /// The connection's inventory observation, written when the final verdict is known.
    pub observation: Option<Observation>,
    /// The destination is watched (or every destination is tracked): the inventory keeps
    /// its callers even when they are not legacy.
    pub watched: bool,
    pub source_ip: std::net::IpAddr,
}

/// The connection task's view of the handshake.
#[derive(Default)]
pub struct Handshake {
    answer: Option<oneshot::Receiver<ServerOutcome>>,
    deadline: Option<Instant>,
    ctx: Option<HelloContext>,
    server: Option<ServerOutcome>,
    /// Upgrade mode: the answer is to tlspeek's own hello, not the client's.
    upgraded: bool,
    /// The upstream reset the connection (known at the end).
    upstream_reset: bool,
    reported: bool,
    final_verdict: Option<Verdict>,
}

impl Handshake {
    /// Waits for `answer` (the tap's finding).
    pub fn watch(&mut self, answer: oneshot::Receiver<ServerOutcome>) {
        self.answer = Some(answer);
    }

    /// The first flight was not a hello: the server's answer is not needed (the tap stops).
    pub fn stop(&mut self) {
        self.answer = None;
    }

    /// Is the answer still awaited?
    pub fn waiting(&self) -> bool {
        self.answer.is_some()
    }

    /// The tap's finding, if it has sent one: never waits and registers no waker. The
    /// tap runs inside the down pump, which only this connection's task polls, so what it
    /// sends is there right after a poll of the pumps; a waker would only make the task
    /// wake itself (and, with a multi-thread runtime, wake a parked worker to run it).
    pub fn try_answer(&mut self) -> Option<ServerOutcome> {
        let rx = self.answer.as_mut()?;
        let outcome = match rx.try_recv() {
            Ok(outcome) => outcome,
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => ServerOutcome::Unknown,
        };
        self.answer = None;
        Some(outcome)
    }

    /// When the answer stops being awaited (`hello_timeout` after the hello), if the hello
    /// side is known.
    pub fn answer_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The deadline passed with no answer: it counts as unknown.
    pub fn answer_timed_out(&mut self, shared: &Shared) {
        self.answer = None;
        self.answered(shared, ServerOutcome::Unknown);
    }

    /// The server answered: report at once if the hello side is known.
    pub fn answered(&mut self, shared: &Shared, outcome: ServerOutcome) {
        self.server = Some(outcome);
        self.report(shared);
    }

    /// Hands over the ClientHello side; reports at once if the server already answered.
    pub fn set_context(&mut self, shared: &Shared, ctx: HelloContext, timeout: Duration) {
        self.deadline = Some(Instant::now() + timeout);
        self.ctx = Some(ctx);
        if self.server.is_some() {
            self.report(shared);
        }
    }

    /// Upgrade mode: the client's request is under a path of the retired endpoint `d`
    /// (counted, logged, and kept in the inventory). Before `upgraded`.
    pub fn retired_path(&mut self, shared: &Shared, d: &crate::config::Deprecation, path: &str) {
        let Some(ctx) = self.ctx.as_mut() else { return };
        let who = Who {
            source: &ctx.source,
            source_is_ip: ctx.source_is_ip,
            destination: &ctx.destination,
        };
        super::retired::called(
            &shared.metrics,
            &who,
            d,
            Some(path),
            ctx.hello_verdict.legacy,
        );
        if let Some(o) = ctx.observation.as_mut() {
            o.retired_path = Some(path.to_string());
        }
    }

    /// Upgrade mode: what the client negotiated with tlspeek stands for the ServerHello, and
    /// its first HTTP request may name its software better than its hello.
    pub fn upgraded(
        &mut self,
        shared: &Shared,
        (version, cipher): (u16, u16),
        user_agent: Option<&str>,
        request: Option<&str>,
    ) {
        self.answer = None;
        self.upgraded = true;
        if let Some(ctx) = self.ctx.as_mut() {
            if let Some(o) = ctx.observation.as_mut() {
                o.user_agent = user_agent.map(str::to_string);
                if user_agent.is_some() || request.is_some() {
                    o.identify(&ctx.hello, user_agent, request);
                }
            }
        }
        self.answered(
            shared,
            ServerOutcome::Hello(Box::new(ServerHelloSummary {
                record_version: version.min(0x0303),
                legacy_version: version.min(0x0303),
                negotiated_version: version,
                cipher_suite: cipher,
                extensions: Vec::new(),
                hello_retry_request: false,
                hello_len: 0,
            })),
        );
    }

    /// At the connection's end (`ended` is how it ended, before alerts are taken into
    /// account): takes an answer the tap sent but nobody read yet, reports if that has not
    /// happened, and copies what the server said and the final verdict into the record.
    pub fn finish(&mut self, shared: &Shared, rec: &mut ConnectionRecord, ended: Outcome) {
        if let Some(Ok(outcome)) = self.answer.take().map(|mut rx| rx.try_recv()) {
            self.server = Some(outcome);
        }
        self.upstream_reset = ended == Outcome::UpstreamReset;
        self.report(shared);
        match &self.server {
            Some(ServerOutcome::Hello(h)) => rec.set_server_hello(h),
            Some(ServerOutcome::Alert { description, .. }) => rec.set_server_alert(*description),
            _ => {}
        }
        if let Some(v) = &self.final_verdict {
            rec.set_verdict(v);
        }
    }

    /// Moves the negotiated metrics and writes the inventory observation, once, when the
    /// hello side is known.
    fn report(&mut self, shared: &Shared) {
        if self.reported {
            return;
        }
        // Taken: after the report nothing reads it, and a tunnel should not hold the
        // hello and its observation for the rest of its life.
        let Some(mut ctx) = self.ctx.take() else {
            return;
        };
        let ctx = &mut ctx;
        self.reported = true;
        let verdict = match &self.server {
            Some(ServerOutcome::Hello(sh)) => negotiated(shared, ctx, sh),
            Some(ServerOutcome::Alert { description, .. }) => {
                tracing::info!(
                    alert = hello::alert_name(*description),
                    "server refused the handshake with an alert"
                );
                ctx.hello_verdict.clone()
            }
            _ => ctx.hello_verdict.clone(),
        };
        let answer = match &self.server {
            _ if self.upgraded => None,
            Some(ServerOutcome::Hello(_)) => ServerAnswer::judge(true, None, false),
            Some(ServerOutcome::Alert { description, .. }) => {
                ServerAnswer::judge(false, Some(hello::alert_name(*description)), false)
            }
            Some(ServerOutcome::Unknown) => None,
            None => ServerAnswer::judge(false, None, self.upstream_reset),
        };
        if let Some(ServerAnswer::Rejected(alert)) = &answer {
            let who = Who {
                source: &ctx.source,
                source_is_ip: ctx.source_is_ip,
                destination: &ctx.destination,
            };
            shared.metrics.server_rejection(&who, alert, verdict.legacy);
        }
        let keep = verdict.legacy || ctx.watched;
        if let Some(mut o) = ctx.observation.take().filter(|_| keep) {
            o.server_answer = answer;
            // Only an observation that is kept is worth identifying (once: the upgrade
            // path may have done it with the plaintext request).
            if o.software.is_empty() {
                o.identify(&ctx.hello, None, None);
                if let Some(learned) = shared.learned_agents.get(&o.ja4) {
                    o.identify_learned(&ctx.hello, &learned.user_agent);
                }
            }
            o.set_verdict(&verdict);
            if let Some(dns) = &shared.dns {
                o.source_name = dns.cached(ctx.source_ip);
            }
            if let Some(inv) = &shared.inventory {
                inv.record(o);
            }
        }
        self.final_verdict = Some(verdict);
    }
}

/// The negotiated verdict of a ServerHello: its metrics, and the first legacy sign that
/// only the server's choice revealed.
fn negotiated(shared: &Shared, ctx: &mut HelloContext, sh: &ServerHelloSummary) -> Verdict {
    let m = &shared.metrics;
    let who = Who {
        source: &ctx.source,
        source_is_ip: ctx.source_is_ip,
        destination: &ctx.destination,
    };
    let v = classify_negotiated(Some(&ctx.hello), sh);
    let version = hello::version_name(sh.negotiated_version);
    let cipher = hello::cipher_label(sh.cipher_suite);
    m.handshake(&who, version, &cipher, v.legacy);
    if let Some(first) = v.first_reason() {
        if !ctx.hello_verdict.legacy {
            // First known legacy now: count it once, and tell the operator.
            m.legacy_connection_now(&who, first.as_str());
            tracing::info!(
                source = %ctx.source,
                destination = %ctx.destination,
                negotiated_version = version,
                negotiated_cipher = %cipher,
                reason = first.as_str(),
                "legacy TLS negotiated"
            );
        }
    }
    if let Some(o) = ctx.observation.as_mut() {
        o.negotiated_version = Some(version.to_string());
        o.negotiated_cipher = Some(cipher);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS10: &[u8] = include_bytes!("../../tests/fixtures/server_openssl_tls10.bin");
    const ALERT: &[u8] = include_bytes!("../../tests/fixtures/server_openssl_alert.bin");

    #[test]
    fn the_tap_reports_a_split_server_hello_once_and_then_steps_aside() {
        let (mut tap, mut rx) = ServerHelloTap::new();
        let (a, b) = TLS10.split_at(7);
        assert!(matches!(tap.see(a), Tapped::More));
        assert!(rx.try_recv().is_err(), "nothing before the hello is whole");
        assert!(matches!(tap.see(b), Tapped::Done));
        match rx.try_recv() {
            Ok(ServerOutcome::Hello(h)) => assert_eq!(h.negotiated_version, 0x0301),
            other => panic!("expected a hello, got {other:?}"),
        }
        assert!(matches!(tap.see(TLS10), Tapped::Done));
    }

    /// What the tap reports for `TLS10` cut at `cuts`.
    fn tapped_in_pieces(cuts: &[usize]) -> ServerHelloSummary {
        let (mut tap, mut rx) = ServerHelloTap::new();
        let mut from = 0;
        for &to in cuts.iter().chain([TLS10.len()].iter()) {
            let piece = &TLS10[from..to];
            let last = to == TLS10.len();
            match tap.see(piece) {
                Tapped::More => assert!(!last, "a whole hello is reported"),
                Tapped::Done => assert!(last, "nothing before the hello is whole ({cuts:?})"),
            }
            from = to;
        }
        match rx.try_recv() {
            Ok(ServerOutcome::Hello(h)) => *h,
            other => panic!("expected a hello for cuts {cuts:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_hello_in_one_piece_or_cut_anywhere_reads_the_same() {
        let whole = tapped_in_pieces(&[]);
        assert_eq!(whole.negotiated_version, 0x0301);
        let n = TLS10.len();
        for a in 1..n {
            assert_eq!(tapped_in_pieces(&[a]), whole, "cut at {a}");
        }
        for a in (1..n).step_by(7) {
            for b in (a + 1..n).step_by(5) {
                assert_eq!(tapped_in_pieces(&[a, b]), whole, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn the_tap_reports_an_alert_or_a_stranger() {
        let (mut tap, mut rx) = ServerHelloTap::new();
        assert!(matches!(tap.see(ALERT), Tapped::Done));
        assert!(matches!(rx.try_recv(), Ok(ServerOutcome::Alert { .. })));
        let (mut tap, mut rx) = ServerHelloTap::new();
        assert!(matches!(tap.see(b"SSH-2.0-OpenSSH\r\n"), Tapped::Done));
        assert!(matches!(rx.try_recv(), Ok(ServerOutcome::Unknown)));
    }

    #[test]
    fn nobody_waiting_stops_the_tap_without_copying() {
        let (mut tap, rx) = ServerHelloTap::new();
        drop(rx);
        assert!(matches!(tap.see(&TLS10[..7]), Tapped::Done));
        assert!(tap.buf.is_empty());
    }

    #[test]
    fn an_answer_is_taken_once_without_waiting() {
        let (mut tap, rx) = ServerHelloTap::new();
        let mut hs = Handshake::default();
        hs.watch(rx);
        assert!(hs.try_answer().is_none(), "nothing sent yet");
        assert!(hs.waiting());
        assert!(matches!(tap.see(ALERT), Tapped::Done));
        assert!(matches!(hs.try_answer(), Some(ServerOutcome::Alert { .. })));
        assert!(!hs.waiting());
        assert!(hs.try_answer().is_none(), "taken once");
    }

    #[test]
    fn a_tap_gone_without_an_answer_counts_as_unknown() {
        let (tap, rx) = ServerHelloTap::new();
        let mut hs = Handshake::default();
        hs.watch(rx);
        drop(tap);
        assert!(matches!(hs.try_answer(), Some(ServerOutcome::Unknown)));
        assert!(!hs.waiting());
    }
}
