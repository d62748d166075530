//! From a finished flow to what the proxy would have written for the same connection: the
//! event line ([`ConnectionRecord`], `mode = "pcap"`, times from the capture) and the
//! inventory [`Observation`] — the same fields, verdicts, likely software and fix, built
//! with the same functions (`set_client_hello`, `classify_negotiated`, `SoftwareDb`).
//!
//! Which flows are connections worth a line: every flow whose client sent a ClientHello
//! (or the start of one: a TLS or SSLv2 handshake record), and flows whose start (SYN) is
//! in the capture towards a port of `[proxy] allowed_ports` (443 by default) even when no
//! hello came — refused, unanswered, or not TLS — so failures show too. Flows that began
//! before the capture and show no hello are not connections the capture can speak for.

use std::time::{Duration, UNIX_EPOCH};

use super::capture::Nanos;
use super::flows::{ClientState, End, Flow, ServerState};
use crate::config::Config;
use crate::hello::{self, classify_client_hello, classify_negotiated};
use crate::inventory::{Observation, ServerAnswer};
use crate::names::HostName;
use crate::telemetry::{ConnectionRecord, Kind, Mode, Outcome, source_label};

/// One connection found in a capture.
#[derive(Clone, Debug)]
pub struct Connection {
    pub record: ConnectionRecord,
    /// The inventory's view of it (connections with a ClientHello only).
    pub observation: Option<Observation>,
    /// Capture time of the connection's start, Unix seconds (for `--since/--until`).
    pub start_secs: i64,
}

fn system_time(ts: Nanos) -> std::time::SystemTime {
    let ns = u64::try_from(ts).unwrap_or(0);
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn secs(ts: Nanos) -> i64 {
    ts.div_euclid(1_000_000_000)
}

/// The first byte of a TLS handshake record or of an SSLv2 record.
fn looks_like_tls(first: Option<u8>) -> bool {
    matches!(first, Some(b) if b == 0x16 || b & 0x80 != 0)
}

/// Builds the connection of a finished flow, or `None` when the flow is not one to report.
pub fn connection(flow: &Flow, cfg: &Config) -> Option<Connection> {
    let (client, server) = flow.client_server()?;
    let c = flow.client?;
    let s = 1 - c;
    let reportable = match &flow.client_state {
        ClientState::Hello(_) | ClientState::TooLarge => true,
        ClientState::NotTls | ClientState::Waiting => {
            looks_like_tls(flow.first_byte[c])
                || (flow.syn
                    && (cfg.proxy.allowed_ports.contains(&server.port) || flow.starttls.is_some()))
        }
    };
    if !reportable {
        return None;
    }

    let client_addr = client.socket_addr();
    let src = source_label(cfg, client_addr.ip());
    let mut rec = ConnectionRecord::new(flow.id, Mode::Pcap, client_addr, src.value.clone());
    rec.ts = system_time(flow.first_ts);
    rec.target_port = Some(server.port);
    let server_ip = server.addr().to_string();
    rec.upstream_ip = Some(server_ip.clone());
    rec.bytes_up = flow.bytes[c];
    rec.bytes_down = flow.bytes[s];
    rec.duration_ms =
        u64::try_from(flow.last_ts.saturating_sub(flow.first_ts) / 1_000_000).unwrap_or(0);

    // The connection's name: the SNI, else the server's address.
    let name = match &flow.client_state {
        ClientState::Hello(h) => h.sni.as_deref().and_then(HostName::parse),
        _ => None,
    };
    let target = name.map_or(server_ip, |n| n.to_string());
    let mut observation = None;
    match &flow.client_state {
        ClientState::Hello(h) => {
            let hello_verdict = classify_client_hello(h);
            rec.set_client_hello(h, &hello_verdict);
            let verdict = match &flow.server_state {
                ServerState::Hello(sh) => {
                    rec.set_server_hello(sh);
                    classify_negotiated(Some(h), sh)
                }
                ServerState::Alert { description, .. } => {
                    rec.set_server_alert(*description);
                    hello_verdict
                }
                ServerState::Waiting | ServerState::Unknown => hello_verdict,
            };
            rec.set_verdict(&verdict);
            let at = secs(flow.hello_ts.unwrap_or(flow.first_ts));
            let mut o = Observation {
                negotiated_version: rec.negotiated_version.map(str::to_string),
                negotiated_cipher: match &flow.server_state {
                    ServerState::Hello(sh) => Some(hello::cipher_label(sh.cipher_suite)),
                    _ => None,
                },
                ..Observation::of_hello(&rec, &src.value, target.clone(), at)
            };
            o.identify(h, None, None);
            o.set_verdict(&verdict);
            observation = Some(o);
        }
        ClientState::NotTls => rec.kind = Some(Kind::NotTls),
        ClientState::TooLarge => rec.kind = Some(Kind::TooLarge),
        // A STARTTLS session whose client never began TLS went on in cleartext.
        ClientState::Waiting if flow.starttls.is_some() && !flow.starttls_upgraded() => {
            rec.kind = Some(Kind::NotTls)
        }
        ClientState::Waiting if flow.bytes[c] > 0 => rec.kind = Some(Kind::Truncated),
        ClientState::Waiting => rec.kind = Some(Kind::None),
    }
    rec.target_host = Some(target);
    rec.starttls = flow.starttls.map(|p| p.as_str());
    rec.outcome = outcome(flow);
    rec.note = note(flow);
    if let Some(o) = observation.as_mut() {
        o.server_answer = server_answer(flow, rec.outcome);
    }
    Some(Connection {
        record: rec,
        observation,
        start_secs: secs(flow.first_ts),
    })
}

/// What the server answered the ClientHello (`ServerAnswer::judge`).
fn server_answer(flow: &Flow, outcome: Outcome) -> Option<ServerAnswer> {
    let alert = match &flow.server_state {
        ServerState::Alert { description, .. } => Some(hello::alert_name(*description)),
        _ => None,
    };
    ServerAnswer::judge(
        matches!(flow.server_state, ServerState::Hello(_)),
        alert,
        outcome == Outcome::UpstreamReset,
    )
}

/// How the connection ended, in the proxy's terms.
fn outcome(flow: &Flow) -> Outcome {
    let c = flow.client.unwrap_or(0);
    let outcome = match (flow.rst, flow.end) {
        (Some(side), _) if side != c && flow.syn && !flow.syn_ack && flow.bytes[1 - c] == 0 => {
            Outcome::ConnectFailed
        }
        (Some(side), _) if side == c => Outcome::ClientReset,
        (Some(_), _) => Outcome::UpstreamReset,
        (None, End::Idle | End::Evicted) if flow.syn && !flow.server_answered => {
            Outcome::ConnectTimeout
        }
        (None, End::Idle | End::Evicted) => Outcome::IdleTimeout,
        (None, End::Closed | End::Reused | End::CaptureEnd) => Outcome::Closed,
    };
    outcome.after_server_alert(matches!(flow.server_state, ServerState::Alert { .. }))
}

fn note(flow: &Flow) -> Option<String> {
    let mut notes = Vec::new();
    if flow.starved {
        notes.push("stopped reassembling early: the analysis' buffer budget was used up");
    }
    match flow.end {
        End::CaptureEnd if flow.rst.is_none() && !(flow.fin[0] && flow.fin[1]) => {
            notes.push("the capture ended before the connection did")
        }
        End::Evicted => notes.push("ended early: the flow table was full (--max-flows)"),
        End::Reused => notes.push("its ports were reused by a new connection"),
        _ => {}
    }
    if !flow.syn {
        notes.push("the connection began before the capture did");
    }
    (!notes.is_empty()).then(|| notes.join("; "))
}
