//! The ServerHello peek and the connection's final verdict.
//!
//! [`HandshakeWatch::observe`] is the tap of the upstream→client pump: it sees each chunk
//! before it is written, copies the first bytes until one whole ServerHello (or an alert,
//! or something else) is recognised, and never holds the stream back. It is bounded
//! (64 KiB) and timed (`hello_timeout` after the ClientHello went upstream). Once both the
//! ClientHello context and the server's answer are known, the negotiated metrics move and
//! the connection's inventory observation is written — at once, not when a long tunnel
//! closes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::hello::{
    self, ClientHelloSummary, ServerDetection, ServerHelloSummary, Verdict, classify_negotiated,
};
use crate::inventory::Observation;
use crate::telemetry::{ConnectionRecord, Who};

use crate::shared::Shared;

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

/// What the ClientHello side knows, handed over once the hello is parsed.
pub struct HelloContext {
    pub shared: Arc<Shared>,
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
    pub timeout: Duration,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    done: bool,
    server: Option<ServerOutcome>,
    deadline: Option<Instant>,
    ctx: Option<HelloContext>,
    reported: bool,
    final_verdict: Option<Verdict>,
}

#[derive(Default)]
pub struct HandshakeWatch {
    state: Mutex<State>,
}

impl HandshakeWatch {
    pub fn new() -> HandshakeWatch {
        HandshakeWatch::default()
    }

    /// The tap: returns false once it needs no more bytes.
    pub fn observe(&self, chunk: &[u8]) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if s.done {
            return false;
        }
        if s.deadline.is_some_and(|d| Instant::now() > d) {
            s.finish_with(ServerOutcome::Unknown);
            return false;
        }
        // Anything but a handshake or alert record cannot start a TLS server's answer: stop
        // at once instead of buffering a server-speaks-first protocol.
        if s.buf.is_empty() && !matches!(chunk.first(), Some(0x16) | Some(0x15)) {
            s.finish_with(ServerOutcome::Unknown);
            return false;
        }
        let room = hello::MAX_HELLO_BYTES.saturating_sub(s.buf.len());
        s.buf
            .extend_from_slice(chunk.get(..chunk.len().min(room)).unwrap_or_default());
        match hello::detect_server_hello(&s.buf, hello::MAX_HELLO_BYTES) {
            ServerDetection::NeedMore if room > chunk.len() => return true,
            ServerDetection::NeedMore | ServerDetection::NotTls | ServerDetection::TooLarge => {
                s.finish_with(ServerOutcome::Unknown)
            }
            ServerDetection::Hello(h) => s.finish_with(ServerOutcome::Hello(h)),
            ServerDetection::Alert { level, description } => {
                s.finish_with(ServerOutcome::Alert { level, description })
            }
        }
        false
    }

    /// Stops watching (the client's first flight was not a hello).
    pub fn stop(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.done = true;
            s.buf = Vec::new();
        }
    }

    /// Hands over the ClientHello side; reports at once if the server already answered.
    pub fn set_context(&self, ctx: HelloContext) {
        let Ok(mut s) = self.state.lock() else { return };
        s.deadline = Some(Instant::now() + ctx.timeout);
        s.ctx = Some(ctx);
        if s.server.is_some() {
            s.report();
        }
    }

    /// Upgrade mode: what the client negotiated with tlspeek stands for the ServerHello, and
    /// its first HTTP request may name its software better than its hello.
    pub fn upgraded(
        &self,
        version: u16,
        cipher: u16,
        user_agent: Option<&str>,
        request: Option<&str>,
    ) {
        let Ok(mut s) = self.state.lock() else { return };
        s.done = true;
        s.server = Some(ServerOutcome::Hello(Box::new(ServerHelloSummary {
            record_version: version.min(0x0303),
            legacy_version: version.min(0x0303),
            negotiated_version: version,
            cipher_suite: cipher,
            extensions: Vec::new(),
            hello_retry_request: false,
            hello_len: 0,
        })));
        if let Some(ctx) = s.ctx.as_mut() {
            if let Some(o) = ctx.observation.as_mut() {
                o.user_agent = user_agent.map(str::to_string);
                if user_agent.is_some() || request.is_some() {
                    o.identify(&ctx.hello, user_agent, request);
                }
            }
        }
        s.report();
    }

    /// Copies what the server said into the record (at close), and writes the inventory
    /// observation if it has not been written yet.
    pub fn finish(&self, rec: &mut ConnectionRecord) {
        let Ok(mut s) = self.state.lock() else { return };
        s.report();
        match &s.server {
            Some(ServerOutcome::Hello(h)) => rec.set_server_hello(h),
            Some(ServerOutcome::Alert { description, .. }) => rec.set_server_alert(*description),
            _ => {}
        }
        if let Some(v) = &s.final_verdict {
            rec.set_verdict(v);
        }
    }
}

impl State {
    fn finish_with(&mut self, outcome: ServerOutcome) {
        self.done = true;
        self.buf = Vec::new();
        self.server = Some(outcome);
        if self.ctx.is_some() {
            self.report();
        }
    }

    /// Moves the negotiated metrics and writes the inventory observation, once.
    fn report(&mut self) {
        if self.reported {
            return;
        }
        let Some(ctx) = self.ctx.as_mut() else { return };
        self.reported = true;
        let m = &ctx.shared.metrics;
        let who = Who {
            source: &ctx.source,
            source_is_ip: ctx.source_is_ip,
            destination: &ctx.destination,
        };
        let verdict = match &self.server {
            Some(ServerOutcome::Hello(sh)) => {
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
            Some(ServerOutcome::Alert { description, .. }) => {
                tracing::info!(
                    alert = hello::alert_name(*description),
                    "server refused the handshake with an alert"
                );
                ctx.hello_verdict.clone()
            }
            _ => ctx.hello_verdict.clone(),
        };
        let keep = verdict.legacy || ctx.watched;
        if let Some(mut o) = ctx.observation.take().filter(|_| keep) {
            // Only an observation that is kept is worth identifying (once: the upgrade
            // path may have done it with the plaintext request).
            if o.software.is_empty() {
                o.identify(&ctx.hello, None, None);
            }
            o.set_verdict(&verdict);
            if let Some(dns) = &ctx.shared.dns {
                o.source_name = dns.cached(ctx.source_ip);
            }
            if let Some(inv) = &ctx.shared.inventory {
                inv.record(o);
            }
        }
        self.final_verdict = Some(verdict);
    }
}
