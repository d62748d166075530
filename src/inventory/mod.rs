//! The inventory of callers: one row per source × destination × JA4 with first and last
//! seen, counts, versions offered and negotiated, ciphers negotiated, legacy reasons,
//! likely software and the fix. Persisted in SQLite by a writer thread (batched, WAL, a
//! bounded queue) so the proxy never waits on the disk, or, for a fleet, in one
//! PostgreSQL database every instance writes (`pg`); read by `/legacy`, `tlspeek report`,
//! `tlspeek correlate` and `tlspeek analyze`.

pub mod agents;
pub mod location;
pub mod pg;
pub mod report;
pub mod software;
pub mod store;
pub mod writer;

use serde::Serialize;

pub use location::{Db, Location};
pub use store::{Filter, Store, StoreError, parse_since};
pub use writer::Inventory;

/// One flush's worth of inventory writes: rows aggregated by key, the User-Agents seen
/// (`(source_ip, user_agent, unix)`), and the recent connections kept for joins.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub rows: Vec<CallerRow>,
    pub agents: Vec<(String, String, i64)>,
    pub connections: Vec<ConnectionSeen>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.agents.is_empty() && self.connections.is_empty()
    }
}

/// What one connection contributes to the inventory.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Unix seconds.
    pub at: i64,
    pub source_ip: String,
    /// The client's source port (what a join with process logs needs).
    pub source_port: u16,
    pub source: String,
    pub source_name: Option<String>,
    /// The connection's name (SNI, else CONNECT host) or the target address.
    pub destination: String,
    pub ja4: String,
    pub ja3_hash: String,
    pub sni: Option<String>,
    pub offered_version: Option<String>,
    pub negotiated_version: Option<String>,
    pub negotiated_cipher: Option<String>,
    pub legacy: bool,
    pub legacy_reasons: Vec<String>,
    pub tls_library: String,
    pub software: String,
    pub software_confidence: String,
    pub fix: String,
    pub user_agent: Option<String>,
    /// A caller on tlspeek's own host: its process's executable and user.
    pub process: Option<String>,
    pub process_user: Option<String>,
    /// The server address the connection went to (the upstream, or a capture's server).
    pub upstream_ip: Option<String>,
    /// What that server answered the client's own hello; `None` when it did not (blocked,
    /// upgraded, or no answer before the end).
    pub server_answer: Option<ServerAnswer>,
    /// A path of a `[[deprecations]]` entry with paths, when the request was seen.
    pub retired_path: Option<String>,
}

/// What a server answered a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAnswer {
    /// A ServerHello.
    Accepted,
    /// An alert (its name), or `reset` before any ServerHello.
    Rejected(String),
}

impl ServerAnswer {
    /// The one rule the proxy, `analyze` and `correlate` judge by: a ServerHello accepts;
    /// a handshake-ending alert, or a reset before any ServerHello, rejects; anything else
    /// (no answer before the end) is neither.
    pub fn judge(server_hello: bool, alert: Option<&str>, reset: bool) -> Option<ServerAnswer> {
        if server_hello {
            Some(ServerAnswer::Accepted)
        } else if let Some(alert) = alert {
            Some(ServerAnswer::Rejected(alert.to_string()))
        } else {
            reset.then(|| ServerAnswer::Rejected("reset".to_string()))
        }
    }
}

/// A caller's connections accepted and rejected by one server address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ServerTally {
    pub address: String,
    pub accepted: u64,
    pub rejected: u64,
    /// Unix seconds.
    pub last_seen: i64,
}

/// Server addresses kept per caller, the most recently seen first.
pub const MAX_SERVERS_PER_CALLER: usize = 16;

/// The retired endpoint a caller calls (from `[[deprecations]]`, when read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retired {
    /// `YYYY-MM-DD`.
    pub since: String,
    pub error: String,
    pub replacement: String,
    pub source: String,
}

impl Observation {
    /// What a connection's ClientHello tells the inventory, from the record it was copied
    /// into: fingerprints, SNI, the offered version. The likely software ([`Observation::identify`]), the
    /// negotiated fields and the verdict are the caller's to fill in (the proxy knows them
    /// later than the hello, and keeps only some observations; a capture knows them at once).
    pub fn of_hello(
        rec: &crate::telemetry::record::ConnectionRecord,
        source: &str,
        destination: String,
        at: i64,
    ) -> Observation {
        Observation {
            at,
            source_ip: rec.source_ip.clone(),
            source_port: rec.source_port,
            source: source.to_string(),
            source_name: None,
            destination,
            ja4: rec.ja4.clone().unwrap_or_default(),
            ja3_hash: rec.ja3_hash.clone().unwrap_or_default(),
            sni: rec.sni.clone(),
            offered_version: rec.max_version.map(str::to_string),
            process: rec.process.clone(),
            process_user: rec.process_user.clone(),
            upstream_ip: rec.upstream_ip.clone(),
            ..Observation::default()
        }
    }

    /// The likely software and its fix, from the hello's fingerprints and, when the
    /// plaintext was seen (upgrade mode), the request and User-Agent.
    pub fn identify(
        &mut self,
        hello: &crate::hello::ClientHelloSummary,
        user_agent: Option<&str>,
        request: Option<&str>,
    ) {
        let facts = software::Facts {
            hello,
            ja4: &self.ja4,
            ja3_hash: &self.ja3_hash,
            user_agent,
            request,
        };
        let stack = crate::hello::classify_stack(hello);
        let m = software::SoftwareDb::embedded().identify(&facts, &stack);
        self.set_match(m);
    }

    /// Software named by a User-Agent learned for this JA4 in upgrade mode, when a
    /// User-Agent rule names it and nothing better is known; the User-Agent is the evidence.
    pub fn identify_learned(&mut self, hello: &crate::hello::ClientHelloSummary, learned_ua: &str) {
        let facts = software::Facts {
            hello,
            ja4: &self.ja4,
            ja3_hash: &self.ja3_hash,
            user_agent: None,
            request: None,
        };
        let stack = crate::hello::classify_stack(hello);
        if let Some(m) =
            software::SoftwareDb::embedded().identify_learned(&facts, learned_ua, &stack)
        {
            let better = software::Confidence::parse(&self.software_confidence)
                .is_none_or(|c| c.rank() < m.confidence.rank());
            if better {
                self.user_agent = Some(learned_ua.to_string());
                self.set_match(m);
            }
        }
    }

    fn set_match(&mut self, m: software::SoftwareMatch) {
        self.tls_library = m.tls_library.as_str().to_string();
        self.software = m.family;
        self.software_confidence = m.confidence.as_str().to_string();
        self.fix = m.fix;
    }
}

impl Observation {
    /// The connection's final verdict.
    pub fn set_verdict(&mut self, verdict: &crate::hello::Verdict) {
        self.legacy = verdict.legacy;
        self.legacy_reasons = verdict
            .reasons
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
    }
}

/// One inventory row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallerRow {
    pub source_ip: String,
    pub destination: String,
    pub ja4: String,
    pub source: String,
    pub source_name: Option<String>,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
    pub last_legacy_seen: Option<i64>,
    pub connections: u64,
    pub legacy_connections: u64,
    pub legacy: bool,
    pub versions_offered: Vec<String>,
    pub versions_negotiated: Vec<String>,
    pub ciphers_negotiated: Vec<String>,
    pub legacy_reasons: Vec<String>,
    pub ja3_hash: String,
    pub tls_library: String,
    pub software: String,
    pub software_confidence: String,
    pub fix: String,
    pub last_sni: Option<String>,
    pub user_agent: Option<String>,
    /// What the source's own plain-HTTP User-Agents say (filled in when read).
    pub source_os: Option<agents::Named>,
    pub source_runtime: Option<agents::Named>,
    /// Who the caller is: the process and its user (named live for callers on tlspeek's
    /// own host, or from Windows event logs by `tlspeek correlate --write-db`), and the
    /// Entra ID account and app of the sign-ins it explains (`--write-db`).
    #[serde(flatten)]
    pub who: Attribution,
    /// The server's answers: connections whose hello a server accepted (ServerHello) and
    /// rejected (alert, or reset before any ServerHello).
    pub server_accepted: u64,
    pub server_rejected: u64,
    /// The last rejection: its alert (or `reset`) and Unix time.
    pub last_server_alert: Option<String>,
    pub last_rejected: Option<i64>,
    /// Per server address (at most `MAX_SERVERS_PER_CALLER`, the most recently seen).
    pub servers: Vec<ServerTally>,
    /// The last path seen of a `[[deprecations]]` entry with paths.
    pub retired_path: Option<String>,
    /// The retired endpoint this caller calls: filled in from the configuration when
    /// read (`mark_retired`), never stored.
    pub retired: Option<Retired>,
}

impl CallerRow {
    /// (server addresses that rejected some of this caller's hellos, those that accepted
    /// some, all of them): "rejected by 3 of 7 front ends, accepted by 5" is `(3, 5, 7)`.
    pub fn front_ends(&self) -> (usize, usize, usize) {
        let rejecting = self.servers.iter().filter(|s| s.rejected > 0).count();
        let accepting = self.servers.iter().filter(|s| s.accepted > 0).count();
        (rejecting, accepting, self.servers.len())
    }

    /// Fills in `retired` from the `[[deprecations]]` of `cfg`.
    pub fn mark_retired(&mut self, cfg: &crate::config::Config) {
        self.retired = crate::names::HostName::parse(&self.destination)
            .and_then(|host| cfg.deprecation_of(&host, self.retired_path.as_deref()))
            .map(|d| Retired {
                since: d.date.clone(),
                error: d.error.clone(),
                replacement: d.replacement.clone(),
                source: d.source.clone(),
            });
    }
}

/// Folds per-address tallies of `b` into `a`, keeping the most recently seen addresses.
fn merge_servers(a: &mut Vec<ServerTally>, b: &[ServerTally]) {
    for t in b {
        match a.iter_mut().find(|x| x.address == t.address) {
            Some(x) => {
                x.accepted += t.accepted;
                x.rejected += t.rejected;
                x.last_seen = x.last_seen.max(t.last_seen);
            }
            None => a.push(t.clone()),
        }
    }
    a.sort_by(|x, y| {
        y.last_seen
            .cmp(&x.last_seen)
            .then_with(|| x.address.cmp(&y.address))
    });
    a.truncate(MAX_SERVERS_PER_CALLER);
}

/// Who a caller is, beyond its address. Personal data: never a metric label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    pub process: Option<String>,
    pub process_user: Option<String>,
    pub account: Option<String>,
    pub app: Option<String>,
}

impl Attribution {
    /// Each field `newer` knows replaces this one's.
    pub fn update(&mut self, newer: &Attribution) {
        for (mine, theirs) in [
            (&mut self.process, &newer.process),
            (&mut self.process_user, &newer.process_user),
            (&mut self.account, &newer.account),
            (&mut self.app, &newer.app),
        ] {
            if theirs.is_some() {
                *mine = theirs.clone();
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Attribution::default()
    }
}

/// One recent legacy or watched connection, kept so that `tlspeek correlate` can join it
/// with process logs (by source address and port) and sign-ins (by time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionSeen {
    pub source_ip: String,
    pub source_port: u16,
    /// Unix seconds.
    pub at: i64,
    pub destination: String,
    pub ja4: String,
    pub legacy: bool,
}

impl ConnectionSeen {
    pub fn of(o: &Observation) -> ConnectionSeen {
        ConnectionSeen {
            source_ip: o.source_ip.clone(),
            source_port: o.source_port,
            at: o.at,
            destination: o.destination.clone(),
            ja4: o.ja4.clone(),
            legacy: o.legacy,
        }
    }

    /// The caller row it belongs to.
    pub fn key(&self) -> CallerKey {
        (
            self.source_ip.clone(),
            self.destination.clone(),
            self.ja4.clone(),
        )
    }
}

/// The primary key of a row.
pub type CallerKey = (String, String, String);

/// `a` ∪ `b`, sorted, each value once.
fn union(a: &mut Vec<String>, b: &[String]) {
    a.extend(b.iter().cloned());
    a.sort_unstable();
    a.dedup();
}

pub(crate) fn union_reasons(a: &mut Vec<String>, b: &[String]) {
    union(a, b);
    // Priority order (`LegacyReason::ALL`); a reason this version does not know goes last.
    a.sort_by_key(|r| {
        crate::hello::LegacyReason::ALL
            .iter()
            .position(|x| x.as_str() == r)
            .unwrap_or(usize::MAX)
    });
}

impl CallerRow {
    /// The report's order: newest first, then by key.
    pub fn sort_for_report(rows: &mut [CallerRow]) {
        rows.sort_by(|a, b| {
            b.last_seen.cmp(&a.last_seen).then_with(|| {
                (&a.source_ip, &a.destination, &a.ja4).cmp(&(&b.source_ip, &b.destination, &b.ja4))
            })
        });
    }

    pub fn key(&self) -> CallerKey {
        (
            self.source_ip.clone(),
            self.destination.clone(),
            self.ja4.clone(),
        )
    }

    pub fn from_observation(o: &Observation) -> CallerRow {
        let mut row = CallerRow {
            source_ip: o.source_ip.clone(),
            destination: o.destination.clone(),
            ja4: o.ja4.clone(),
            source: o.source.clone(),
            source_name: o.source_name.clone(),
            first_seen: o.at,
            last_seen: o.at,
            last_legacy_seen: o.legacy.then_some(o.at),
            connections: 1,
            legacy_connections: u64::from(o.legacy),
            legacy: o.legacy,
            versions_offered: o.offered_version.iter().cloned().collect(),
            versions_negotiated: o.negotiated_version.iter().cloned().collect(),
            ciphers_negotiated: o.negotiated_cipher.iter().cloned().collect(),
            legacy_reasons: Vec::new(),
            ja3_hash: o.ja3_hash.clone(),
            tls_library: if o.tls_library.is_empty() {
                software::UNKNOWN_FAMILY.to_string()
            } else {
                o.tls_library.clone()
            },
            software: o.software.clone(),
            software_confidence: o.software_confidence.clone(),
            fix: o.fix.clone(),
            last_sni: o.sni.clone(),
            user_agent: o.user_agent.clone(),
            source_os: None,
            source_runtime: None,
            who: Attribution {
                process: o.process.clone(),
                process_user: o.process_user.clone(),
                ..Attribution::default()
            },
            server_accepted: 0,
            server_rejected: 0,
            last_server_alert: None,
            last_rejected: None,
            servers: Vec::new(),
            retired_path: o.retired_path.clone(),
            retired: None,
        };
        if let Some(answer) = &o.server_answer {
            match answer {
                ServerAnswer::Accepted => row.server_accepted = 1,
                ServerAnswer::Rejected(alert) => {
                    row.server_rejected = 1;
                    row.last_server_alert = Some(alert.clone());
                    row.last_rejected = Some(o.at);
                }
            }
            if let Some(ip) = &o.upstream_ip {
                row.servers.push(ServerTally {
                    address: ip.clone(),
                    accepted: row.server_accepted,
                    rejected: row.server_rejected,
                    last_seen: o.at,
                });
            }
        }
        union_reasons(&mut row.legacy_reasons, &o.legacy_reasons);
        row
    }

    /// Folds `other` (same key) into `self`: earliest first, latest last, counts summed,
    /// sets united; the newer row's descriptive fields win.
    pub fn merge(&mut self, other: &CallerRow) {
        let newer = other.last_seen >= self.last_seen;
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        self.last_legacy_seen = match (self.last_legacy_seen, other.last_legacy_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.connections += other.connections;
        self.legacy_connections += other.legacy_connections;
        self.legacy |= other.legacy;
        union(&mut self.versions_offered, &other.versions_offered);
        union(&mut self.versions_negotiated, &other.versions_negotiated);
        union(&mut self.ciphers_negotiated, &other.ciphers_negotiated);
        union_reasons(&mut self.legacy_reasons, &other.legacy_reasons);
        if newer {
            self.source = other.source.clone();
            if other.source_name.is_some() {
                self.source_name = other.source_name.clone();
            }
            if other.last_sni.is_some() {
                self.last_sni = other.last_sni.clone();
            }
            if !other.ja3_hash.is_empty() {
                self.ja3_hash = other.ja3_hash.clone();
            }
        }
        // A more certain identification wins over a guess (a User-Agent seen in upgrade
        // mode names PowerShell where the hello alone only said "SChannel").
        if rank(&other.software_confidence) > rank(&self.software_confidence)
            || (newer && rank(&other.software_confidence) == rank(&self.software_confidence))
        {
            self.tls_library = other.tls_library.clone();
            self.software = other.software.clone();
            self.software_confidence = other.software_confidence.clone();
            self.fix = other.fix.clone();
        }
        if other.user_agent.is_some() && (newer || self.user_agent.is_none()) {
            self.user_agent = other.user_agent.clone();
        }
        if other.source_os.is_some() && (newer || self.source_os.is_none()) {
            self.source_os = other.source_os.clone();
        }
        if other.source_runtime.is_some() && (newer || self.source_runtime.is_none()) {
            self.source_runtime = other.source_runtime.clone();
        }
        self.server_accepted += other.server_accepted;
        self.server_rejected += other.server_rejected;
        // On a tie (the same second), the row merged in later is the later rejection.
        if other.last_rejected.is_some() && other.last_rejected >= self.last_rejected {
            self.last_rejected = other.last_rejected;
            self.last_server_alert = other.last_server_alert.clone();
        }
        merge_servers(&mut self.servers, &other.servers);
        if other.retired_path.is_some() && (newer || self.retired_path.is_none()) {
            self.retired_path = other.retired_path.clone();
        }
        if newer {
            self.who.update(&other.who);
        } else {
            let mut who = other.who.clone();
            who.update(&self.who);
            self.who = who;
        }
    }
}

/// How certain a software identification is, as a number (higher is surer).
pub(crate) fn rank(confidence: &str) -> u8 {
    software::Confidence::parse(confidence).map_or(0, software::Confidence::rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at: i64, legacy: bool, negotiated: &str, reasons: &[&str]) -> Observation {
        Observation {
            at,
            source_ip: "10.0.0.1".into(),
            source: "10.0.0.1".into(),
            destination: "login.microsoftonline.com".into(),
            ja4: "t10d".into(),
            offered_version: Some("TLS1.0".into()),
            negotiated_version: Some(negotiated.into()),
            legacy,
            legacy_reasons: reasons.iter().map(|s| s.to_string()).collect(),
            software: "unknown".into(),
            software_confidence: "unknown".into(),
            ..Observation::default()
        }
    }

    #[test]
    fn merge_keeps_extremes_counts_and_sets() {
        let mut a = CallerRow::from_observation(&obs(
            200,
            true,
            "TLS1.0",
            &["max_version_below_tls12", "negotiated_tls10"],
        ));
        assert_eq!(
            a.legacy_reasons,
            ["negotiated_tls10", "max_version_below_tls12"]
        );
        let mut b = CallerRow::from_observation(&obs(100, false, "TLS1.2", &[]));
        b.software = "curl".into();
        b.software_confidence = "exact".into();
        a.merge(&b);
        assert_eq!(
            (a.first_seen, a.last_seen, a.last_legacy_seen),
            (100, 200, Some(200))
        );
        assert_eq!(
            (a.connections, a.legacy_connections, a.legacy),
            (2, 1, true)
        );
        assert_eq!(a.versions_negotiated, ["TLS1.0", "TLS1.2"]);
        assert_eq!(a.software, "curl", "an exact match wins over unknown");
    }
}
