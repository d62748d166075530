//! Typed configuration: the embedded default (`config/tlspeek.toml`), a user's file laid
//! over it key by key, and validation that reports every error with its key and reason.
//! Nothing starts on a config with an error.

mod raw;
mod validate;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use raw::RawConfig;

use crate::names::{HostName, HostPatterns};

/// The annotated default configuration, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("../../config/tlspeek.toml");

/// One problem in a configuration: the dotted key (`proxy.allowed_sources[2]`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Every problem found in one configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {errors}")]
    Invalid { path: PathBuf, errors: ConfigErrors },
}

/// Values given on the command line; each replaces one key of the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `proxy.listen`
    pub listen: Option<String>,
    /// `admin.listen`
    pub admin_listen: Option<String>,
    /// `events.path`
    pub event_log: Option<String>,
}

impl Overrides {
    fn apply(&self, t: &mut toml::Table) {
        let mut set = |table: &str, key: &str, v: &Option<String>| {
            if let Some(v) = v {
                let entry = t
                    .entry(table.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(tt) = entry {
                    tt.insert(key.to_string(), toml::Value::String(v.clone()));
                }
            }
        };
        set("proxy", "listen", &self.listen);
        set("admin", "listen", &self.admin_listen);
        set("events", "path", &self.event_log);
    }
}

/// What to do when the client sends no ClientHello within `hello_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnHelloTimeout {
    /// Keep splicing; the connection's kind is `none`.
    Pass,
    /// End the tunnel.
    Close,
}

/// `http://user:password@host:port` with the password replaced by `REDACTED`.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let redacted = if userinfo.contains(':') {
                format!("{user}:REDACTED")
            } else {
                user.to_string()
            };
            format!("{scheme}://{redacted}@{host}")
        }
        None => url.to_string(),
    }
}

/// A list of networks; IPv4-mapped IPv6 addresses are unmapped before every check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetList(pub Vec<IpNet>);

impl NetList {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The deny-list check of a destination: the address, and every IPv4 address an IPv6
    /// one carries in its last 32 bits by a standard mapping — IPv4-mapped (`::ffff:a.b.c.d`),
    /// IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some stacks) and the
    /// NAT64 well-known prefix (`64:ff9b::a.b.c.d`, translated to IPv4 by a NAT64 gateway).
    /// Denied when any form is listed.
    pub fn denies(&self, ip: IpAddr) -> bool {
        self.contains(ip) || embedded_ipv4(ip).is_some_and(|v4| self.contains(IpAddr::V4(v4)))
    }
}

/// The IPv4 address carried by an IPv4-compatible or NAT64 (64:ff9b::/96) IPv6 address.
/// (IPv4-mapped ones are unmapped by `to_canonical`.)
pub fn embedded_ipv4(ip: IpAddr) -> Option<std::net::Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6] == [0; 6];
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (compatible || nat64).then_some(low)
}

/// `[[sources]]`: names for address ranges, used as the `source` label. First match wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceNames(pub Vec<(IpNet, String)>);

impl SourceNames {
    pub fn name_for(&self, ip: IpAddr) -> Option<&str> {
        let ip = ip.to_canonical();
        self.0
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, name)| name.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub allowed_ports: BTreeSet<u16>,
    pub allowed_http_ports: BTreeSet<u16>,
    pub allowed_sources: NetList,
    pub deny_destinations: NetList,
    pub header_timeout: Duration,
    pub hello_timeout: Duration,
    pub on_hello_timeout: OnHelloTimeout,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub shutdown_grace: Duration,
    pub proxy_protocol_from: NetList,
    pub name_local_processes: bool,
    /// Pass-through bytes with `splice(2)` once a direction's peek is done and it has moved
    /// `net::splice::SPLICE_AFTER` bytes (Linux); false: always through a pooled user-space
    /// buffer. Applied on reload to the tunnels that start their pass-through after it.
    pub zero_copy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub allowed_sources: NetList,
    pub token_file: Option<PathBuf>,
}

/// Where event lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub watched_destinations: HostPatterns,
    pub track_all_destinations: bool,
    pub max_series_per_metric: usize,
    pub series_idle_expiry: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub reverse_lookup: bool,
    pub cache_ttl: Duration,
}

/// A rule's source selector: a network or a `[[sources]]` name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSelector {
    Net(IpNet),
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Observe,
    Block,
    Upgrade,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub destinations: HostPatterns,
    pub sources: Vec<SourceSelector>,
    pub exempt: Vec<SourceSelector>,
    pub action: Action,
    pub dry_run: bool,
    /// The rule stops applying after this instant (seconds since the Unix epoch).
    pub expires: Option<std::time::SystemTime>,
}

/// `[upstream] proxy`: a parent proxy every upstream connection goes through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentProxy {
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` value for the parent (from `http://user:pass@host:port`).
    pub authorization: Option<String>,
}

/// What to do with a legacy client an upgrade rule applies to but tlspeek cannot terminate
/// (it offers nothing the local OpenSSL speaks, e.g. 3DES only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnsupported {
    Block,
    Pass,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeConfig {
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub upstream_extra_ca: Option<PathBuf>,
    pub never_upgrade: HostPatterns,
    pub on_unsupported: OnUnsupported,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    pub credentials_file: Option<PathBuf>,
    pub exempt_sources: NetList,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryConfig {
    /// The SQLite file (one per instance); `None` with `url`, or when the inventory is off.
    pub path: Option<PathBuf>,
    /// A shared PostgreSQL database (`postgresql://…`), instead of `path`.
    pub url: Option<String>,
    /// The database password (else `PGPASSWORD`, else none).
    pub password_file: Option<PathBuf>,
    pub flush_interval: Duration,
    pub retention: Duration,
    /// Distinct rows held in memory while the database cannot be written; past it new
    /// rows are dropped and counted.
    pub max_pending: usize,
}

impl InventoryConfig {
    /// Where the inventory is written; `None` when it is off.
    pub fn location(&self) -> Option<crate::inventory::Location> {
        if let Some(url) = &self.url {
            // Checked when the configuration was read.
            let target = crate::inventory::pg::target::Target::parse(url).ok()?;
            return Some(crate::inventory::Location::Postgres {
                target: Box::new(target),
                password_file: self.password_file.clone(),
            });
        }
        self.path.clone().map(crate::inventory::Location::File)
    }
}

/// A retired or retiring endpoint: callers of it get `error` (from `date`) and should call
/// `replacement` instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deprecation {
    pub hosts: HostPatterns,
    /// Path prefixes; empty = the whole host.
    pub paths: Vec<String>,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub error: String,
    pub replacement: String,
    pub source: String,
}

impl Deprecation {
    /// Whether a call to `host` (and `path`, when known) is one of this entry's. An entry
    /// with paths matches only a known path under one of them.
    pub fn matches(&self, host: &HostName, path: Option<&str>) -> bool {
        self.hosts.matches(host)
            && (self.paths.is_empty()
                || path.is_some_and(|p| self.paths.iter().any(|pre| p.starts_with(pre.as_str()))))
    }
}

/// Ports whose sessions upgrade to TLS in-band, and the bounds of their cleartext prelude.
/// The default has no ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartTlsConfig {
    pub ports: std::collections::BTreeMap<u16, crate::starttls::Protocol>,
    pub prelude_timeout: Duration,
    pub prelude_max_bytes: usize,
}

impl StartTlsConfig {
    /// The protocol a port speaks, when it is a STARTTLS port.
    pub fn protocol(&self, port: u16) -> Option<crate::starttls::Protocol> {
        self.ports.get(&port).copied()
    }
}

/// The validated configuration a running tlspeek uses.
#[derive(Clone, Debug)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub events: EventsTarget,
    pub metrics: MetricsConfig,
    pub sources: SourceNames,
    pub dns: DnsConfig,
    pub rules: Vec<Rule>,
    pub enforcement_enabled: bool,
    pub upgrade: UpgradeConfig,
    pub inventory: InventoryConfig,
    pub auth: AuthConfig,
    pub transparent_listen: Option<SocketAddr>,
    pub transparent_tproxy: bool,
    pub upstream_proxy: Option<ParentProxy>,
    pub starttls: StartTlsConfig,
    /// Retired and retiring endpoints (`[[deprecations]]`); their hosts are watched.
    pub deprecations: Vec<Deprecation>,
    /// The written form, for `check-config` and logs.
    pub raw: RawConfig,
}

impl Config {
    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigErrors> {
        Config::from_toml_str("")
    }

    /// Lays `user` (TOML text) over the embedded default and validates the result.
    pub fn from_toml_str(user: &str) -> Result<Config, ConfigErrors> {
        let (raw, unknown_keys) = validate::merge_and_deserialize(DEFAULT_TOML, user)?;
        validate::validate(raw, unknown_keys)
    }

    /// Reads a config file (or none: the embedded default), lays the command-line
    /// `overrides` over it, and validates the result.
    pub fn load_with_overrides(
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, LoadError> {
        let (text, shown) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| LoadError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
                p.to_path_buf(),
            ),
            None => (String::new(), PathBuf::from("(embedded default)")),
        };
        let mut user: toml::Table = match text.parse() {
            Ok(t) => t,
            // Let the normal path report the syntax error with its line.
            Err(_) => {
                return Config::from_toml_str(&text).map_err(|errors| LoadError::Invalid {
                    path: shown,
                    errors,
                });
            }
        };
        overrides.apply(&mut user);
        let text = toml::to_string(&user).unwrap_or_default();
        Config::from_toml_str(&text).map_err(|errors| LoadError::Invalid {
            path: shown,
            errors,
        })
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text).map_err(|errors| LoadError::Invalid {
            path: path.to_path_buf(),
            errors,
        })
    }

    /// The effective configuration as TOML.
    /// The effective configuration as TOML, secrets redacted: a parent proxy's password
    /// becomes `REDACTED` (`check-config` runs as the unit's `ExecStartPre`, and its output
    /// lands in the journal).
    pub fn to_toml(&self) -> String {
        let mut raw = self.raw.clone();
        raw.upstream.proxy = redact_userinfo(&raw.upstream.proxy);
        toml::to_string(&raw).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// The deprecation a call to `host` (at `path`, when known) falls under.
    pub fn deprecation_of(&self, host: &HostName, path: Option<&str>) -> Option<&Deprecation> {
        self.deprecations.iter().find(|d| d.matches(host, path))
    }

    /// The entry with paths a request to `host` at `path` falls under (the entries without
    /// paths were judged at the ClientHello already).
    pub fn path_deprecation_of(&self, host: &HostName, path: &str) -> Option<&Deprecation> {
        self.deprecations
            .iter()
            .find(|d| !d.paths.is_empty() && d.matches(host, Some(path)))
    }

    /// Is `host` one of the watched destinations?
    pub fn is_watched(&self, host: &HostName) -> bool {
        self.metrics.watched_destinations.matches(host)
    }
}
