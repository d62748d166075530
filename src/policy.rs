//! Rules → action. The first rule that matches the connection's name and source decides;
//! a rule without destinations and sources matches everything; a source on a rule's
//! `exempt` list is not subject to that rule (the next rules are tried); an expired rule is
//! skipped. Only validated host names reach a rule: peer strings never pick one otherwise.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::config::{Action, Config, Rule, SourceSelector};
use crate::names::HostName;

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
