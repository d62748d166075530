//! Rules → action. The first rule that matches the connection's name and source decides;
//! a rule without destinations and sources matches everything; a source on a rule's
//! `exempt` list is not subject to that rule (the next rules are tried); an expired rule is
//! skipped. Only validated host names reach a rule: peer strings never pick one otherwise.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::config::{Action, Config, Rule, SourceSelector};
use crate::hello::{ClientHelloSummary, HelloFormat, LegacyReason, Verdict};
use crate::names::HostName;

pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;
pub const ALERT_PROTOCOL_VERSION: u8 = 70;
pub const ALERT_INSUFFICIENT_SECURITY: u8 = 71;
pub const ALERT_INTERNAL_ERROR: u8 = 80;

/// A fatal TLS alert record answering `hello`: record version min(client_version, TLS 1.2),
/// TLS 1.0 for an SSLv2-compatible hello (a client that sent one reads TLS records next).
pub fn alert_record(hello: &ClientHelloSummary, description: u8) -> [u8; 7] {
    let version = match hello.format {
        HelloFormat::Sslv2 => 0x0301,
        HelloFormat::Tls => hello.client_version.clamp(0x0300, 0x0303),
    };
    let [major, minor] = version.to_be_bytes();
    [0x15, major, minor, 0x00, 0x02, 0x02, description]
}

/// The alert that blocks a legacy hello: `protocol_version` for an old version,
/// `insufficient_security` when only 3DES (or weaker) is offered.
pub fn block_alert(verdict: &Verdict) -> u8 {
    if verdict
        .reasons
        .contains(&LegacyReason::MaxVersionBelowTls12)
    {
        ALERT_PROTOCOL_VERSION
    } else {
        ALERT_INSUFFICIENT_SECURITY
    }
}

/// What the policy decided for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub rule: Option<&'a Rule>,
    /// The action to carry out (after the kill switch and dry run are applied).
    pub action: Action,
    /// What a dry-run (or switched-off) rule would have done.
    pub would: Option<Action>,
}

fn source_matches(cfg: &Config, sel: &[SourceSelector], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let name = cfg.sources.name_for(ip);
    sel.iter().any(|s| match s {
        SourceSelector::Net(n) => n.contains(&ip),
        SourceSelector::Name(n) => name == Some(n.as_str()),
    })
}

/// The first rule that applies to a connection named `name` from `source` at `now`.
pub fn matching_rule<'a>(
    cfg: &'a Config,
    name: Option<&HostName>,
    source: IpAddr,
    now: SystemTime,
) -> Option<&'a Rule> {
    cfg.rules.iter().find(|r| {
        if r.expires.is_some_and(|t| now > t) {
            return false;
        }
        if !r.destinations.0.is_empty() && !name.is_some_and(|n| r.destinations.matches(n)) {
            return false;
        }
        if !r.sources.is_empty() && !source_matches(cfg, &r.sources, source) {
            return false;
        }
        !source_matches(cfg, &r.exempt, source)
    })
}

/// Decides what to do with a connection whose hello-time verdict is `legacy`. Only legacy
/// connections are ever blocked or upgraded; everything else passes.
pub fn decide<'a>(
    cfg: &'a Config,
    name: Option<&HostName>,
    source: IpAddr,
    legacy: bool,
    now: SystemTime,
) -> Decision<'a> {
    let rule = matching_rule(cfg, name, source, now);
    let wanted = match rule {
        Some(r) if legacy => r.action,
        _ => Action::Observe,
    };
    let enforce = cfg.enforcement_enabled && !rule.is_some_and(|r| r.dry_run);
    match wanted {
        Action::Observe => Decision {
            rule,
            action: Action::Observe,
            would: None,
        },
        act if enforce => Decision {
            rule,
            action: act,
            would: None,
        },
        act => Decision {
            rule,
            action: Action::Observe,
            would: Some(act),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rules: &str) -> Config {
        Config::from_toml_str(&format!(
            "[[sources]]\ncidr = \"10.1.2.0/24\"\nname = \"build-agents\"\n{rules}"
        ))
        .unwrap()
    }

    fn name(s: &str) -> HostName {
        HostName::parse(s).unwrap()
    }

    #[test]
    fn first_match_by_destination_and_source() {
        let c = cfg(r#"
[[rules]]
name = "agents"
sources = ["build-agents"]
destinations = ["login.microsoftonline.com"]
[[rules]]
name = "lab"
sources = ["10.9.0.0/16"]
exempt = ["10.9.9.9"]
[[rules]]
name = "all"
"#);
        let now = SystemTime::now();
        let login = name("LOGIN.MICROSOFTONLINE.COM.");
        let r = |n: Option<&HostName>, ip: &str| {
            matching_rule(&c, n, ip.parse().unwrap(), now).map(|r| r.name.as_str())
        };
        assert_eq!(r(Some(&login), "10.1.2.3"), Some("agents"));
        assert_eq!(r(Some(&login), "::ffff:10.1.2.3"), Some("agents"));
        assert_eq!(r(Some(&name("example.com")), "10.1.2.3"), Some("all"));
        assert_eq!(r(None, "10.1.2.3"), Some("all"));
        assert_eq!(r(None, "10.9.1.1"), Some("lab"));
        assert_eq!(r(None, "10.9.9.9"), Some("all"));
    }

    #[test]
    fn expired_rules_are_skipped() {
        let c =
            cfg("[[rules]]\nname = \"old\"\nexpires = \"2020-01-01\"\n[[rules]]\nname = \"new\"\n");
        let r = matching_rule(&c, None, "10.0.0.1".parse().unwrap(), SystemTime::now()).unwrap();
        assert_eq!(r.name, "new");
    }

    #[test]
    fn alerts_answer_in_the_clients_version() {
        use crate::hello::{Detection, detect_client_hello};
        let h = |name: &str| match detect_client_hello(
            &std::fs::read(format!(
                "{}/tests/fixtures/{name}.bin",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
            1 << 16,
        ) {
            Detection::Hello(h) => *h,
            other => panic!("{other:?}"),
        };
        let tls10 = h("curl_tls10");
        let v = crate::hello::classify_client_hello(&tls10);
        assert_eq!(
            alert_record(&tls10, block_alert(&v)),
            [0x15, 3, 1, 0, 2, 2, 70]
        );
        let des = h("gnutls_3des");
        let v = crate::hello::classify_client_hello(&des);
        assert_eq!(
            alert_record(&des, block_alert(&v)),
            [0x15, 3, 3, 0, 2, 2, 71]
        );
        let mut v2 = tls10.clone();
        v2.format = HelloFormat::Sslv2;
        v2.client_version = 0x0002;
        assert_eq!(alert_record(&v2, 70)[1..3], [3, 1]);
    }

    #[test]
    fn observe_passes_everything() {
        let c = cfg("[[rules]]\nname = \"watch\"\n");
        let d = decide(
            &c,
            None,
            "10.0.0.1".parse().unwrap(),
            true,
            SystemTime::now(),
        );
        assert_eq!(d.action, Action::Observe);
        assert_eq!(d.would, None);
        assert_eq!(d.rule.map(|r| r.name.as_str()), Some("watch"));
    }
}
