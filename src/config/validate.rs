//! From TOML text to a validated [`Config`]: merge over the default, deserialize while
//! collecting every unknown key, then check every value, collecting every error with its key.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use super::raw::{
    RawAdmin, RawConfig, RawDeprecation, RawMetrics, RawProxy, RawRule, RawSource, RawStartTls,
    RawUpgrade,
};
use super::{
    Action, AdminConfig, AuthConfig, Config, ConfigError, ConfigErrors, Deprecation, DnsConfig,
    EventsTarget, InventoryConfig, MetricsConfig, NetList, OnHelloTimeout, OnUnsupported,
    ProxyConfig, Rule, SourceNames, SourceSelector, StartTlsConfig, UpgradeConfig,
};
use crate::names::{HostPattern, HostPatterns};

/// Parses both documents, lays `user` over `default` (tables merge key by key, any other
/// value — lists included — replaces), and deserializes. Syntax errors, unknown keys and
/// type errors are all reported, each with its key.
/// On success also returns the unknown keys, so validation can add its errors to them.
pub(super) fn merge_and_deserialize(
    default: &str,
    user: &str,
) -> Result<(RawConfig, Vec<ConfigError>), ConfigErrors> {
    let mut base: toml::Table = default.parse().map_err(|e: toml::de::Error| {
        one(
            "(embedded default)",
            format!("syntax error: {}", e.message()),
        )
    })?;
    let over: toml::Table = user.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| {
                let line = user.get(..s.start).map_or(0, |p| p.matches('\n').count()) + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        one("(syntax)", format!("{}{at}", e.message().trim()))
    })?;
    inventory_url_or_path(&mut base, &over)?;
    merge(&mut base, over);

    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| {
        unknown.push(ConfigError {
            key: path.to_string(),
            reason: "unknown key".to_string(),
        })
    };
    let de = serde_ignored::Deserializer::new(toml::Value::Table(base), &mut note_unknown);
    let result: Result<RawConfig, _> = serde_path_to_error::deserialize(de);
    let mut errors = unknown;
    match result {
        Ok(raw) => Ok((raw, errors)),
        Err(e) => {
            let key = e.path().to_string();
            errors.push(ConfigError {
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                reason: e.into_inner().message().trim().to_string(),
            });
            Err(ConfigErrors(errors))
        }
    }
}

/// `[inventory] url` and `path` written in the same file are an error; `url` alone replaces
/// the embedded default's `path`.
fn inventory_url_or_path(base: &mut toml::Table, over: &toml::Table) -> Result<(), ConfigErrors> {
    let Some(toml::Value::Table(inv)) = over.get("inventory") else {
        return Ok(());
    };
    let written = |k: &str| inv.get(k).is_some_and(|v| v.as_str() != Some(""));
    if written("url") && written("path") {
        return Err(one(
            "inventory",
            "url and path are both set: the inventory is either a shared database (url) or a file (path)".into(),
        ));
    }
    if written("url") {
        if let Some(toml::Value::Table(b)) = base.get_mut("inventory") {
            b.insert("path".into(), toml::Value::String(String::new()));
        }
    }
    Ok(())
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            // A user's retired endpoints are added to the shipped ones, not put in their place.
            (Some(toml::Value::Array(b)), toml::Value::Array(o)) if k == "deprecations" => {
                b.extend(o)
            }
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn one(key: &str, reason: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: key.to_string(),
        reason,
    }])
}

/// Collects errors while values are converted.
#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn err(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn duration(&mut self, key: &str, v: &str, allow_zero: bool) -> Duration {
        match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.err(key, format!("{v:?}: must be longer than zero"));
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    key,
                    format!("{v:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"5m\", \"1h\", \"90d\""),
                );
                Duration::from_secs(1)
            }
        }
    }

    fn listen(&mut self, key: &str, v: &str) -> SocketAddr {
        match SocketAddr::from_str(v) {
            Ok(a) if a.port() == 0 => {
                self.err(key, format!("{v:?}: port 0 is not allowed"));
                a
            }
            Ok(a) => a,
            Err(_) => {
                self.err(
                    key,
                    format!(
                        "{v:?} is not an address:port (e.g. \"127.0.0.1:3128\", \"[::]:3128\")"
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 1))
            }
        }
    }

    fn ports(&mut self, key: &str, v: &[i64]) -> BTreeSet<u16> {
        let mut out = BTreeSet::new();
        for (i, p) in v.iter().enumerate() {
            match u16::try_from(*p) {
                Ok(0) => self.err(format!("{key}[{i}]"), "port 0 is not allowed"),
                Ok(p) => {
                    out.insert(p);
                }
                Err(_) => self.err(
                    format!("{key}[{i}]"),
                    format!("{p} is not a port (1-65535)"),
                ),
            }
        }
        out
    }

    fn nets(&mut self, key: &str, v: &[String]) -> NetList {
        NetList(
            v.iter()
                .enumerate()
                .filter_map(|(i, s)| self.net(&format!("{key}[{i}]"), s))
                .collect(),
        )
    }

    fn net(&mut self, key: &str, s: &str) -> Option<IpNet> {
        parse_net(s).or_else(|| {
            self.err(
                key,
                format!("{s:?} is not a CIDR (e.g. \"10.0.0.0/8\", \"fc00::/7\") or an IP address"),
            );
            None
        })
    }

    fn count(&mut self, key: &str, v: i64, min: i64) -> usize {
        if v < min {
            self.err(key, format!("{v}: must be at least {min}"));
            return min.max(0) as usize;
        }
        usize::try_from(v).unwrap_or(usize::MAX)
    }

    fn patterns(&mut self, key: &str, v: &[String]) -> HostPatterns {
        HostPatterns(
            v.iter()
                .enumerate()
                .filter_map(|(i, s)| match HostPattern::parse(s) {
                    Ok(p) => Some(p),
                    Err(reason) => {
                        self.err(format!("{key}[{i}]"), reason);
                        None
                    }
                })
                .collect(),
        )
    }

    fn optional_path(&mut self, v: &str) -> Option<PathBuf> {
        (!v.is_empty()).then(|| PathBuf::from(v))
    }
}

/// `http://[user:password@]host:port` of a parent proxy.
fn parse_parent(v: &str) -> Result<super::ParentProxy, String> {
    use base64::Engine;
    let rest = v
        .strip_prefix("http://")
        .ok_or_else(|| format!("{v:?}: write the parent proxy as \"http://host:port\""))?;
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("{v:?}: the parent proxy needs a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if IpAddr::from_str(host).is_err() && crate::names::HostName::parse(host).is_none() {
        return Err(format!("{v:?}: {host:?} is not a host name or IP address"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{v:?}: bad port"))?;
    let authorization = userinfo.map(|u| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(u.as_bytes())
        )
    });
    Ok(super::ParentProxy {
        host: host.to_string(),
        port,
        authorization,
    })
}

/// An IP network in CIDR form, or a single address (host route). Host bits are cleared.
pub(crate) fn parse_net(s: &str) -> Option<IpNet> {
    if let Ok(n) = IpNet::from_str(s) {
        return Some(n.trunc());
    }
    IpAddr::from_str(s).ok().map(IpNet::from)
}

fn valid_source_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{name:?}: a source name has 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{name:?}: a source name uses only letters, digits, '-', '_' and '.'"
        ));
    }
    if name == "other" {
        return Err("\"other\" is reserved for folded sources".to_string());
    }
    if IpAddr::from_str(name).is_ok() {
        return Err(format!(
            "{name:?}: a source name must not look like an IP address"
        ));
    }
    Ok(())
}

/// Checks every value; `earlier` are errors found before (unknown keys), reported first.
/// Sections are checked in file order, so errors are reported in that order.
pub(super) fn validate(raw: RawConfig, earlier: Vec<ConfigError>) -> Result<Config, ConfigErrors> {
    let mut c = Checker { errors: earlier };
    let proxy = proxy_section(&mut c, &raw.proxy);
    let admin = admin_section(&mut c, &raw.admin, &proxy);
    let events = events_target(&mut c, &raw.events.path);
    let mut metrics = metrics_section(&mut c, &raw.metrics);
    let (sources, names) = source_names(&mut c, &raw.sources);
    let dns = DnsConfig {
        reverse_lookup: raw.dns.reverse_lookup,
        cache_ttl: c.duration("dns.cache_ttl", &raw.dns.cache_ttl, false),
    };
    let rules: Vec<Rule> = raw
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(&mut c, i, r, &names))
        .collect();
    let url = match raw.inventory.url.as_str() {
        "" => None,
        u => match crate::inventory::pg::target::Target::parse(u) {
            Ok(_) => Some(u.to_string()),
            Err(reason) => {
                c.err("inventory.url", reason);
                None
            }
        },
    };
    let password_file = c.optional_path(&raw.inventory.password_file);
    if password_file.is_some() && raw.inventory.url.is_empty() {
        c.err(
            "inventory.password_file",
            "is for inventory.url (a SQLite file needs no password)",
        );
    }
    let inventory = InventoryConfig {
        // `url` replaces the default file (`merge_and_deserialize` refuses both written).
        path: if raw.inventory.url.is_empty() {
            c.optional_path(&raw.inventory.path)
        } else {
            None
        },
        url,
        password_file,
        max_pending: c.count("inventory.max_pending", raw.inventory.max_pending, 1),
        flush_interval: c.duration(
            "inventory.flush_interval",
            &raw.inventory.flush_interval,
            false,
        ),
        retention: c.duration("inventory.retention", &raw.inventory.retention, false),
    };
    let upgrade = upgrade_section(&mut c, &raw.upgrade, &rules);
    let transparent_listen = match raw.transparent.listen.as_str() {
        "" => None,
        v => Some(c.listen("transparent.listen", v)),
    };
    let auth = AuthConfig {
        credentials_file: c.optional_path(&raw.auth.credentials_file),
        exempt_sources: c.nets("auth.exempt_sources", &raw.auth.exempt_sources),
    };
    let upstream_proxy = match raw.upstream.proxy.as_str() {
        "" => None,
        v => parse_parent(v)
            .map_err(|why| c.err("upstream.proxy", why))
            .ok(),
    };
    let starttls = starttls_section(&mut c, &raw.starttls);
    let deprecations = deprecations_section(&mut c, &raw.deprecations);
    // The hosts of retired endpoints are watched implicitly: every caller gets a row.
    for d in &deprecations {
        for p in &d.hosts.0 {
            if !metrics.watched_destinations.0.contains(p) {
                metrics.watched_destinations.0.push(p.clone());
            }
        }
    }
    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        proxy,
        admin,
        events,
        metrics,
        sources,
        dns,
        rules,
        enforcement_enabled: raw.enforcement.enabled,
        upgrade,
        inventory,
        auth,
        transparent_listen,
        transparent_tproxy: raw.transparent.tproxy,
        upstream_proxy,
        starttls,
        deprecations,
        raw,
    })
}

fn deprecations_section(c: &mut Checker, raw: &[RawDeprecation]) -> Vec<Deprecation> {
    raw.iter()
        .enumerate()
        .map(|(i, d)| {
            let key = |k: &str| format!("deprecations[{i}].{k}");
            if d.hosts.is_empty() {
                c.err(key("hosts"), "at least one host pattern is needed");
            }
            for (j, p) in d.paths.iter().enumerate() {
                if !p.starts_with('/') {
                    c.err(
                        format!("{}[{j}]", key("paths")),
                        format!("{p:?}: a path starts with /"),
                    );
                }
            }
            let date_ok = d.date.len() == 10
                && d.date.bytes().enumerate().all(|(k, b)| match k {
                    4 | 7 => b == b'-',
                    _ => b.is_ascii_digit(),
                });
            if !date_ok {
                c.err(
                    key("date"),
                    format!("{:?}: write the date as YYYY-MM-DD", d.date),
                );
            }
            for (k, v) in [("error", &d.error), ("replacement", &d.replacement)] {
                if v.trim().is_empty() {
                    c.err(key(k), "must not be empty");
                }
            }
            Deprecation {
                hosts: c.patterns(&key("hosts"), &d.hosts),
                paths: d.paths.clone(),
                date: d.date.clone(),
                error: d.error.clone(),
                replacement: d.replacement.clone(),
                source: d.source.clone(),
            }
        })
        .collect()
}

fn starttls_section(c: &mut Checker, t: &RawStartTls) -> StartTlsConfig {
    use crate::starttls::Protocol;
    let mut ports = std::collections::BTreeMap::new();
    for (protocol, list) in [
        (Protocol::Smtp, &t.smtp),
        (Protocol::Imap, &t.imap),
        (Protocol::Pop3, &t.pop3),
        (Protocol::Ldap, &t.ldap),
        (Protocol::Xmpp, &t.xmpp),
    ] {
        let key = format!("starttls.{protocol}");
        for port in c.ports(&key, list) {
            if let Some(other) = ports.insert(port, protocol) {
                if other != protocol {
                    c.err(
                        key.clone(),
                        format!("port {port} is also listed under starttls.{other}"),
                    );
                }
            }
        }
    }
    let prelude_max_bytes = match usize::try_from(t.prelude_max_bytes) {
        Ok(n @ 1..=1_048_576) => n,
        _ => {
            c.err(
                "starttls.prelude_max_bytes",
                format!("{}: must be 1 to 1048576", t.prelude_max_bytes),
            );
            16_384
        }
    };
    StartTlsConfig {
        ports,
        prelude_timeout: c.duration("starttls.prelude_timeout", &t.prelude_timeout, false),
        prelude_max_bytes,
    }
}

fn proxy_section(c: &mut Checker, p: &RawProxy) -> ProxyConfig {
    let proxy = ProxyConfig {
        listen: c.listen("proxy.listen", &p.listen),
        allowed_ports: c.ports("proxy.allowed_ports", &p.allowed_ports),
        allowed_http_ports: c.ports("proxy.allowed_http_ports", &p.allowed_http_ports),
        allowed_sources: c.nets("proxy.allowed_sources", &p.allowed_sources),
        deny_destinations: c.nets("proxy.deny_destinations", &p.deny_destinations),
        header_timeout: c.duration("proxy.header_timeout", &p.header_timeout, false),
        hello_timeout: c.duration("proxy.hello_timeout", &p.hello_timeout, false),
        on_hello_timeout: match p.on_hello_timeout.as_str() {
            "pass" => OnHelloTimeout::Pass,
            "close" => OnHelloTimeout::Close,
            other => {
                c.err(
                    "proxy.on_hello_timeout",
                    format!("{other:?}: must be \"pass\" or \"close\""),
                );
                OnHelloTimeout::Pass
            }
        },
        connect_timeout: c.duration("proxy.connect_timeout", &p.connect_timeout, false),
        idle_timeout: c.duration("proxy.idle_timeout", &p.idle_timeout, false),
        max_connections: c.count("proxy.max_connections", p.max_connections, 1),
        max_connections_per_source: c.count(
            "proxy.max_connections_per_source",
            p.max_connections_per_source,
            1,
        ),
        shutdown_grace: c.duration("proxy.shutdown_grace", &p.shutdown_grace, true),
        proxy_protocol_from: c.nets("proxy.proxy_protocol_from", &p.proxy_protocol_from),
        name_local_processes: p.name_local_processes,
        zero_copy: p.zero_copy,
    };
    if proxy.allowed_ports.is_empty() {
        c.err("proxy.allowed_ports", "must name at least one port");
    }
    proxy
}

fn admin_section(c: &mut Checker, a: &RawAdmin, proxy: &ProxyConfig) -> AdminConfig {
    let admin = AdminConfig {
        listen: c.listen("admin.listen", &a.listen),
        allowed_sources: c.nets("admin.allowed_sources", &a.allowed_sources),
        token_file: c.optional_path(&a.token_file),
    };
    if admin.listen == proxy.listen {
        c.err("admin.listen", "must differ from proxy.listen");
    }
    admin
}

fn events_target(c: &mut Checker, path: &str) -> EventsTarget {
    match path {
        "" => {
            c.err("events.path", "must be \"-\" (stdout) or a file path");
            EventsTarget::Stdout
        }
        "-" => EventsTarget::Stdout,
        path => EventsTarget::File(PathBuf::from(path)),
    }
}

fn metrics_section(c: &mut Checker, m: &RawMetrics) -> MetricsConfig {
    MetricsConfig {
        watched_destinations: c.patterns("metrics.watched_destinations", &m.watched_destinations),
        track_all_destinations: m.track_all_destinations,
        max_series_per_metric: c.count("metrics.max_series_per_metric", m.max_series_per_metric, 4),
        series_idle_expiry: c.duration("metrics.series_idle_expiry", &m.series_idle_expiry, false),
    }
}

/// `[[sources]]`: each CIDR with its name; the names, for the rules' selectors.
fn source_names(c: &mut Checker, raw: &[RawSource]) -> (SourceNames, HashSet<String>) {
    let mut names = HashSet::new();
    let mut sources = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let net = c.net(&format!("sources[{i}].cidr"), &s.cidr);
        if let Err(reason) = valid_source_name(&s.name) {
            c.err(format!("sources[{i}].name"), reason);
        } else if !names.insert(s.name.clone()) {
            c.err(
                format!("sources[{i}].name"),
                format!("duplicate source name {:?}", s.name),
            );
        }
        if let Some(net) = net {
            sources.push((net, s.name.clone()));
        }
    }
    (SourceNames(sources), names)
}

/// `[upgrade]`: the CA pair (together, readable, the key private), and rules that need it.
fn upgrade_section(c: &mut Checker, u: &RawUpgrade, rules: &[Rule]) -> UpgradeConfig {
    let upgrade = UpgradeConfig {
        ca_cert: c.optional_path(&u.ca_cert),
        ca_key: c.optional_path(&u.ca_key),
        upstream_extra_ca: c.optional_path(&u.upstream_extra_ca),
        never_upgrade: c.patterns("upgrade.never_upgrade", &u.never_upgrade),
        on_unsupported: match u.on_unsupported.as_str() {
            "block" => OnUnsupported::Block,
            "pass" => OnUnsupported::Pass,
            other => {
                c.err(
                    "upgrade.on_unsupported",
                    format!("{other:?}: must be \"block\" or \"pass\""),
                );
                OnUnsupported::Block
            }
        },
    };
    if upgrade.ca_cert.is_some() != upgrade.ca_key.is_some() {
        c.err(
            "upgrade.ca_key",
            "upgrade.ca_cert and upgrade.ca_key go together",
        );
    }
    if let Some(key) = &upgrade.ca_key {
        if let Err(e) = crate::secrets::check_private_key_file(key) {
            c.err("upgrade.ca_key", e.to_string());
        }
    }
    for (key, path) in [
        ("upgrade.ca_cert", &upgrade.ca_cert),
        ("upgrade.upstream_extra_ca", &upgrade.upstream_extra_ca),
    ] {
        if let Some(p) = path {
            if !p.is_file() {
                c.err(key, format!("{} is not a readable file", p.display()));
            }
        }
    }
    if upgrade.ca_cert.is_none() {
        for (i, r) in rules.iter().enumerate() {
            if r.action == Action::Upgrade && !r.dry_run {
                c.err(
                    format!("rules[{i}].action"),
                    "\"upgrade\" needs upgrade.ca_cert and upgrade.ca_key (make them with `tlspeek ca init`)",
                );
            }
        }
    }
    upgrade
}

fn selectors(
    c: &mut Checker,
    key: &str,
    v: &[String],
    names: &HashSet<String>,
) -> Vec<SourceSelector> {
    v.iter()
        .enumerate()
        .filter_map(|(j, s)| {
            if let Some(net) = parse_net(s) {
                Some(SourceSelector::Net(net))
            } else if names.contains(s) {
                Some(SourceSelector::Name(s.clone()))
            } else {
                c.err(
                    format!("{key}[{j}]"),
                    format!("{s:?} is neither a CIDR nor a [[sources]] name"),
                );
                None
            }
        })
        .collect()
}

fn rule(c: &mut Checker, i: usize, r: &RawRule, names: &HashSet<String>) -> Rule {
    let key = format!("rules[{i}]");
    let action = match r.action.as_str() {
        "observe" => Action::Observe,
        "block" => Action::Block,
        "upgrade" => Action::Upgrade,
        other => {
            c.err(
                format!("{key}.action"),
                format!("{other:?}: must be \"observe\", \"block\" or \"upgrade\""),
            );
            Action::Observe
        }
    };
    let expires = r.expires.as_deref().and_then(|s| match parse_expiry(s) {
        Some(t) => Some(t),
        None => {
            c.err(
                format!("{key}.expires"),
                format!("{s:?} is not a date (\"2027-01-31\") or an RFC 3339 time"),
            );
            None
        }
    });
    Rule {
        name: r.name.clone().unwrap_or_else(|| key.clone()),
        destinations: c.patterns(&format!("{key}.destinations"), &r.destinations),
        sources: selectors(c, &format!("{key}.sources"), &r.sources, names),
        exempt: selectors(c, &format!("{key}.exempt"), &r.exempt, names),
        action,
        dry_run: r.dry_run,
        expires,
    }
}

/// A date means the end of that day (UTC): the rule applies through the whole day.
fn parse_expiry(s: &str) -> Option<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Some(t);
    }
    let t = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")).ok()?;
    Some(t + Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests;
