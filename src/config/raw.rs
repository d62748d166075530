//! The configuration as written: TOML → these structs, with strings where the typed
//! [`super::Config`] has addresses, durations and networks. Keeping the written form lets
//! validation report every bad value with its key, and lets `check-config` print the
//! effective configuration in the same words the user wrote.
//!
//! Every key is required here: a user's file is laid over the embedded default
//! (`config/tlspeek.toml`) before it reaches these structs, so the default file is the one
//! place where defaults live.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawConfig {
    pub proxy: RawProxy,
    pub admin: RawAdmin,
    pub events: RawEvents,
    pub metrics: RawMetrics,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    pub dns: RawDns,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub enforcement: RawEnforcement,
    pub upgrade: RawUpgrade,
    pub inventory: RawInventory,
    pub transparent: RawTransparent,
    pub auth: RawAuth,
    pub upstream: RawUpstream,
    pub starttls: RawStartTls,
    /// Retired and retiring endpoints. A user's entries are added to the shipped ones.
    #[serde(default)]
    pub deprecations: Vec<RawDeprecation>,
}

/// One retired or retiring endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawDeprecation {
    pub hosts: Vec<String>,
    /// Path prefixes (seen in upgrade mode and on plain HTTP); none = the whole host.
    #[serde(default)]
    pub paths: Vec<String>,
    pub date: String,
    pub error: String,
    pub replacement: String,
    #[serde(default)]
    pub source: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawProxy {
    pub listen: String,
    pub allowed_ports: Vec<i64>,
    pub allowed_http_ports: Vec<i64>,
    pub allowed_sources: Vec<String>,
    pub deny_destinations: Vec<String>,
    pub header_timeout: String,
    pub hello_timeout: String,
    pub on_hello_timeout: String,
    pub connect_timeout: String,
    pub idle_timeout: String,
    pub max_connections: i64,
    pub max_connections_per_source: i64,
    pub shutdown_grace: String,
    /// Load balancers whose connections start with a PROXY protocol v2 header.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    /// Name the process of callers on this host (sock_diag and /proc).
    pub name_local_processes: bool,
    /// Pass-through bytes with `splice(2)` (Linux) instead of a user-space copy.
    pub zero_copy: bool,
}

/// Which ports speak which STARTTLS protocol, and the prelude's bounds.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawStartTls {
    pub smtp: Vec<i64>,
    pub imap: Vec<i64>,
    pub pop3: Vec<i64>,
    pub ldap: Vec<i64>,
    pub xmpp: Vec<i64>,
    pub prelude_timeout: String,
    pub prelude_max_bytes: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawAdmin {
    pub listen: String,
    pub allowed_sources: Vec<String>,
    pub token_file: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawEvents {
    pub path: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawMetrics {
    pub watched_destinations: Vec<String>,
    pub track_all_destinations: bool,
    pub max_series_per_metric: i64,
    pub series_idle_expiry: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawSource {
    pub cidr: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawDns {
    pub reverse_lookup: bool,
    pub cache_ttl: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawRule {
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub exempt: Vec<String>,
    #[serde(default = "observe")]
    pub action: String,
    #[serde(default)]
    pub dry_run: bool,
    /// Optional last day the rule applies (RFC 3339 date or date-time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Optional name used in event lines and logs; defaults to "rules[N]".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn observe() -> String {
    "observe".to_string()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawEnforcement {
    pub enabled: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawUpgrade {
    pub ca_cert: String,
    pub ca_key: String,
    pub upstream_extra_ca: String,
    pub never_upgrade: Vec<String>,
    pub on_unsupported: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawInventory {
    pub path: String,
    pub url: String,
    pub password_file: String,
    pub flush_interval: String,
    pub retention: String,
    pub max_pending: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawTransparent {
    pub listen: String,
    /// TPROXY instead of REDIRECT: the original destination is the accepted socket's own
    /// address (needs CAP_NET_ADMIN for IP_TRANSPARENT).
    #[serde(default)]
    pub tproxy: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawAuth {
    pub credentials_file: String,
    pub exempt_sources: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RawUpstream {
    pub proxy: String,
}
