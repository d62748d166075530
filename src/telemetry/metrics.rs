//! Every Prometheus metric tlspeek exports, in one struct built once and shared. Names and
//! labels are a contract that dashboards and alerts read; the README's "Metrics" documents
//! each one.

use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::guard::{GuardedCounter, GuardedGauge, Labels};
use super::record::{Kind, Mode, Outcome};

/// Upstream connect latency buckets, from 0.5 ms (loopback and same-site) to 10 s.
const CONNECT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    pub client_hellos: GuardedCounter,
    pub handshakes: GuardedCounter,
    pub legacy_connections: GuardedCounter,
    pub deprecated_endpoint_connections: GuardedCounter,
    pub server_rejections: GuardedCounter,
    pub actions: GuardedCounter,
    pub last_legacy: GuardedGauge,
    pub connections: IntCounterVec,
    pub first_flights: IntCounterVec,
    pub active_tunnels: IntGauge,
    pub bytes_up: IntCounter,
    pub bytes_down: IntCounter,
    pub upstream_connect_seconds: Histogram,
    pub config_reloads: IntCounterVec,
    pub label_overflow: IntCounterVec,
    pub accept_errors: IntCounterVec,
    pub event_log_errors: IntCounter,
    pub events_dropped: IntCounter,
    pub inventory_errors: IntCounter,
    pub inventory_dropped: IntCounter,
    pub inventory_pending: IntGauge,
    pub inventory_behind: IntGauge,
    pub ptr_lookups: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub auth_password_hashes: IntCounter,
    pub http_requests: IntCounterVec,
    pub hello_anomalies: IntCounterVec,
    pub starttls_sessions: IntCounterVec,
    pub local_process_lookups: IntCounterVec,
}

/// Label values for the per-connection counters.
pub struct Who<'a> {
    pub source: &'a str,
    pub source_is_ip: bool,
    pub destination: &'a str,
}

impl Metrics {
    pub fn new(max_series: usize, idle_expiry: Duration) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let label_overflow = IntCounterVec::new(
            Opts::new(
                "tlspeek_label_overflow_total",
                "Observations whose source label was folded into \"other\" (or dropped) by the cardinality guard.",
            ),
            &["metric"],
        )?;
        let guarded = |name: &str, help: &str, labels: &[&str]| {
            GuardedCounter::new(
                Opts::new(name, help),
                labels,
                max_series,
                idle_expiry,
                &label_overflow,
            )
        };
        let client_hellos = guarded(
            "tlspeek_client_hellos_total",
            "ClientHellos parsed, by source, destination, highest offered version and hello-time legacy verdict.",
            &["source", "destination", "version", "legacy"],
        )?;
        let handshakes = guarded(
            "tlspeek_handshakes_total",
            "ServerHellos parsed, by source, destination, negotiated version and cipher suite (IANA name).",
            &["source", "destination", "version", "cipher"],
        )?;
        let legacy_connections = guarded(
            "tlspeek_legacy_connections_total",
            "Connections known to be legacy, counted once each, by the first of their legacy reasons.",
            &["source", "destination", "reason"],
        )?;
        let deprecated_endpoint_connections = guarded(
            "tlspeek_deprecated_endpoint_connections_total",
            "Calls to a retired or retiring endpoint ([[deprecations]]): ClientHellos to its hosts, and requests under its paths where they are seen (upgrade mode, plain HTTP), by source and destination.",
            &["source", "destination"],
        )?;
        let server_rejections = guarded(
            "tlspeek_server_rejections_total",
            "ClientHellos the server rejected: with an alert (its name), or a reset before any ServerHello (reset).",
            &["source", "destination", "alert"],
        )?;
        let actions = guarded(
            "tlspeek_actions_total",
            "Policy decisions: passed, blocked, upgraded, would_block, would_upgrade.",
            &["source", "destination", "action"],
        )?;
        let last_legacy = GuardedGauge::new(
            Opts::new(
                "tlspeek_source_last_legacy_timestamp_seconds",
                "Unix time of the last legacy connection from a source to a destination.",
            ),
            &["source", "destination"],
            max_series,
            idle_expiry,
            &label_overflow,
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "tlspeek_connections_total",
                "Connections ended, by mode and outcome.",
            ),
            &["mode", "outcome"],
        )?;
        let first_flights = IntCounterVec::new(
            Opts::new(
                "tlspeek_first_flights_total",
                "What tunnels carried first: tls, sslv2, not_tls, truncated, too_large, none.",
            ),
            &["mode", "kind"],
        )?;
        let active_tunnels = IntGauge::new("tlspeek_active_tunnels", "Tunnels open now.")?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "tlspeek_tunnel_bytes_total",
                "Bytes spliced through tunnels, by direction.",
            ),
            &["direction"],
        )?;
        let upstream_connect_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tlspeek_upstream_connect_seconds",
                "Time to establish the TCP connection to the upstream.",
            )
            .buckets(CONNECT_BUCKETS.to_vec()),
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "tlspeek_config_reloads_total",
                "Configuration reloads, by result.",
            ),
            &["result"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "tlspeek_build_info",
                "Always 1; the version of this tlspeek.",
            ),
            &["version"],
        )?;
        let accept_errors = IntCounterVec::new(
            Opts::new(
                "tlspeek_accept_errors_total",
                "Errors accepting connections (e.g. out of file descriptors), by listener.",
            ),
            &["listener"],
        )?;
        let event_log_errors = IntCounter::new(
            "tlspeek_event_log_errors_total",
            "Event lines that could not be written (disk full, file unwritable).",
        )?;
        let events_dropped = IntCounter::new(
            "tlspeek_events_dropped_total",
            "Event lines dropped because the writer fell behind (bounded queue full).",
        )?;

        let inventory_errors = IntCounter::new(
            "tlspeek_inventory_errors_total",
            "Failed inventory database writes (disk full, file unwritable, database away); rows are kept and retried.",
        )?;
        let inventory_pending = IntGauge::new(
            "tlspeek_inventory_pending_rows",
            "Inventory rows held in memory, not yet written (bounded by [inventory] max_pending).",
        )?;
        let inventory_behind = IntGauge::new(
            "tlspeek_inventory_behind_seconds",
            "How long the oldest unwritten inventory row has waited; above flush_interval, the database is behind.",
        )?;
        let inventory_dropped = IntCounter::new(
            "tlspeek_inventory_dropped_total",
            "Inventory observations dropped because the writer's bounded queue or pending set was full.",
        )?;
        let ptr_lookups = IntCounterVec::new(
            Opts::new(
                "tlspeek_ptr_lookups_total",
                "Reverse DNS lookups of sources, by result (found, none, unconfirmed, timeout).",
            ),
            &["result"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "tlspeek_auth_failures_total",
                "Proxy authentication refusals, by reason (missing, denied, rate_limited).",
            ),
            &["reason"],
        )?;
        for r in ["missing", "denied", "rate_limited"] {
            auth_failures.with_label_values(&[r]);
        }
        registry.register(Box::new(auth_failures.clone()))?;
        let auth_password_hashes = IntCounter::new(
            "tlspeek_auth_password_hashes_total",
            "Password hashes computed to check proxy credentials (cached and rate-limited checks hash nothing).",
        )?;
        registry.register(Box::new(auth_password_hashes.clone()))?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "tlspeek_http_requests_total",
                "Plain-HTTP (cleartext) requests forwarded, by destination (watched name or other).",
            ),
            &["destination"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        let local_process_lookups = IntCounterVec::new(
            Opts::new(
                "tlspeek_local_process_lookups_total",
                "Callers on this host whose process was looked up at accept (sock_diag and /proc), by result: named or unknown.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(local_process_lookups.clone()))?;
        let hello_anomalies = IntCounterVec::new(
            Opts::new(
                "tlspeek_hello_anomalies_total",
                "ClientHellos with something no real client sends, by reason (sni_too_long: an SNI over 255 bytes, stored cut).",
            ),
            &["reason"],
        )?;
        hello_anomalies.with_label_values(&["sni_too_long"]);
        registry.register(Box::new(hello_anomalies.clone()))?;
        let starttls_sessions = IntCounterVec::new(
            Opts::new(
                "tlspeek_starttls_sessions_total",
                "Sessions to a STARTTLS port ([starttls]) by protocol, and whether the client started TLS after the cleartext prelude (upgraded) or the session went on in cleartext.",
            ),
            &["protocol", "upgraded"],
        )?;
        for p in crate::starttls::Protocol::ALL {
            for upgraded in ["true", "false"] {
                starttls_sessions.with_label_values(&[p.as_str(), upgraded]);
            }
        }
        registry.register(Box::new(starttls_sessions.clone()))?;
        registry.register(Box::new(inventory_errors.clone()))?;
        registry.register(Box::new(inventory_dropped.clone()))?;
        registry.register(Box::new(inventory_pending.clone()))?;
        registry.register(Box::new(inventory_behind.clone()))?;
        registry.register(Box::new(ptr_lookups.clone()))?;
        registry.register(Box::new(label_overflow.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(first_flights.clone()))?;
        registry.register(Box::new(active_tunnels.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(upstream_connect_seconds.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(accept_errors.clone()))?;
        registry.register(Box::new(event_log_errors.clone()))?;
        registry.register(Box::new(events_dropped.clone()))?;

        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that exist from the start, so rate() and alerts see a zero, not nothing.
        for outcome in Outcome::ALL {
            connections.with_label_values(&[Mode::Connect.as_str(), outcome.as_str()]);
        }
        for outcome in [
            Outcome::Closed,
            Outcome::RefusedPort,
            Outcome::RefusedDestination,
            Outcome::ConnectFailed,
        ] {
            connections.with_label_values(&[Mode::Http.as_str(), outcome.as_str()]);
            connections.with_label_values(&[Mode::Transparent.as_str(), outcome.as_str()]);
        }
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        for m in [
            "tlspeek_client_hellos_total",
            "tlspeek_handshakes_total",
            "tlspeek_legacy_connections_total",
            "tlspeek_deprecated_endpoint_connections_total",
            "tlspeek_server_rejections_total",
            "tlspeek_actions_total",
            "tlspeek_source_last_legacy_timestamp_seconds",
        ] {
            label_overflow.with_label_values(&[m]);
        }
        accept_errors.with_label_values(&["proxy"]);

        Ok(Metrics {
            bytes_up: bytes.with_label_values(&["up"]),
            bytes_down: bytes.with_label_values(&["down"]),
            registry,
            client_hellos,
            handshakes,
            legacy_connections,
            deprecated_endpoint_connections,
            server_rejections,
            actions,
            last_legacy,
            connections,
            first_flights,
            active_tunnels,
            upstream_connect_seconds,
            config_reloads,
            label_overflow,
            accept_errors,
            event_log_errors,
            events_dropped,
            inventory_errors,
            inventory_dropped,
            inventory_pending,
            inventory_behind,
            ptr_lookups,
            auth_failures,
            auth_password_hashes,
            http_requests,
            hello_anomalies,
            starttls_sessions,
            local_process_lookups,
        })
    }

    /// A ClientHello was parsed.
    pub fn client_hello(&self, who: &Who<'_>, version: &str, legacy: bool) {
        self.client_hellos.inc(&Labels {
            values: &[
                who.source,
                who.destination,
                version,
                if legacy { "true" } else { "false" },
            ],
            legacy,
            source_is_ip: who.source_is_ip,
        });
    }

    /// A server rejected a ClientHello (`alert`: the alert's name, or `reset`).
    pub fn server_rejection(&self, who: &Who<'_>, alert: &str, legacy: bool) {
        self.server_rejections.inc(&Labels {
            values: &[who.source, who.destination, alert],
            legacy,
            source_is_ip: who.source_is_ip,
        });
    }

    /// A connection is first known to be legacy now: `legacy_connection` at the current time.
    pub fn legacy_connection_now(&self, who: &Who<'_>, reason: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.legacy_connection(who, reason, now);
    }

    /// A call to a retired or retiring endpoint (a ClientHello, or a request under a path).
    pub fn deprecated_endpoint(&self, who: &Who<'_>, legacy: bool) {
        self.deprecated_endpoint_connections.inc(&Labels {
            values: &[who.source, who.destination],
            legacy,
            source_is_ip: who.source_is_ip,
        });
    }

    /// A connection is first known to be legacy: count it once, and move the last-seen gauge.
    pub fn legacy_connection(&self, who: &Who<'_>, reason: &str, unix_seconds: f64) {
        let labels = Labels {
            values: &[who.source, who.destination, reason],
            legacy: true,
            source_is_ip: who.source_is_ip,
        };
        self.legacy_connections.inc(&labels);
        self.last_legacy.set(
            &Labels {
                values: &[who.source, who.destination],
                legacy: true,
                source_is_ip: who.source_is_ip,
            },
            unix_seconds,
        );
    }

    /// A ServerHello was parsed: `cipher` is the suite's IANA name.
    pub fn handshake(&self, who: &Who<'_>, version: &str, cipher: &str, legacy: bool) {
        self.handshakes.inc(&Labels {
            values: &[who.source, who.destination, version, cipher],
            legacy,
            source_is_ip: who.source_is_ip,
        });
    }

    /// The policy decided `action` (passed, blocked, upgraded, would_block, would_upgrade).
    pub fn action(&self, who: &Who<'_>, action: &str, legacy: bool) {
        self.actions.inc(&Labels {
            values: &[who.source, who.destination, action],
            legacy,
            source_is_ip: who.source_is_ip,
        });
    }

    pub fn connection_ended(&self, mode: Mode, outcome: Outcome) {
        self.connections
            .with_label_values(&[mode.as_str(), outcome.as_str()])
            .inc();
    }

    pub fn first_flight(&self, mode: Mode, kind: Kind) {
        self.first_flights
            .with_label_values(&[mode.as_str(), kind.as_str()])
            .inc();
    }

    /// Drops guarded series idle for longer than the configured expiry.
    pub fn expire_idle_series(&self, now: Instant) -> usize {
        self.client_hellos.expire(now)
            + self.handshakes.expire(now)
            + self.legacy_connections.expire(now)
            + self.deprecated_endpoint_connections.expire(now)
            + self.server_rejections.expire(now)
            + self.actions.expire(now)
            + self.last_legacy.expire(now)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        for c in [
            &self.client_hellos,
            &self.handshakes,
            &self.legacy_connections,
            &self.deprecated_endpoint_connections,
            &self.server_rejections,
            &self.actions,
        ] {
            families.extend(prometheus::core::Collector::collect(c));
        }
        families.extend(prometheus::core::Collector::collect(&self.last_legacy));
        // The encoder refuses a family without samples (a guarded metric before its first
        // observation); the registry's own gather() leaves those out the same way.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_contract_metric() {
        let m = Metrics::new(100, Duration::from_secs(3600)).unwrap();
        let who = Who {
            source: "10.0.0.1",
            source_is_ip: true,
            destination: "login.microsoftonline.com",
        };
        m.client_hello(&who, "TLS1.0", true);
        m.legacy_connection(&who, "max_version_below_tls12", 1.7e9);
        m.action(&who, "passed", true);
        m.server_rejection(&who, "protocol_version", true);
        m.handshakes.inc(&Labels {
            values: &[
                "10.0.0.1",
                "login.microsoftonline.com",
                "TLS1.0",
                "TLS_RSA_WITH_AES_128_CBC_SHA",
            ],
            legacy: true,
            source_is_ip: true,
        });
        m.upstream_connect_seconds.observe(0.001);
        let t = m.render();
        for name in [
            "tlspeek_client_hellos_total{destination=\"login.microsoftonline.com\",legacy=\"true\",source=\"10.0.0.1\",version=\"TLS1.0\"} 1",
            "tlspeek_handshakes_total{",
            "tlspeek_legacy_connections_total{destination=\"login.microsoftonline.com\",reason=\"max_version_below_tls12\",source=\"10.0.0.1\"} 1",
            "tlspeek_actions_total{action=\"passed\"",
            "tlspeek_server_rejections_total{alert=\"protocol_version\",destination=\"login.microsoftonline.com\",source=\"10.0.0.1\"} 1",
            "tlspeek_source_last_legacy_timestamp_seconds{destination=\"login.microsoftonline.com\",source=\"10.0.0.1\"} 1700000000",
            "tlspeek_connections_total{mode=\"connect\",outcome=\"refused_source\"} 0",
            "tlspeek_active_tunnels 0",
            "tlspeek_tunnel_bytes_total{direction=\"up\"} 0",
            "tlspeek_upstream_connect_seconds_bucket{le=\"0.0005\"} 0",
            "tlspeek_config_reloads_total{result=\"failure\"} 0",
            "tlspeek_label_overflow_total{metric=\"tlspeek_client_hellos_total\"} 0",
            "tlspeek_build_info{version=\"",
        ] {
            assert!(t.contains(name), "missing {name} in\n{t}");
        }
        // Before any observation the guarded metrics have no samples; the rest still renders.
        let fresh = Metrics::new(100, Duration::from_secs(3600))
            .unwrap()
            .render();
        for name in [
            "tlspeek_build_info{",
            "tlspeek_active_tunnels 0",
            "tlspeek_connections_total{",
        ] {
            assert!(fresh.contains(name), "missing {name} in\n{fresh}");
        }
    }
}
