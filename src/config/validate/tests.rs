use super::super::*;

fn errors(toml: &str) -> Vec<ConfigError> {
    match Config::from_toml_str(toml) {
        Ok(_) => panic!("config was accepted: {toml}"),
        Err(e) => e.0,
    }
}

fn has(errs: &[ConfigError], key: &str, reason_part: &str) -> bool {
    errs.iter()
        .any(|e| e.key == key && e.reason.contains(reason_part))
}

#[test]
fn embedded_default_is_valid_and_safe() {
    let c = Config::embedded_default().unwrap();
    assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:3128");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9748");
    assert_eq!(
        c.proxy.allowed_ports.iter().copied().collect::<Vec<_>>(),
        vec![443]
    );
    assert!(
        c.proxy
            .deny_destinations
            .contains("127.0.0.1".parse().unwrap())
    );
    assert!(
        c.proxy
            .deny_destinations
            .contains("::ffff:127.0.0.1".parse().unwrap())
    );
    assert!(
        c.proxy
            .deny_destinations
            .contains("169.254.169.254".parse().unwrap())
    );
    assert!(
        !c.proxy
            .deny_destinations
            .contains("20.190.128.1".parse().unwrap())
    );
    let d = &c.proxy.deny_destinations;
    for a in [
        "100.100.100.200",
        "192.0.0.192",
        "::127.0.0.1",
        "::169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::127.0.0.1",
        "::ffff:100.100.100.200",
    ] {
        assert!(d.denies(a.parse().unwrap()), "{a} is denied");
    }
    for a in ["20.190.128.1", "64:ff9b::14be:8001", "2603:1006::1"] {
        assert!(!d.denies(a.parse().unwrap()), "{a} is not denied");
    }
    assert!(!c.proxy.allowed_sources.contains("8.8.8.8".parse().unwrap()));
    assert_eq!(c.proxy.hello_timeout, Duration::from_secs(5));
    // 20 written, and login-us.microsoftonline.com from [[deprecations]].
    assert_eq!(c.metrics.watched_destinations.0.len(), 21);
    assert!(c.rules.is_empty());
    assert_eq!(c.events, EventsTarget::Stdout);
}

#[test]
fn user_file_overrides_only_its_keys() {
    let c = Config::from_toml_str(
        "[proxy]\nlisten = \"127.0.0.1:4000\"\nallowed_ports = [443, 8443]\n",
    )
    .unwrap();
    assert_eq!(c.proxy.listen.port(), 4000);
    assert_eq!(c.proxy.allowed_ports.len(), 2);
    assert_eq!(c.proxy.header_timeout, Duration::from_secs(10));
    assert_eq!(c.admin.listen.port(), 9748);
}

#[test]
fn every_error_is_reported_with_its_key() {
    let errs = errors(
        r#"
[proxy]
listen = "127.0.0.1:0"
allowed_ports = [443, 0, 70000]
allowed_sources = ["10.0.0.300/8", "10.0.0.0/8"]
header_timeout = "ten seconds"
bogus = 1
[metrics]
also_bogus = true
[[sources]]
cidr = "10.1.0.0/16"
name = "lab"
[[sources]]
cidr = "10.2.0.0/16"
name = "lab"
"#,
    );
    assert!(has(&errs, "proxy.bogus", "unknown key"), "{errs:?}");
    assert!(has(&errs, "metrics.also_bogus", "unknown key"), "{errs:?}");
    assert!(has(&errs, "proxy.listen", "port 0"), "{errs:?}");
    assert!(
        has(&errs, "sources[1].name", "duplicate source name"),
        "{errs:?}"
    );
    assert_eq!(errs.len(), 8, "{errs:?}");
    let errs = errors(
        r#"
[proxy]
listen = "127.0.0.1:0"
allowed_ports = [443, 0, 70000]
allowed_sources = ["10.0.0.300/8", "10.0.0.0/8"]
header_timeout = "ten seconds"
[[sources]]
cidr = "10.1.0.0/16"
name = "lab"
[[sources]]
cidr = "10.2.0.0/33"
name = "lab"
"#,
    );
    assert!(has(&errs, "proxy.listen", "port 0"), "{errs:?}");
    assert!(has(&errs, "proxy.allowed_ports[1]", "port 0"), "{errs:?}");
    assert!(
        has(&errs, "proxy.allowed_ports[2]", "not a port"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "proxy.allowed_sources[0]", "not a CIDR"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "proxy.header_timeout", "not a duration"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "sources[1].name", "duplicate source name"),
        "{errs:?}"
    );
    assert!(has(&errs, "sources[1].cidr", "not a CIDR"), "{errs:?}");
    assert_eq!(errs.len(), 7, "{errs:?}");
}

#[test]
fn type_errors_name_the_key() {
    let errs = errors("[proxy]\nmax_connections = \"many\"\n");
    assert!(
        errs.iter().any(|e| e.key == "proxy.max_connections"),
        "{errs:?}"
    );
    let errs = errors("[proxy]\nlisten = \n");
    assert!(
        errs.iter()
            .any(|e| e.key == "(syntax)" && e.reason.contains("line 2")),
        "{errs:?}"
    );
}

#[test]
fn bad_values_are_refused() {
    assert!(has(
        &errors("[proxy]\non_hello_timeout = \"maybe\"\n"),
        "proxy.on_hello_timeout",
        "pass"
    ));
    assert!(has(
        &errors("[proxy]\nmax_connections = 0\n"),
        "proxy.max_connections",
        "at least 1"
    ));
    assert!(has(
        &errors("[events]\npath = \"\"\n"),
        "events.path",
        "stdout"
    ));
    assert!(has(
        &errors("[metrics]\nwatched_destinations = [\"a.*.com\"]\n"),
        "metrics.watched_destinations[0]",
        "host pattern"
    ));
    assert!(has(
        &errors("[[sources]]\ncidr = \"10.0.0.0/8\"\nname = \"other\"\n"),
        "sources[0].name",
        "reserved"
    ));
    assert!(has(
        &errors("[[rules]]\nsources = [\"nobody\"]\n"),
        "rules[0].sources[0]",
        "neither a CIDR"
    ));
    assert!(has(
        &errors("[admin]\nlisten = \"127.0.0.1:3128\"\n"),
        "admin.listen",
        "differ"
    ));
}

#[test]
fn rules_and_sources_parse() {
    let c = Config::from_toml_str(
        r#"
[[sources]]
cidr = "10.1.2.0/24"
name = "build-agents"
[[rules]]
destinations = ["LOGIN.microsoftonline.com"]
sources = ["10.9.0.0/16", "build-agents"]
expires = "2030-01-31"
"#,
    )
    .unwrap();
    assert_eq!(
        c.sources.name_for("10.1.2.7".parse().unwrap()),
        Some("build-agents")
    );
    assert_eq!(
        c.sources.name_for("::ffff:10.1.2.7".parse().unwrap()),
        Some("build-agents")
    );
    assert_eq!(c.sources.name_for("10.1.3.7".parse().unwrap()), None);
    let r = &c.rules[0];
    assert_eq!(r.name, "rules[0]");
    assert_eq!(r.action, Action::Observe);
    assert_eq!(r.sources.len(), 2);
    assert!(r.expires.is_some());
}

#[test]
fn effective_config_round_trips() {
    let c = Config::from_toml_str("[proxy]\nlisten = \"127.0.0.1:4000\"\n").unwrap();
    let again = Config::from_toml_str(&c.to_toml()).unwrap();
    assert_eq!(again.proxy, c.proxy);
    assert_eq!(again.metrics, c.metrics);
}

#[test]
fn starttls_keys_default_on_their_own_and_a_port_belongs_to_one_protocol() {
    use crate::starttls::Protocol;
    let c = Config::embedded_default().unwrap();
    assert_eq!(c.starttls.protocol(587), Some(Protocol::Smtp));
    assert_eq!(c.starttls.protocol(389), Some(Protocol::Ldap));
    assert_eq!(c.starttls.protocol(443), None);
    assert_eq!(c.starttls.prelude_timeout, Duration::from_secs(30));
    assert_eq!(c.starttls.prelude_max_bytes, 16_384);
    let c = Config::from_toml_str("[starttls]\nsmtp = [2525]\nldap = []\n").unwrap();
    assert_eq!(c.starttls.protocol(2525), Some(Protocol::Smtp));
    assert_eq!(c.starttls.protocol(587), None, "smtp's list was replaced");
    assert_eq!(c.starttls.protocol(389), None, "[] turns ldap off");
    assert_eq!(
        c.starttls.protocol(143),
        Some(Protocol::Imap),
        "imap kept its default"
    );
    let errs =
        errors("[starttls]\nimap = [110]\nprelude_max_bytes = 0\nprelude_timeout = \"soon\"\n");
    assert!(
        has(&errs, "starttls.pop3", "also listed under starttls.imap"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "starttls.prelude_max_bytes", "1 to 1048576"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "starttls.prelude_timeout", "not a duration"),
        "{errs:?}"
    );
}

#[test]
fn deprecations_are_shipped_watched_and_added_to_by_users() {
    use crate::names::HostName;
    let host = |h: &str| HostName::parse(h).unwrap();
    let c = Config::embedded_default().unwrap();
    assert_eq!(c.deprecations.len(), 2);
    let us = c
        .deprecation_of(&host("login-us.microsoftonline.com"), None)
        .unwrap();
    assert_eq!(us.replacement, "login.microsoftonline.us");
    assert!(us.error.starts_with("AADSTS900439"));
    assert!(us.source.contains("reference-breaking-changes"));
    assert!(c.is_watched(&host("login-us.microsoftonline.com")));
    assert!(
        c.deprecation_of(&host("login.microsoftonline.com"), None)
            .is_none()
    );

    let c = Config::from_toml_str(
        "[[deprecations]]\nhosts = [\"sts.contoso.com\"]\npaths = [\"/adfs/services/trust/2005/\"]\n\
         date = \"2026-01-31\"\nerror = \"WS-Trust 2005 is off\"\nreplacement = \"/adfs/oauth2/\"\n",
    )
    .unwrap();
    assert_eq!(c.deprecations.len(), 3, "added to the shipped entries");
    let sts = host("sts.contoso.com");
    assert!(c.is_watched(&sts));
    assert!(
        c.deprecation_of(&sts, None).is_none(),
        "a path entry needs the path"
    );
    assert!(c.deprecation_of(&sts, Some("/adfs/ls/")).is_none());
    assert_eq!(
        c.deprecation_of(&sts, Some("/adfs/services/trust/2005/usernamemixed"))
            .map(|d| d.error.as_str()),
        Some("WS-Trust 2005 is off")
    );

    let errs = errors(
        "[[deprecations]]\nhosts = []\npaths = [\"adfs\"]\ndate = \"31.01.2026\"\nerror = \"\"\nreplacement = \"x\"\n",
    );
    assert!(
        has(&errs, "deprecations[2].hosts", "at least one host"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "deprecations[2].paths[0]", "starts with /"),
        "{errs:?}"
    );
    assert!(has(&errs, "deprecations[2].date", "YYYY-MM-DD"), "{errs:?}");
    assert!(
        has(&errs, "deprecations[2].error", "must not be empty"),
        "{errs:?}"
    );
}
