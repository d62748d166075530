//! The connection record: everything known about one connection, written as one JSON event
//! line when the connection ends. Field names and value strings are a contract (the
//! README's "Event lines"): dashboards, reports and users' log pipelines read them.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::hello::{self, ClientHelloSummary, HelloFormat, ServerHelloSummary, Verdict};

/// How the connection reached tlspeek.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Connect,
    Transparent,
    Http,
    Pcap,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Connect => "connect",
            Mode::Transparent => "transparent",
            Mode::Http => "http",
            Mode::Pcap => "pcap",
        }
    }
}

/// What the client's first flight turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Tls,
    Sslv2,
    NotTls,
    Truncated,
    TooLarge,
    /// The client sent nothing (before the hello timeout, or at all).
    None,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tls => "tls",
            Kind::Sslv2 => "sslv2",
            Kind::NotTls => "not_tls",
            Kind::Truncated => "truncated",
            Kind::TooLarge => "too_large",
            Kind::None => "none",
        }
    }
}

/// How the connection ended: the event line's `outcome` and the `outcome` label of
/// `tlspeek_connections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Closed,
    RefusedSource,
    RefusedPort,
    RefusedDestination,
    RefusedLimit,
    BadRequest,
    AuthRequired,
    DnsFailed,
    ConnectFailed,
    ConnectTimeout,
    RejectedByServer,
    UpstreamReset,
    ClientReset,
    IdleTimeout,
    Blocked,
    UpgradeFailed,
    InternalError,
}

impl Outcome {
    /// The outcome of a connection whose server answered the ClientHello with an alert (a
    /// fatal one, or a warning that ends the handshake): a close or a reset after it means
    /// the server refused the handshake. Other outcomes (idle, blocked, …) stand. The proxy
    /// and `analyze` both judge by this.
    pub fn after_server_alert(self, alert_seen: bool) -> Outcome {
        match self {
            Outcome::Closed | Outcome::UpstreamReset | Outcome::ClientReset if alert_seen => {
                Outcome::RejectedByServer
            }
            other => other,
        }
    }

    /// How a tunnel ended when one side's pump failed (a reset or another I/O error).
    pub fn reset_by(culprit: crate::net::splice::Side) -> Outcome {
        match culprit {
            crate::net::splice::Side::Client => Outcome::ClientReset,
            crate::net::splice::Side::Upstream => Outcome::UpstreamReset,
        }
    }

    pub const ALL: [Outcome; 17] = [
        Outcome::Closed,
        Outcome::RefusedSource,
        Outcome::RefusedPort,
        Outcome::RefusedDestination,
        Outcome::RefusedLimit,
        Outcome::BadRequest,
        Outcome::AuthRequired,
        Outcome::DnsFailed,
        Outcome::ConnectFailed,
        Outcome::ConnectTimeout,
        Outcome::RejectedByServer,
        Outcome::UpstreamReset,
        Outcome::ClientReset,
        Outcome::IdleTimeout,
        Outcome::Blocked,
        Outcome::UpgradeFailed,
        Outcome::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::RefusedSource => "refused_source",
            Outcome::RefusedPort => "refused_port",
            Outcome::RefusedDestination => "refused_destination",
            Outcome::RefusedLimit => "refused_limit",
            Outcome::BadRequest => "bad_request",
            Outcome::AuthRequired => "auth_required",
            Outcome::DnsFailed => "dns_failed",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::ConnectTimeout => "connect_timeout",
            Outcome::RejectedByServer => "rejected_by_server",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::ClientReset => "client_reset",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::Blocked => "blocked",
            Outcome::UpgradeFailed => "upgrade_failed",
            Outcome::InternalError => "internal_error",
        }
    }
}

/// What the policy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionTaken {
    Passed,
    Blocked,
    Upgraded,
}

impl ActionTaken {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionTaken::Passed => "passed",
            ActionTaken::Blocked => "blocked",
            ActionTaken::Upgraded => "upgraded",
        }
    }
}

/// One event line. Absent values serialize as `null`, lists as `[]`.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionRecord {
    #[serde(serialize_with = "rfc3339")]
    pub ts: SystemTime,
    pub id: u64,
    pub mode: Mode,
    pub source_ip: String,
    pub source_port: u16,
    pub source: String,
    pub source_name: Option<String>,
    /// A caller on this host: its process's executable, its user and pid (else null).
    pub process: Option<String>,
    pub process_user: Option<String>,
    pub process_pid: Option<u32>,
    pub user: Option<String>,
    pub target_host: Option<String>,
    pub target_port: Option<u16>,
    /// The connection's name was inferred from its destination address (no SNI).
    pub name_inferred: bool,
    pub upstream_ip: Option<String>,
    pub kind: Option<Kind>,
    /// The STARTTLS protocol of the port (`smtp`, `imap`, `pop3`, `ldap`, `xmpp`), else
    /// null; a session that never upgraded has `kind = "not_tls"`.
    pub starttls: Option<&'static str>,
    pub record_version: Option<&'static str>,
    pub client_version: Option<&'static str>,
    pub supported_versions: Vec<&'static str>,
    pub max_version: Option<&'static str>,
    /// As offered (a 3-byte SSLv2 spec above 0xffff); written as hex strings, `0x1301`.
    #[serde(serialize_with = "hex_suites")]
    pub cipher_suites: Vec<u32>,
    pub offers_3des: Option<bool>,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub ech: Option<bool>,
    pub ja3: Option<String>,
    pub ja3_hash: Option<String>,
    pub ja4: Option<String>,
    /// The TLS library the hello's structure names (`hello::stack`), `unknown` when the
    /// evidence is thin; null without a hello.
    pub tls_library: Option<&'static str>,
    pub negotiated_version: Option<&'static str>,
    pub negotiated_cipher: Option<String>,
    pub ja3s: Option<String>,
    pub server_alert: Option<&'static str>,
    pub legacy: bool,
    pub legacy_reasons: Vec<&'static str>,
    pub rule: Option<String>,
    pub action: Option<ActionTaken>,
    pub would: Option<&'static str>,
    pub upstream_version: Option<&'static str>,
    pub upstream_cipher: Option<String>,
    pub user_agent: Option<String>,
    pub request: Option<String>,
    pub outcome: Outcome,
    /// Why an action could not be carried out as decided (e.g. "cannot upgrade: …").
    pub note: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// Plain-HTTP connections write one line per request instead of this one.
    #[serde(skip)]
    pub written_elsewhere: bool,
}

/// Suites as `hello::ClientHelloSummary::cipher_suites_hex` writes them, formatted only
/// when the line is written (a tunnel holds 4 bytes per suite, not a string).
fn hex_suites<S: serde::Serializer>(suites: &[u32], s: S) -> Result<S::Ok, S::Error> {
    struct Hex(u32);
    impl Serialize for Hex {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(hello::SuiteHex(self.0).encode(&mut [0; 10]))
        }
    }
    s.collect_seq(suites.iter().map(|&c| Hex(c)))
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl ConnectionRecord {
    /// A record for a connection that has just been accepted.
    pub fn new(id: u64, mode: Mode, peer: SocketAddr, source: String) -> ConnectionRecord {
        ConnectionRecord {
            ts: SystemTime::now(),
            id,
            mode,
            source_ip: crate::net::addr_text::ip_string(peer.ip().to_canonical()),
            source_port: peer.port(),
            source,
            source_name: None,
            process: None,
            process_user: None,
            process_pid: None,
            user: None,
            target_host: None,
            target_port: None,
            name_inferred: false,
            upstream_ip: None,
            kind: None,
            starttls: None,
            record_version: None,
            client_version: None,
            supported_versions: Vec::new(),
            max_version: None,
            cipher_suites: Vec::new(),
            offers_3des: None,
            sni: None,
            alpn: Vec::new(),
            ech: None,
            ja3: None,
            ja3_hash: None,
            ja4: None,
            tls_library: None,
            negotiated_version: None,
            negotiated_cipher: None,
            ja3s: None,
            server_alert: None,
            legacy: false,
            legacy_reasons: Vec::new(),
            rule: None,
            action: None,
            would: None,
            upstream_version: None,
            upstream_cipher: None,
            user_agent: None,
            request: None,
            outcome: Outcome::Closed,
            note: None,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            written_elsewhere: false,
        }
    }

    /// Copies the ClientHello's fields and the hello-time verdict into the record.
    pub fn set_client_hello(&mut self, h: &ClientHelloSummary, verdict: &Verdict) {
        self.kind = Some(match h.format {
            HelloFormat::Tls => Kind::Tls,
            HelloFormat::Sslv2 => Kind::Sslv2,
        });
        self.record_version = Some(hello::version_name(h.record_version));
        self.client_version = Some(hello::version_name(h.client_version));
        self.supported_versions = h
            .supported_versions
            .iter()
            .map(|v| hello::version_name(*v))
            .collect();
        self.max_version = Some(hello::version_name(h.max_version()));
        self.cipher_suites = h.cipher_suites.clone();
        self.offers_3des = Some(h.offers_3des());
        self.sni = h.sni.clone();
        self.alpn = h.alpn.clone();
        self.ech = Some(h.ech);
        let (ja3, ja3_hash) = h.ja3_with_hash();
        self.ja3 = Some(ja3);
        self.ja3_hash = Some(ja3_hash);
        self.ja4 = Some(h.ja4());
        self.tls_library = Some(hello::classify_stack(h).library.as_str());
        self.set_verdict(verdict);
    }

    /// The local process that opened the connection.
    pub fn set_process(&mut self, p: &crate::local_process::LocalProcess) {
        self.process = Some(p.exe.clone());
        self.process_user = Some(p.user.clone());
        self.process_pid = Some(p.pid);
    }

    /// What the server answered: the negotiated version and cipher, JA3S.
    pub fn set_server_hello(&mut self, sh: &ServerHelloSummary) {
        self.negotiated_version = Some(hello::version_name(sh.negotiated_version));
        let suite = hello::SuiteHex(u32::from(sh.cipher_suite));
        self.negotiated_cipher = Some(suite.encode(&mut [0; 10]).to_string());
        self.ja3s = Some(sh.ja3s_hash());
    }

    /// The server refused the handshake with this alert.
    pub fn set_server_alert(&mut self, description: u8) {
        self.server_alert = Some(hello::alert_name(description));
    }

    pub fn set_verdict(&mut self, verdict: &Verdict) {
        self.legacy = verdict.legacy;
        self.legacy_reasons = verdict.reasons.iter().map(|r| r.as_str()).collect();
    }

    /// The event line, without the trailing newline.
    pub fn to_json(&self) -> String {
        super::event_line::event_line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_or_reset_after_a_server_alert_is_a_rejection() {
        for o in [
            Outcome::Closed,
            Outcome::UpstreamReset,
            Outcome::ClientReset,
        ] {
            assert_eq!(o.after_server_alert(true), Outcome::RejectedByServer);
            assert_eq!(o.after_server_alert(false), o);
        }
        assert_eq!(
            Outcome::IdleTimeout.after_server_alert(true),
            Outcome::IdleTimeout
        );
        assert_eq!(Outcome::Blocked.after_server_alert(true), Outcome::Blocked);
    }
}
